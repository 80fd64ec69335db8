"""Benchmarks: this library side by side with a bare aiohttp loop and the official SDK, as ratios in one run.

``python -m benchmarks`` (or ``python benchmarks/run.py``) starts the emulator in its own process pinned to one
core, runs every contestant in a fresh process pinned to the other, interleaved (A B A B ...) for 5 rounds,
and writes ``benchmarks/RESULTS.md`` and ``benchmarks/RESULTS.png``. ``--quick`` is the small version CI runs
(one round, small counts) so the benchmarks never rot; its figures are a smoke test, not a measurement.
``--only throughput throttled`` runs just those scenarios and writes to ``benchmarks/out/`` only, never over a
RESULTS file. ``--suite control`` runs the traffic-control suite instead (``benchmarks/control.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` as well as `python -m benchmarks`
    sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

CLIENT_CORE = 0
SERVER_CORE = 1


def cores() -> tuple[int | None, int | None]:
    """Client and server cores, when the machine has two to pin to."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(available) < 2:
        return None, None
    return available[0], available[1]


class Emulator:
    """The emulator in its own process, pinned to the server core.

    It must print its endpoint within ``startup`` seconds: stdout is read on a thread, so a silent or hung
    emulator cannot block the run. On a timeout or an early exit the process is killed and the error carries
    the tail of its stderr (kept in a temporary file, not a pipe that could fill up).
    """

    def __init__(self, *args: str, core: int | None, startup: float = 120.0) -> None:
        command = [sys.executable, "-m", "batch_dealloc_async.emulator", "--port", "0", *args]
        if core is not None and _has_taskset():
            command = ["taskset", "-c", str(core), *command]
        self.endpoint = ""
        self.account = "emulator"
        self.key = ""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        # cwd=ROOT: the emulator is always this tree's, whichever tree the contestants import.
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT, env=_env(ROOT)
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="emulator-stdout", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(startup)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        """Drain stdout until the process ends, so the emulator never blocks on a full pipe."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, startup: float) -> None:
        deadline = time.monotonic() + startup
        while not self.endpoint:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._halt()
                raise RuntimeError(
                    f"the emulator printed no endpoint within {startup:g} s (killed){self._stderr_tail()}"
                ) from None
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
                raise RuntimeError(
                    f"the emulator exited (code {self.process.poll()}) before listening{self._stderr_tail()}"
                )
            if "BATCH_ACCOUNT_KEY=" in line:
                self.key = line.strip().split("=", 1)[1]
            if line.startswith("listening on "):
                self.endpoint = line.split()[-1]

    def _stderr_tail(self, size: int = 3000) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        end = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, end - size))
        tail = self._stderr.read().decode(errors="replace").strip()
        return f"; its stderr ends:\n{tail}" if tail else "; its stderr is empty"

    def stats(self) -> dict[str, Any]:
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(f"{self.endpoint}/_emulator/stats", timeout=30) as answer:  # noqa: S310 (loopback)
            data: dict[str, Any] = json.loads(answer.read())
            return data

    def stop(self) -> None:
        """Terminate (kill after 10 s); idempotent."""
        self._halt()
        self._stderr.close()

    def _halt(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> Emulator:  # noqa: PYI034 (final class)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _env(tree: Path) -> dict[str, str]:
    """The environment of a child process that must import ``batch_dealloc_async`` from ``tree``."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def _has_taskset() -> bool:
    return any((Path(d) / "taskset").exists() for d in os.environ.get("PATH", "").split(os.pathsep))


def node_states(emulator: Emulator, pool: str) -> dict[str, str | None]:
    """Every node of the pool with its state, via this library (not measured)."""
    from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential  # noqa: PLC0415

    async def fetch() -> dict[str, str | None]:
        credential = SharedKeyCredential(emulator.account, emulator.key)
        async with BatchDeallocClient(emulator.endpoint, credential) as client:
            return {node.id: node.state async for node in client.list_nodes(pool)}

    return asyncio.run(fetch())


def node_ids(emulator: Emulator, pool: str) -> list[str]:
    """Every node id of the pool, via this library (not measured)."""
    return list(node_states(emulator, pool))


@contextlib.contextmanager
def emulated(pool_size: int, emulator_args: list[str], server: int | None) -> Iterator[tuple[Emulator, list[str]]]:
    """A fresh emulator with one pool ``bench`` of ``pool_size`` nodes, and their ids."""
    with Emulator("--pool", f"bench={pool_size}", "--seed", "1", *emulator_args, core=server) as emulator:
        yield emulator, node_ids(emulator, "bench")


