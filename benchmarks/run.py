"""Benchmarks: this library side by side with a bare aiohttp loop and the official SDK, as ratios in one run.

``python -m benchmarks`` (or ``python benchmarks/run.py``) starts the emulator in its own process pinned to one
core, runs every contestant in a fresh process pinned to the other, interleaved (A B A B ...) for 5 rounds,
and writes ``benchmarks/RESULTS.md`` and ``benchmarks/results.png``. ``--quick`` is the small version CI runs
(one round, small counts) so the benchmarks never rot; its figures are a smoke test, not a measurement.
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
import statistics
import subprocess
import sys
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
    """The emulator in its own process, pinned to the server core."""

    def __init__(self, *args: str, core: int | None) -> None:
        command = [sys.executable, "-m", "batch_dealloc_async.emulator", "--port", "0", *args]
        if core is not None:
            command = ["taskset", "-c", str(core), *command] if _has_taskset() else command
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.endpoint = ""
        self.account = "emulator"
        self.key = ""
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        for line in self.process.stdout:
            if "BATCH_ACCOUNT_KEY=" in line:
                self.key = line.strip().split("=", 1)[1]
            if line.startswith("listening on "):
                self.endpoint = line.split()[-1]
                break
            if time.monotonic() > deadline:
                break
        if not self.endpoint:
            self.stop()
            raise RuntimeError("the emulator did not start")

    def stats(self) -> dict[str, Any]:
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(f"{self.endpoint}/_emulator/stats", timeout=30) as answer:  # noqa: S310 (loopback)
            data: dict[str, Any] = json.loads(answer.read())
            return data

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()

    def __enter__(self) -> Emulator:  # noqa: PYI034 (final class)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _has_taskset() -> bool:
    return any((Path(d) / "taskset").exists() for d in os.environ.get("PATH", "").split(os.pathsep))


def node_ids(emulator: Emulator, pool: str) -> list[str]:
    """Every node id of the pool, via this library (not measured)."""
    from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential  # noqa: PLC0415

    async def fetch() -> list[str]:
        credential = SharedKeyCredential(emulator.account, emulator.key)
        async with BatchDeallocClient(emulator.endpoint, credential) as client:
            return [node.id async for node in client.list_nodes(pool)]

    return asyncio.run(fetch())


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one contestant in a fresh process; its JSON line."""
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=1800,
    )
    if output.returncode != 0:
        raise RuntimeError(f"worker {spec['contestant']} failed:\n{output.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests and throttled responses the emulator saw between two stats snapshots."""
    return {"requests": after["total"] - before["total"], "throttled": after["throttled"] - before["throttled"]}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def one_run(pool_size: int, emulator_args: list[str], spec: dict[str, Any], server: int | None) -> dict[str, Any]:
    """A fresh emulator, the ids, one contestant's run, and the emulator's counters around it."""
    with Emulator("--pool", f"bench={pool_size}", "--seed", "1", *emulator_args, core=server) as emulator:
        ids = node_ids(emulator, "bench")
        ids_file = ROOT / "benchmarks" / "out" / "ids.txt"
        ids_file.parent.mkdir(parents=True, exist_ok=True)
        ids_file.write_text("\n".join(ids))
        before = emulator.stats()
        result = worker(
            {
                **spec,
                "endpoint": emulator.endpoint,
                "account": emulator.account,
                "key": emulator.key,
                "pool": "bench",
                "ids_file": str(ids_file),
            }
        )
        result.update(delta(before, emulator.stats()))
    return result


# --------------------------------------------------------------------------------------------------- scenarios


def throughput(
    quick: bool,
    rounds: int,
    client: int | None,
    server: int | None,
) -> dict[str, Any]:
    """20,000 deallocations at concurrency 64: CPU per 1,000, requests/s, p50/p99, peak memory."""
    count = 2000 if quick else 20000
    contestants = {
        "bare aiohttp loop": {"contestant": "bare"},
        "batch-dealloc-async": {"contestant": "ours"},
        "azure-batch SDK": {"contestant": "sdk"},
        "azure-batch SDK + poller": {"contestant": "sdk", "poller": True, "polling_interval": 5},
    }
    # The poller waits polling_interval (the SDK's default 5 s) per node: a smaller count keeps the run to
    # a minute; CPU is compared per 1,000 nodes.
    contestants["azure-batch SDK + poller"]["count"] = 320 if quick else 640
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, extra in contestants.items():  # interleaved: A B C D A B C D ...
            spec = {"concurrency": 64, "core": client, **extra}
            result = one_run(count, ["--state-mix", "idle=1", "--deallocate-delay", "2"], spec, server)
            runs[name].append(result)
            print(f"  throughput {name}: {result['cpu'] / result['nodes'] * 1000:.3f} CPU s/1000", flush=True)
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "cpu_per_1000": median([r["cpu"] / r["nodes"] * 1000 for r in results]),
            "requests_per_s": median([r["nodes"] / r["wall"] for r in results]),
            "p50_ms": median([r["p50"] * 1000 if r["p50"] is not None else None for r in results]),
            "p99_ms": median([r["p99"] * 1000 if r["p99"] is not None else None for r in results]),
            "peak_mib": median([r["peak_rss_growth_mib"] for r in results]),
            "failed": max(r["failed"] for r in results),
            "nodes": results[0]["nodes"],
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
    for name in ("batch-dealloc-async", "aiohttp", "tenacity", "attrs", "cattrs", "msal", "azure-batch", "azure-core"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _lines(results: dict[str, Any], quick: bool) -> Iterator[str]:  # noqa: PLR0915 (a report, top to bottom)
    machine = results["machine"]
    yield "# Benchmark results"
    yield ""
    yield f"- Date: {machine['date']}; mode: {'quick (CI smoke run: small counts, one round)' if quick else 'full'}"
    yield f"- Machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['platform']}"
    yield f"- Python {machine['python']}; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    yield f"- Client and emulator pinned to one core each: {machine['pinned']}"
    yield "- Command: `python -m benchmarks" + (" --quick`" if quick else "`")
    yield ""
    t = results["throughput"]
    bare = t["results"]["bare aiohttp loop"]["cpu_per_1000"]
    ours = t["results"]["batch-dealloc-async"]["cpu_per_1000"]
    sdk = t["results"]["azure-batch SDK"]["cpu_per_1000"]
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
        "Latency is sampled (one node in 16). For the bare loop and the SDK it runs from the moment a request holds "
        "the semaphore; for this library from the moment a worker takes the node (workers outnumber the 64 slots "
        "4:1, so it includes waiting for a slot). The SDK + poller contestant runs fewer nodes: each waits its "
        "poller's 5 s interval."
    )
    yield ""
    ours_vs_bare = ours / bare if ours and bare else None
    sdk_vs_ours = sdk / ours if sdk and ours else None
    yield f"- **ours / bare loop: {fmt(ours_vs_bare)}x** (target: within 1.3x)"
    yield f"- **SDK / ours: {fmt(sdk_vs_ours)}x** (target: at least 4x)"
    yield ""
    th = results["throttled"]
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
    w = results["waiting"]
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
    s = results["scale"]
    yield f"## Scale: {s['count']} node ids through iter_deallocate_nodes"
    yield ""
    yield f"- Peak memory growth: **{s['peak_mib']:.1f} MiB** (target: under 60 MB); CPU {s['cpu_per_1000']:.3f} s per 1,000;"
    yield f"  {s['wall']:.1f} s; nodes lost: {s['failed']}."
    yield ""
    c = results["ceiling"]
    yield "## The emulator's own ceiling (one core, deallocate with Shared Key checked)"
    yield ""
    yield (
        f"- Emulator: **{c['emulator_rps']:.0f} requests/s**; a bare aiohttp.web handler on the same core: "
        f"{c['bare_handler_rps']:.0f} requests/s (target: at least 3,000, so the emulator never limits the above)."
    )
    yield ""


def chart(results: dict[str, Any], path: Path) -> bool:
    """A PNG of the headline figures; False when matplotlib is not installed (the CI quick run)."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (benchmark extra only)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    t = results["throughput"]["results"]
    names = list(t)
    left.bar(
        range(len(names)), [t[n]["cpu_per_1000"] or 0 for n in names], color=["grey", "tab:green", "tab:red", "tab:red"]
    )
    left.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one round (what CI runs)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 5, quick 1)")
    parser.add_argument("--output", type=Path, default=None, help="results file (default benchmarks/RESULTS.md)")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (no results file is written)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    client, server = cores()
    results: dict[str, Any] = {
        "machine": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pinned": client is not None,
        },
        "versions": versions(),
    }
    print("ceiling", flush=True)
    results["ceiling"] = ceiling(args.quick, client, server)
    print("throughput", flush=True)
    results["throughput"] = throughput(args.quick, rounds, client, server)
    print("throttled", flush=True)
    results["throttled"] = throttled(args.quick, rounds, client, server)
    print("waiting", flush=True)
    results["waiting"] = waiting(args.quick, client, server)
    print("scale", flush=True)
    results["scale"] = scale(args.quick, client, server)
    out = args.output or (HERE / ("RESULTS.quick.md" if args.quick else "RESULTS.md"))
    text = "\n".join(_lines(results, args.quick))
    png = out.with_suffix(".png")
    if chart(results, png):
        text += f"\n![headline figures]({png.name})\n"
    out.write_text(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / ("results.quick.json" if args.quick else "results.json")).write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