def ids_spec(emulator: Emulator, ids: list[str], name: str = "ids.txt") -> dict[str, Any]:
    """The worker spec's connection part, with ``ids`` written to ``benchmarks/out/<name>`` for the worker."""
    ids_file = HERE / "out" / name
    ids_file.parent.mkdir(parents=True, exist_ok=True)
    ids_file.write_text("\n".join(ids))
    return {
        "endpoint": emulator.endpoint,
        "account": emulator.account,
        "key": emulator.key,
        "pool": "bench",
        "ids_file": str(ids_file),
    }


def worker(spec: dict[str, Any], tree: Path = ROOT) -> dict[str, Any]:
    """Run one contestant in a fresh process importing ``batch_dealloc_async`` from ``tree``; its JSON line.

    The worker runs as ``python -m benchmarks.worker`` from ``tree`` (cwd and PYTHONPATH), and reports the
    file it imported the library from: anything outside ``tree`` is an error, never a silent mix-up.
    """
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tree,
        env=_env(tree),
        timeout=1800,
    )
    if output.returncode != 0:
        raise RuntimeError(f"worker {spec['contestant']} failed:\n{output.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    library = Path(result["library"]).resolve()
    if not library.is_relative_to(tree.resolve()):
        raise RuntimeError(f"worker {spec['contestant']} imported batch_dealloc_async from {library}, not from {tree}")
    return result


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests and throttled responses the emulator saw between two stats snapshots."""
    return {"requests": after["total"] - before["total"], "throttled": after["throttled"] - before["throttled"]}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def one_run(
    pool_size: int, emulator_args: list[str], spec: dict[str, Any], server: int | None, tree: Path = ROOT
) -> dict[str, Any]:
    """A fresh emulator, the ids, one contestant's run (importing the library from ``tree``), and the
    emulator's counters around it."""
    with emulated(pool_size, emulator_args, server) as (emulator, ids):
        before = emulator.stats()
        result = worker({**spec, **ids_spec(emulator, ids)}, tree)
        result.update(delta(before, emulator.stats()))
    return result


# --------------------------------------------------------------------------------------------------- scenarios


THROUGHPUT_EMULATOR = ["--state-mix", "idle=1", "--deallocate-delay", "2"]
CONCURRENCY = 64


def throughput_spec(client: int | None, **extra: object) -> dict[str, Any]:
    """A worker spec of the throughput scenario (shared with ``benchmarks.ab``)."""
    return {"concurrency": CONCURRENCY, "core": client, **extra}


def cpu_per_1000(result: dict[str, Any]) -> float:
    return float(result["cpu"]) / result["nodes"] * 1000


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of per-round figures, with the figures themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_round": values}


# The headline ratios: (numerator, denominator) contestants, compared on CPU per 1,000 within each round.
HEADLINE_RATIOS = {
    "ours / bare loop": ("batch-dealloc-async", "bare aiohttp loop"),
    "SDK / ours": ("azure-batch SDK", "batch-dealloc-async"),
}


def throughput(
    quick: bool,
    rounds: int,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """20,000 deallocations at concurrency 64: CPU per 1,000, requests/s, p50/p99, peak memory."""
    count = 2000 if quick else 20000
    contestants: dict[str, dict[str, Any]] = {
        "bare aiohttp loop": {"contestant": "bare"},
        "batch-dealloc-async": {"contestant": "ours"},
        "batch-dealloc-async (deallocate_node)": {"contestant": "ours", "mode": "calls"},
        "azure-batch SDK": {"contestant": "sdk"},
        # The poller waits polling_interval (the SDK's default 5 s) per node: a smaller count keeps the run to
        # a minute; CPU is compared per 1,000 nodes.
        "azure-batch SDK + poller": {"contestant": "sdk", "poller": True, "polling_interval": 5},
    }
    contestants["azure-batch SDK + poller"]["count"] = 320 if quick else 640
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, extra in contestants.items():  # interleaved: A B C D A B C D ...
            result = one_run(count, THROUGHPUT_EMULATOR, throughput_spec(client, **extra), server)
            runs[name].append(result)
            print(f"  throughput {name}: {cpu_per_1000(result):.3f} CPU s/1000", flush=True)
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "cpu_per_1000": median([cpu_per_1000(r) for r in results]),
            "requests_per_s": median([r["nodes"] / r["wall"] for r in results]),
            "p50_ms": median([r["p50"] * 1000 if r["p50"] is not None else None for r in results]),
            "p99_ms": median([r["p99"] * 1000 if r["p99"] is not None else None for r in results]),
            "peak_mib": median([r["peak_rss_growth_mib"] for r in results]),
            "failed": max(r["failed"] for r in results),
            "nodes": results[0]["nodes"],
        }
    # Each round runs the contestants back to back, so a per-round ratio cancels most of the machine's drift;
    # the median of those is steadier than a ratio of medians taken from different rounds.
    ratios = {
        label: spread([cpu_per_1000(a) / cpu_per_1000(b) for a, b in zip(runs[top], runs[bottom], strict=True)])
        for label, (top, bottom) in HEADLINE_RATIOS.items()
    }
    return {"count": count, "rounds": rounds, "results": summary, "ratios": ratios}


TRACING_CONTESTANTS = {
    "bare aiohttp loop": {"contestant": "bare"},
    "ours, OpenTelemetry not in use": {"contestant": "ours"},
    "ours, API imported, no provider (off)": {"contestant": "ours", "telemetry": "api"},
    "ours, tracing on (ALWAYS_ON)": {"contestant": "ours", "telemetry": "traces"},
    "ours, tracing and metrics on": {"contestant": "ours", "telemetry": "traces+metrics"},
}


def tracing(
    quick: bool,
    rounds: int,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """The cost of OpenTelemetry: CPU per 1,000 deallocations (deallocate_nodes), off and on, beside the bare loop.

    Every round runs each contestant once against a fresh emulator, in an order rotated each round; the ratios to
    the bare loop are taken within a round. Tracing on: an SDK TracerProvider, ALWAYS_ON, a BatchSpanProcessor and
    an exporter that only counts (``benchmarks/worker.py``), so the figure is the spans' own cost.
    """
    count = 2000 if quick else 20000
    names = list(TRACING_CONTESTANTS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            spec = throughput_spec(client, **TRACING_CONTESTANTS[name])
            result = one_run(count, THROUGHPUT_EMULATOR, spec, server)
            runs[name].append(result)
            print(f"  tracing {name}: {cpu_per_1000(result):.3f} CPU s/1000", flush=True)
    bare = runs[names[0]]
    summary = {
        name: {
            "cpu_per_1000": median([cpu_per_1000(r) for r in results]),
            "requests_per_s": median([r["nodes"] / r["wall"] for r in results]),
            "vs_bare": spread([cpu_per_1000(r) / cpu_per_1000(b) for r, b in zip(results, bare, strict=True)]),
            "spans_exported": results[-1].get("spans_exported"),
            "failed": max(r["failed"] for r in results),
        }
        for name, results in runs.items()
    }
    return {"count": count, "rounds": rounds, "results": summary}


def throttled(
    quick: bool,
    rounds: int,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """Emulator limited to 300 requests/s (burst 30): completion time / ideal, share throttled, nodes lost."""
    rate = 300
    count = 600 if quick else 3000
    contestants = {
        "batch-dealloc-async (adaptive)": {"contestant": "ours", "adaptive": True},
        "batch-dealloc-async (fixed 64)": {"contestant": "ours", "adaptive": False},
        "azure-batch SDK (semaphore 64)": {"contestant": "sdk"},
    }
    if not quick:
        contestants["naive loop sleeping Retry-After"] = {"contestant": "bare", "naive_retry": True}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, extra in contestants.items():
            spec = {"concurrency": 64, "core": client, "latency": False, **extra}
            args = ["--state-mix", "idle=1", "--throttle-rps", str(rate), "--throttle-burst", "30"]
            result = one_run(count, args, spec, server)
            runs[name].append(result)
            print(f"  throttled {name}: {result['wall'] / (count / rate):.3f}x ideal", flush=True)
    summary = {
        name: {
            "vs_ideal": median([r["wall"] / (count / rate) for r in results]),
            "throttled_share": median([r["throttled"] / max(1, r["requests"]) for r in results]),
            "failed": max(r["failed"] for r in results),
        }
        for name, results in runs.items()
    }
    return {"count": count, "rate": rate, "rounds": rounds, "results": summary}


def waiting(
    quick: bool,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """Polling requests to see N nodes reach deallocated: pool listing against the SDK's per-node pollers."""
    count = 500 if quick else 5000
    ours = one_run(
        count,
        ["--state-mix", "idle=1", "--deallocate-delay", "2"],
        {"contestant": "ours", "concurrency": 64, "core": client, "wait": True, "latency": False},
        server,
    )
    sdk = one_run(
        count,
        ["--state-mix", "idle=1", "--deallocate-delay", "2"],
        {"contestant": "sdk", "concurrency": 64, "core": client, "poller": True, "polling_interval": 5},
        server,
    )
    return {
        "count": count,
        "ours": {
            "poll_requests": ours["poll_requests"],
            "rounds": ours["poll_rounds"],
            "failed": ours["failed"],
            "requests": ours["requests"],
            "wall": ours["wall"],
        },
        "sdk": {
            "poll_requests": sdk["requests"] - count,
            "failed": sdk["failed"],
            "requests": sdk["requests"],
            "wall": sdk["wall"],
        },
        "target_per_round": math.ceil(count / 1000) + 1,
    }


def scale(
    quick: bool,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """100,000 ids through iter_deallocate_nodes: peak memory growth and CPU per 1,000."""
    count = 10000 if quick else 100000
    result = one_run(
        count,
        ["--state-mix", "idle=1"],
        {"contestant": "ours", "mode": "iter", "concurrency": 64, "core": client, "latency": False},
        server,
    )
    return {
        "count": count,
        "peak_mib": result["peak_rss_growth_mib"],
        "cpu_per_1000": result["cpu"] / count * 1000,
        "failed": result["failed"],
        "wall": result["wall"],
    }


def ceiling(
    quick: bool,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """The emulator's own ceiling on one core (deallocate, Shared Key checked) against a bare aiohttp.web handler."""
    seconds = 2.0 if quick else 8.0
    count = 20000 if quick else 60000
    with Emulator("--pool", f"bench={count}", "--seed", "1", "--state-mix", "idle=1", core=server) as emulator:
        ids = node_ids(emulator, "bench")
        emulator_rate = load.measure(emulator.endpoint, emulator.account, emulator.key, ids, seconds, core=client)
    bare_rate = load.measure_bare(seconds, client_core=client, server_core=server)
    return {"emulator_rps": emulator_rate, "bare_handler_rps": bare_rate, "seconds": seconds}


# ------------------------------------------------------------------------------------------------------ report


def versions() -> dict[str, str]:
    found = {}
    for name in (
        "batch-dealloc-async",
        "aiohttp",
        "tenacity",
        "attrs",
        "cattrs",
        "msal",
        "azure-batch",
        "azure-core",
        "opentelemetry-api",
        "opentelemetry-sdk",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def machine(pinned: bool) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pinned": pinned,
    }


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _header(results: dict[str, Any]) -> Iterator[str]:
    yield "# Benchmark results"
    yield ""
    mode = "quick (CI smoke run: small counts, one round)" if results["quick"] else "full"
    if results["only"]:
        mode += "; only " + ", ".join(results["only"])
    yield from machine_lines(results, mode)
    yield ""


def machine_lines(results: dict[str, Any], mode: str) -> Iterator[str]:
    """Date, mode, machine, versions, pinning and command: the first lines of every report."""
    machine = results["machine"]
    yield f"- Date: {machine['date']}; mode: {mode}"
    yield f"- Machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['platform']}"
    yield f"- Python {machine['python']}; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    yield f"- Client and emulator pinned to one core each: {machine['pinned']}"
    yield f"- Command: `{results['command']}`"


def _throughput_lines(t: dict[str, Any]) -> Iterator[str]:
    yield f"## Throughput and cost: {t['count']} deallocations, concurrency 64, median of {t['rounds']} interleaved rounds"
    yield ""
    yield "| contestant | nodes | CPU s / 1,000 | requests/s | p50 ms | p99 ms | peak memory growth MiB | nodes lost |"
    yield "|---|---|---|---|---|---|---|---|"
    for name, r in t["results"].items():
        yield (
            f"| {name} | {r['nodes']} | {fmt(r['cpu_per_1000'], '.3f')} | {fmt(r['requests_per_s'], '.0f')} | {fmt(r['p50_ms'], '.1f')} "
            f"| {fmt(r['p99_ms'], '.1f')} | {fmt(r['peak_mib'], '.1f')} | {r['failed']} |"
        )
    yield ""
    yield (
        "Latency is per call and measured the same way for every contestant: from the moment the application "
        "starts the node's call, holding one of 64 semaphore slots, until the call returns (retries and the "
        "library's own limiter included, the application's queue for a slot not). It is sampled for the same "
        "nodes in every contestant (one in 16, by CRC-32 of the node id). deallocate_nodes hands the nodes to "
        "its own workers, so it has no such moment and its row shows none: this library's latency is the "
        "deallocate_node row, driven exactly like the bare loop and the SDK. The SDK + poller contestant runs "
        "fewer nodes: each waits its poller's 5 s interval."
    )
    yield ""
    targets = {"ours / bare loop": "within 1.3x", "SDK / ours": "at least 4x"}
    for label, ratio in t["ratios"].items():
        rounds = ", ".join(f"{v:.2f}" for v in ratio["per_round"])
        yield (
            f"- **{label}: {ratio['median']:.2f}x** (target: {targets[label]}); CPU per 1,000, median of the "
            f"per-round ratios (rounds: {rounds})"
        )
    yield ""


def _tracing_lines(tr: dict[str, Any]) -> Iterator[str]:
    yield (
        f"## OpenTelemetry: {tr['count']} deallocations (deallocate_nodes), concurrency 64, median of {tr['rounds']} "
        "rotated rounds"
    )
    yield ""
    yield "| contestant | CPU s / 1,000 | / bare loop (median of rounds) | requests/s | spans exported | nodes lost |"
    yield "|---|---|---|---|---|---|"
    for name, r in tr["results"].items():
        spans = "-" if r["spans_exported"] is None else str(r["spans_exported"])
        yield (
            f"| {name} | {fmt(r['cpu_per_1000'], '.3f')} | {r['vs_bare']['median']:.2f}x | "
            f"{fmt(r['requests_per_s'], '.0f')} | {spans} | {r['failed']} |"
        )
    yield ""
    yield (
        "Off (target: within 1.3x of the bare loop) is the library as an application without OpenTelemetry, or with "
        "the API but no provider, runs it. On: an SDK TracerProvider with the ALWAYS_ON sampler, a BatchSpanProcessor "
        "and an exporter that only counts, so the figure is the cost of the spans themselves (two per node: the "
        "node's and its request's), not an exporter's encoding or network; metrics add an SDK MeterProvider with an "
        "in-memory reader."
    )
    yield ""


def _throttled_lines(th: dict[str, Any]) -> Iterator[str]:
    yield (
        f"## Throttled account: {th['count']} nodes, emulator limited to {th['rate']} requests/s (burst 30), "
        f"median of {th['rounds']} rounds"
    )
    yield ""
    yield "| contestant | time / ideal | throttled share | nodes lost |"
    yield "|---|---|---|---|"
    for name, r in th["results"].items():
        yield f"| {name} | {fmt(r['vs_ideal'], '.3f')} | {fmt(r['throttled_share'] * 100, '.1f')}% | {r['failed']} |"
    yield ""
    yield "- Target (adaptive): within 1.10x of the ideal, under 5% throttled, no node lost."
    yield ""


def _waiting_lines(w: dict[str, Any]) -> Iterator[str]:
    yield f"## Waiting for deallocation: {w['count']} nodes"
    yield ""
    yield "| contestant | polling requests | rounds | nodes lost |"
    yield "|---|---|---|---|"
    yield f"| batch-dealloc-async (pool listing) | {w['ours']['poll_requests']} | {w['ours']['rounds']} | {w['ours']['failed']} |"
    yield f"| azure-batch SDK (per-node pollers) | {w['sdk']['poll_requests']} | - | {w['sdk']['failed']} |"
    yield ""
    per_round = w["ours"]["poll_requests"] / max(1, w["ours"]["rounds"])
    yield f"- Ours: {per_round:.1f} requests per round (target: at most ceil(nodes/1000) + 1 = {w['target_per_round']})."
    yield ""


def _scale_lines(s: dict[str, Any]) -> Iterator[str]:
    yield f"## Scale: {s['count']} node ids through iter_deallocate_nodes"
    yield ""
    yield f"- Peak memory growth: **{s['peak_mib']:.1f} MiB** (target: under 60 MB); CPU {s['cpu_per_1000']:.3f} s per 1,000;"
    yield f"  {s['wall']:.1f} s; nodes lost: {s['failed']}."
    yield ""


def _ceiling_lines(c: dict[str, Any]) -> Iterator[str]:
    yield "## The emulator's own ceiling (one core, deallocate with Shared Key checked)"
    yield ""
    yield (
        f"- Emulator: **{c['emulator_rps']:.0f} requests/s**; a bare aiohttp.web handler on the same core: "
        f"{c['bare_handler_rps']:.0f} requests/s (target: at least 3,000, so the emulator never limits the above)."
    )
    yield ""


SECTIONS = {
    "throughput": _throughput_lines,
    "tracing": _tracing_lines,
    "throttled": _throttled_lines,
    "waiting": _waiting_lines,
    "scale": _scale_lines,
    "ceiling": _ceiling_lines,
}


def _lines(results: dict[str, Any]) -> Iterator[str]:
    """The report, top to bottom; only the sections of the scenarios that ran."""
    yield from _header(results)
    for name, section in SECTIONS.items():
        if name in results:
            yield from section(results[name])


def chart(results: dict[str, Any], path: Path) -> bool:
    """A PNG of the headline figures; False when matplotlib is not installed (the CI quick run)."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (benchmark extra only)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    t = results["throughput"]["results"]
    names = list(t)
    colours = ["grey" if n.startswith("bare") else "tab:green" if n.startswith("batch") else "tab:red" for n in names]
    left.bar(range(len(names)), [t[n]["cpu_per_1000"] or 0 for n in names], color=colours)
    left.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=7)
    left.set_ylabel("client CPU seconds per 1,000 deallocations")
    left.set_title("Cost per deallocation (lower is better)")
    th = results["throttled"]["results"]
    names = list(th)
    right.bar(range(len(names)), [th[n]["vs_ideal"] or 0 for n in names], color="tab:blue")
    right.axhline(1.10, color="tab:green", linestyle="--", label="target 1.10x")
    right.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    right.set_ylabel("completion time / ideal")
    right.set_title(f"Throttled account ({results['throttled']['rate']} req/s)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# Run order: the ceiling first, so a slow emulator shows before everything measured against it.
SCENARIOS = ("ceiling", "throughput", "tracing", "throttled", "waiting", "scale")


def run_scenario(name: str, quick: bool, rounds: int, client: int | None, server: int | None) -> dict[str, Any]:
    if name == "throughput":
        return throughput(quick, rounds, client, server)
    if name == "tracing":
        return tracing(quick, rounds, client, server)
    if name == "throttled":
        return throttled(quick, rounds, client, server)
    runner = {"ceiling": ceiling, "waiting": waiting, "scale": scale}[name]
    return runner(quick, client, server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one round (what CI runs)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per scenario (default 5, control suite 3, quick 1)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results file (default benchmarks/RESULTS.md, or benchmarks/out/results.only.md with --only)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only these scenarios ({', '.join(SCENARIOS)}); results go to benchmarks/out/, no RESULTS file",
    )
    parser.add_argument(
        "--suite",
        choices=("default", "control"),
        default="default",
        help="default: the scenarios above; control: traffic control (benchmarks/control.py)",
    )
    parser.add_argument(
        "--full-matrix", action="store_true", help="control suite: every token bucket cell (48, a long run)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    selected = [name for name in SCENARIOS if not args.only or name in args.only]
    client, server = cores()
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if args.suite == "control":
        from benchmarks import control  # noqa: PLC0415 (the control suite only)

        return control.main(args.quick, args.rounds or (1 if args.quick else 3), args.full_matrix, command)
    results: dict[str, Any] = {
        "machine": machine(pinned=client is not None),
        "versions": versions(),
        "quick": args.quick,
        "only": selected if args.only else None,
        "command": command,
    }
    for name in selected:
        print(name, flush=True)
        results[name] = run_scenario(name, args.quick, rounds, client, server)
    suffix = ".quick" if args.quick else ""
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    if args.only:  # a partial run never replaces the RESULTS files
        out = args.output or out_dir / f"results.only{suffix}.md"
        json_out = out_dir / f"results.only{suffix}.json"
    else:
        out = args.output or HERE / f"RESULTS{suffix}.md"
        json_out = out_dir / f"results{suffix}.json"
    text = "\n".join(_lines(results))
    png = out.with_suffix(".png")
    if not args.only and chart(results, png):
        text += f"\n![headline figures]({png.name})\n"
    out.write_text(text)
    json_out.write_text(json.dumps(results, indent=2))
    print(text)
    print(f"written: {out}, {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
