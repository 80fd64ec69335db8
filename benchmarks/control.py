"""The traffic-control suite: ``python -m benchmarks --suite control [--quick] [--full-matrix] [--rounds N]``.

Real sockets and processes throughout: each run starts a fresh emulator (one pool ``bench``, every node idle,
timeline bins of 0.25 s) pinned to one core, and the client in a worker process (``benchmarks/worker.py``)
pinned to the other: ``deallocate_nodes`` with adaptive traffic control and ``max_concurrency=512`` in every
cell. Cells run in interleaved rounds (every cell once, then again: 3 rounds, --quick 1); a cell's figures are
the medians of its runs, except nodes lost and false failures, which are the worst run's. How each figure is
computed is written into the report next to it.

By default the token bucket group runs 30 of its 48 cells; ``--full-matrix`` runs all of them. ``--quick``
runs one small cell per group (about a minute). Output: ``benchmarks/RESULTS.control.md`` and ``.png``
(--quick: ``benchmarks/out/RESULTS.control.quick.*``), and every figure as JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from benchmarks.run import (
    HERE,
    THROUGHPUT_EMULATOR,
    cores,
    cpu_per_1000,
    emulated,
    fmt,
    ids_spec,
    machine,
    machine_lines,
    median,
    node_states,
    one_run,
    spread,
    throughput_spec,
    versions,
    worker,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CONCURRENCY = 512  # rate x round trip: 1,000/s x 0.3 s (150 ms each way) = 300 requests in flight
BIN = 0.25  # seconds per bin of the emulator's timeline
MONITOR = 0.05  # seconds between the worker's samples of the requests it has sent (and of its loop's lag)
BASE_EMULATOR = ("--state-mix", "idle=1", "--timeline-bin", str(BIN))
ACCEPTED_STATES = frozenset({"deallocating", "deallocated"})
CPU_TARGET = 1.3  # this library's CPU per deallocation against the bare loop's
WORST = frozenset({"lost", "false_failures", "without_service_error"})  # the worst run's, not the median


@dataclasses.dataclass(frozen=True)
class Target:
    """A figure's target: met when the figure is at most ``limit``."""

    figure: str
    limit: float
    text: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """One configuration of the service and the client, run once per round."""

    group: str
    label: str
    nodes: int
    emulator: tuple[str, ...] = ()
    client: dict[str, Any] = dataclasses.field(default_factory=dict)  # worker spec options
    clients: int = 1  # worker processes at once, each with its share of the pool
    ideal: float | None = None  # seconds
    changes: tuple[tuple[float, float], ...] = ()  # (run time, new limit): rate changes to follow
    window: tuple[float, float, str] | None = None  # an outage: start, end (run time), kind
    service_error: str | None = None  # the error code every node should end with
    targets: tuple[Target, ...] = ()
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the report's tables
    chart: bool = False


NOT_LOST = Target("lost", 0, "0")


def bucket(rate: float, burst: int) -> tuple[str, ...]:
    return ("--throttle-rps", f"{rate:g}", "--throttle-burst", str(burst))


def latency(milliseconds: int) -> tuple[str, ...]:
    """A one-way latency both ways: before the request is processed and after."""
    seconds = f"{milliseconds / 1000:g}"
    return ("--latency-before", seconds, "--latency", seconds) if milliseconds else ()


# ------------------------------------------------------------------------------------------------------ cells


def bucket_cells(quick: bool, full_matrix: bool) -> list[Cell]:
    """1. Token bucket R x burst x one-way latency, N = 10R and 3R."""
    if quick:
        grid = [(300, 30, 0, 3), (300, 30, 50, 3)]
    else:
        every = (0, 20, 50, 150)
        latencies = {10: every if full_matrix else (0, 50, 150), 3: every if full_matrix else (0, 150)}
        grid = [
            (rate, burst, ms, multiple)
            for multiple, choices in latencies.items()
            for rate in (50, 300, 1000)
            for burst in (rate // 10, rate)
            for ms in choices
        ]
    targets = {
        10: (Target("vs_ideal", 1.10, "<= 1.10x"), Target("throttled_share", 0.05, "< 5%"), NOT_LOST),
        3: (Target("vs_ideal", 1.25, "<= 1.25x"), NOT_LOST),
    }
    return [
        Cell(
            group="bucket",
            label=f"R={rate}/s burst {burst} L={ms} ms N={multiple}R",
            nodes=multiple * rate,
            emulator=(*bucket(rate, burst), *latency(ms)),
            ideal=float(multiple),
            targets=targets[multiple],
            params={"rate": rate, "burst": burst, "latency": ms, "multiple": multiple},
        )
        for rate, burst, ms, multiple in grid
    ]


BASELINE = "no faults"


def noise_cells(quick: bool) -> list[Cell]:
    """2. No limit; random 503 ServerBusy (no Retry-After) or 429 (Retry-After: 1), against the same run without."""
    faults: dict[str, tuple[tuple[str, ...], float, float | None]] = {
        BASELINE: ((), 0.0, None),
        "503 ServerBusy 1%": (("--server-busy", "0.01"), 0.01, None),
        "503 ServerBusy 5%": (("--server-busy", "0.05"), 0.05, None),
        "429 Retry-After 1 s, 2%": (("--too-many-requests", "0.02", "--too-many-requests-retry-after", "1"), 0.02, 1),
    }
    if quick:
        faults = {name: faults[name] for name in (BASELINE, "503 ServerBusy 5%")}
    nodes = 2000 if quick else 5000
    return [
        Cell(
            group="noise",
            label=name,
            nodes=nodes,
            emulator=(*args, *latency(20)),
            targets=() if name == BASELINE else (Target("vs_allowed", 1.0, "<= 1.5x + backoff"), NOT_LOST),
            params={"share": share, "retry_after": retry_after},
        )
        for name, (args, share, retry_after) in faults.items()
    ]


def piecewise_ideal(schedule: tuple[tuple[float, float], ...], nodes: int) -> float:
    """Seconds to send ``nodes`` requests at exactly the limit in force, step by step."""
    done = 0.0
    for (at, rate), end in zip(schedule, [*(at for at, _ in schedule[1:]), math.inf], strict=True):
        if done + rate * (end - at) >= nodes:
            return at + (nodes - done) / rate
        done += rate * (end - at)
    raise AssertionError("unreachable: the last step never ends")


def shift_cells(quick: bool) -> list[Cell]:
    """3. The limit drops from 600/s to 150/s and comes back."""
    schedule = ((0.0, 600.0), (2.0, 150.0), (6.0, 600.0)) if quick else ((0.0, 600.0), (5.0, 150.0), (15.0, 600.0))
    nodes = 3000 if quick else 7500
    steps = ",".join(f"{at:g}:{rate:g}" for at, rate in schedule)
    return [
        Cell(
            group="shift",
            label=f"limit {steps.replace(',', ' -> ')} (s:requests/s)",
            nodes=nodes,
            emulator=("--throttle-schedule", steps, "--throttle-burst", "30"),
            ideal=piecewise_ideal(schedule, nodes),
            changes=schedule[1:],
            targets=(Target("vs_ideal", 1.15, "<= 1.15x"), Target("throttled_share", 0.08, "< 8%"), NOT_LOST),
            chart=True,
        )
    ]


def client_cells(quick: bool) -> list[Cell]:
    """4. Four client processes share one bucket."""
    rate, nodes = 400, 2000 if quick else 4000
    return [
        Cell(
            group="clients",
            label=f"4 clients x {nodes // 4} nodes, one bucket of {rate}/s",
            nodes=nodes,
            clients=4,
            emulator=bucket(rate, rate // 10),
            ideal=nodes / rate,
            targets=(
                Target("vs_ideal", 1.15, "<= 1.15x"),
                Target("throttled_share", 0.05, "< 5%"),
                Target("spread", 1.20, "<= 1.20"),
                NOT_LOST,
            ),
        )
    ]


def outage_cells(quick: bool) -> list[Cell]:
    """5. The service down for a while (500s, or connections refused), and a service that keeps failing."""
    start, duration, nodes = (2.0, 4.0, 1500) if quick else (3.0, 10.0, 3000)
    cells = [
        Cell(
            group="outage",
            label=f"{kind} from {start:g} s for {duration:g} s",
            nodes=nodes,
            emulator=(*bucket(300, 30), "--outage", f"{start:g}:{duration:g}:{kind}"),
            client={"monitor": 0.005},  # the client's requests in the window, to 5 ms
            window=(start, start + duration, kind),
            targets=(
                Target("window_beyond_probes", CONCURRENCY, f"<= {CONCURRENCY} + probes"),
                Target("resume", 2.0, "<= 2 s"),
                NOT_LOST,
                Target("false_failures", 0, "0"),
            ),
            chart=True,
        )
        for kind in (("error_500",) if quick else ("error_500", "refuse"))
    ]
    if not quick:
        cells.append(
            Cell(
                group="failing",
                label="every request answered 500",
                nodes=3000,
                emulator=(*bucket(300, 30), "--outage", "0:100000:error_500"),
                service_error="InternalError",
                targets=(Target("requests_per_node", 0.2, "< 20% of N"), Target("without_service_error", 0, "0")),
            )
        )
    return cells


def max_rate_cells(quick: bool) -> list[Cell]:
    """6. The client's own ceiling on a service without a limit."""
    nodes = 1000 if quick else 2000
    return [
        Cell(
            group="max_rate",
            label="max_rate=200, no limit",
            nodes=nodes,
            client={"max_rate": 200},
            ideal=nodes / 200,
            targets=(Target("rate_error", 0.05, "within 5%"), NOT_LOST),
        )
    ]


def start_cells(quick: bool) -> list[Cell]:
    """Issue 12: the inverse run meets the same targets (every node deallocated; start_nodes)."""
    rate, burst, ms = (300, 30, 0) if quick else (300, 30, 50)
    return [
        Cell(
            group="start",
            label=f"start_nodes: R={rate}/s burst {burst} L={ms} ms N=10R",
            nodes=10 * rate,
            emulator=("--state-mix", "deallocated=1", *bucket(rate, burst), *latency(ms)),
            client={"action": "start"},
            ideal=10.0,
            targets=(Target("vs_ideal", 1.10, "<= 1.10x"), Target("throttled_share", 0.05, "< 5%"), NOT_LOST),
            params={"rate": rate, "burst": burst, "latency": ms, "multiple": 10},
        )
    ]


def window_cells(quick: bool) -> list[Cell]:
    """Off the issue's matrix: window limiters (Batch publishes no limit, let alone its algorithm)."""
    configs = [(300, 1.0, False, 0, 5)] if quick else [(300, 1.0, False, 20, 10), (300, 1.0, True, 20, 10)]
    if not quick:
        configs.append((1000, 0.5, False, 20, 10))
    return [
        Cell(
            group="window",
            label=f"{'sliding' if sliding else 'fixed'} window {rate}/s per {window:g} s, L={ms} ms, N={multiple}R",
            nodes=multiple * rate,
            emulator=(
                "--throttle-rps",
                str(rate),
                "--throttle-window",
                f"{window:g}",
                *(("--throttle-sliding",) if sliding else ()),
                *latency(ms),
            ),
            ideal=float(multiple),
            targets=(Target("vs_ideal", 1.25, "<= 1.25x (ours: no collapse)"), NOT_LOST),
        )
        for rate, window, sliding, ms, multiple in configs
    ]


def lag_cells(quick: bool) -> list[Cell]:
    """7. The event loop's lag beside a run at 1,000 requests/s."""
    nodes = 3000 if quick else 10000
    return [
        Cell(
            group="lag",
            label=f"5 ms ticker beside {nodes} nodes at 1,000/s",
            nodes=nodes,
            emulator=bucket(1000, 100),
            client={"monitor": 0.005},
            ideal=nodes / 1000,
            targets=(Target("lag_p99_ms", 3.0, "< 3 ms"), Target("lag_max_ms", 10.0, "< 10 ms"), NOT_LOST),
        )
    ]


def all_cells(quick: bool, full_matrix: bool) -> list[Cell]:
    return [
        *bucket_cells(quick, full_matrix),
        *noise_cells(quick),
        *shift_cells(quick),
        *client_cells(quick),
        *outage_cells(quick),
        *max_rate_cells(quick),
        *start_cells(quick),
        *window_cells(quick),
        *lag_cells(quick),
    ]


# ---------------------------------------------------------------------------------------------------- figures


def requests_by(sent: list[list[float]], at: float) -> float:
    """The requests the client had sent ``at`` seconds into its run, interpolated between its samples."""
    index = bisect.bisect_right(sent, at, key=lambda sample: sample[0])
    if index == 0:
        return 0.0
    if index == len(sent):
        return sent[-1][1]
    (t0, n0), (t1, n1) = sent[index - 1], sent[index]
    return n0 + (n1 - n0) * (at - t0) / (t1 - t0)


def follow(timeline: dict[str, Any], at: float, limit: float, tolerance: float = 0.15) -> float:
    """Seconds from a limit change to the end of the first bin whose answers per second are within 15% of it."""
    width: float = timeline["bin"]
    for start, ok, throttled, error, _ in timeline["rows"]:
        if start >= at - 1e-9 and abs((ok + throttled + error) / width - limit) <= tolerance * limit:
            return float(start) + width - at
    return math.inf


def resume(timeline: dict[str, Any], end: float) -> float:
    """Seconds from an outage's end to the end of the first bin with a success after it."""
    width: float = timeline["bin"]
    return next((start + width - end for start, ok, *_ in timeline["rows"] if start >= end - 1e-9 and ok), math.inf)


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def add_up(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


def measure(cell: Cell, client: int | None, server: int | None) -> dict[str, Any]:
    """One run of a cell: a fresh emulator, its workers, and the run's figures."""
    with emulated(cell.nodes, [*BASE_EMULATOR, *cell.emulator], server) as (emulator, ids):
        start_at = time.time() + 5 if cell.clients > 1 else None  # after every worker's imports
        specs = [
            {
                "contestant": "ours",
                "concurrency": CONCURRENCY,
                "core": client,
                "monitor": MONITOR,
                "start_at": start_at,
                **cell.client,
                **ids_spec(emulator, ids[i :: cell.clients], f"ids.{i}.txt"),
            }
            for i in range(cell.clients)
        ]
        before = emulator.stats()
        with ThreadPoolExecutor(cell.clients) as pool:
            results = list(pool.map(worker, specs))
        after = emulator.stats()
        states = node_states(emulator, "bench") if cell.window else {}
    return figures(cell, results, before, after, states)


def figures(
    cell: Cell,
    results: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    states: dict[str, str | None],
) -> dict[str, Any]:
    begin = min(r["started"] for r in results)
    finishes = [r["started"] + r["wall"] - begin for r in results]
    requests = after["total"] - before["total"]
    timeline, sent = after["timeline"], results[0]["sent"]
    origin = next((t for t, n in sent if n), 0.0)  # run time 0 is the first request (to one sample)
    sent = [[t - origin, n] for t, n in sent]
    run: dict[str, Any] = {
        "time": max(finishes),
        "requests": requests,
        "requests_per_node": requests / cell.nodes,
        "throttled_share": (after["throttled"] - before["throttled"]) / max(1, requests),
        "lost": sum(r["failed"] for r in results),
        "probes": sum(r["probes"] for r in results),
        "lag_p99_ms": milliseconds(results[0]["lag_p99"]),
        "lag_max_ms": milliseconds(results[0]["lag_max"]),
        "lag_max_at": results[0]["lag_max_at"],
        "cpu": sum(r["cpu"] for r in results),
        "counts": add_up([r["counts"] for r in results]),
        "errors": add_up([r["errors"] for r in results]),
        "timeline": timeline,
        "sent": sent,
    }
    if cell.ideal:
        run["vs_ideal"] = run["time"] / cell.ideal
    if cell.clients > 1:
        run["spread"] = max(finishes) / min(finishes)
        run["finishes"] = sorted(finishes)
    if "max_rate" in cell.client:
        run["achieved_rate"] = cell.nodes / run["time"]
        run["rate_error"] = abs(run["achieved_rate"] / cell.client["max_rate"] - 1)
    for i, (at, limit) in enumerate(cell.changes):
        run[f"follow_{i}"] = follow(timeline, at, limit)
    if cell.window:
        start, end, kind = cell.window
        run["outage_requests"] = after["outage_requests"] - before["outage_requests"]
        run["client_window_requests"] = round(requests_by(sent, end) - requests_by(sent, start))
        window = run["client_window_requests"] if kind == "refuse" else run["outage_requests"]
        run["window_beyond_probes"] = window - run["probes"]
        run["resume"] = resume(timeline, end)
        not_ok = [node for r in results for node in r["not_ok"]]
        run["false_failures"] = sum(states.get(node) in ACCEPTED_STATES for node in not_ok)
    if cell.service_error:
        errors = run["errors"]
        expected = errors.get(f"failed {cell.service_error}", 0) + errors.get(f"not_attempted {cell.service_error}", 0)
        run["without_service_error"] = cell.nodes - expected
    return run


def backoff_allowance(cell: Cell) -> float:
    """The backoff of the unluckiest node: k retries, k the first with N * p^k < 1, each at its longest wait."""
    from batch_dealloc_async import RetryPolicy  # noqa: PLC0415 (the library's own defaults)

    policy = RetryPolicy()
    share: float = cell.params["share"]
    retry_after: float | None = cell.params["retry_after"]
    retries = math.ceil(math.log(cell.nodes) / -math.log(share))
    if retry_after is not None:
        return retries * retry_after
    return sum(min(policy.backoff_cap, policy.backoff_base * 2.0**i) for i in range(retries))


def relate_noise(cells: list[Cell], runs: list[list[dict[str, Any]]]) -> None:
    """Each faulty run against the no-fault run of the same round."""
    base = next(r for cell, r in zip(cells, runs, strict=True) if cell.group == "noise" and cell.label == BASELINE)
    for cell, cell_runs in zip(cells, runs, strict=True):
        if cell.group != "noise" or cell.label == BASELINE:
            continue
        allowance = backoff_allowance(cell)
        for run, baseline in zip(cell_runs, base, strict=True):
            run["vs_baseline"] = run["time"] / baseline["time"]
            run["allowance"] = allowance
            run["allowed_ratio"] = 1.5 + allowance / baseline["time"]
            run["vs_allowed"] = run["vs_baseline"] / run["allowed_ratio"]


def summarise(cell: Cell, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs' figures (WORST: the maximum); the rest is the median run's (its timeline...)."""
    middle = sorted(runs, key=lambda r: r["time"])[len(runs) // 2]
    summary = dict(middle) if cell.chart else {k: v for k, v in middle.items() if k not in {"timeline", "sent"}}
    for key, value in middle.items():
        if isinstance(value, int | float):
            values = [r[key] for r in runs]
            summary[key] = max(values) if key in WORST else median(values)
    summary["runs"] = len(runs)
    summary["missed"] = [
        f"{t.figure} {fmt(summary.get(t.figure), '.4g')} (target {t.text})"
        for t in cell.targets
        if summary.get(t.figure) is None or summary[t.figure] > t.limit
    ]
    summary["met"] = not summary["missed"]
    return summary


def cpu_cost(quick: bool, rounds: int, client: int | None, server: int | None) -> dict[str, Any]:
    """The throughput scenario (unthrottled): CPU per 1,000 of this library and the bare loop, per concurrency."""
    count = 2000 if quick else 20000
    pairs: dict[int, list[tuple[float, float]]] = {64: [], CONCURRENCY: []}
    for _ in range(rounds):
        for concurrency, per_round in pairs.items():
            ours, bare = (
                one_run(
                    count, THROUGHPUT_EMULATOR, throughput_spec(client, contestant=who, concurrency=concurrency), server
                )
                for who in ("ours", "bare")
            )
            per_round.append((cpu_per_1000(ours), cpu_per_1000(bare)))
            print(f"  cpu concurrency {concurrency}: {per_round[-1][0] / per_round[-1][1]:.2f}x the bare loop")
    return {
        "count": count,
        "rounds": rounds,
        "by_concurrency": {
            str(concurrency): {
                "ours": median([o for o, _ in per_round]),
                "bare": median([b for _, b in per_round]),
                "ratio": spread([o / b for o, b in per_round]),
            }
            for concurrency, per_round in pairs.items()
        },
    }


# ----------------------------------------------------------------------------------------------------- report

Entries = list[tuple[Cell, dict[str, Any]]]


def pct(value: float | None) -> str:
    return fmt(None if value is None else value * 100, ".1f") + "%"


def sec(value: float | None) -> str:
    return "never" if value == math.inf else fmt(value, ".2f") + " s"


def met(summary: dict[str, Any]) -> str:
    return "yes" if summary["met"] else "**no**"


def _summary_lines(entries: Entries, cpu: dict[str, Any]) -> Iterator[str]:
    yield "## Summary"
    yield ""
    for group, title in TITLES.items():
        rows = [(cell, s) for cell, s in entries if cell.group == group and cell.targets]
        if rows:
            misses = [f"{cell.label}: {', '.join(s['missed'])}" for cell, s in rows if s["missed"]]
            missed = f" (missed: {'; '.join(misses)})" if misses else ""
            yield f"- {title}: {len(rows) - len(misses)} of {len(rows)} cells meet their targets{missed}"
    ratio = cpu["by_concurrency"]["64"]["ratio"]["median"]
    within = "stays within" if ratio <= CPU_TARGET else "**exceeds**"
    yield (
        f"- CPU per 1,000 deallocations, unthrottled throughput run: this library {ratio:.2f}x the bare aiohttp "
        f"loop at concurrency 64: it {within} {CPU_TARGET:g}x (details below)"
    )
    yield ""


def _bucket_lines(rows: Entries) -> Iterator[str]:
    yield "Ideal = N / R. One-way latency L both ways (`--latency-before L --latency L`). Throttled share = the"
    yield "emulator's throttled answers / every answer during the run. Nodes lost = nodes not accepted (worst run)."
    yield "Targets: N = 10R: time <= 1.10x the ideal and under 5% throttled; N = 3R: <= 1.25x; no node lost."
    yield ""
    yield from _bucket_table(rows)


def _bucket_table(rows: Entries) -> Iterator[str]:
    yield "| R /s | burst | L ms | N | time | time / ideal | throttled | nodes lost | meets targets |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for cell, s in rows:
        p = cell.params
        yield (
            f"| {p['rate']} | {p['burst']} | {p['latency']} | {cell.nodes} ({p['multiple']}R) | {sec(s['time'])} "
            f"| {fmt(s['vs_ideal'], '.3f')}x | {pct(s['throttled_share'])} | {s['lost']} | {met(s)} |"
        )


def _noise_lines(rows: Entries) -> Iterator[str]:
    yield (
        f"No limit, N = {rows[0][0].nodes}, one-way latency 20 ms. Each faulty run is divided by the no-fault run "
        "of the same round (median of these ratios). Allowed: 1.5x the no-fault time plus the backoff of the "
        "unluckiest node, k retries (the first k with N p^k < 1), each the retry policy's longest wait (0.5 s, "
        "doubling) or the Retry-After (1 s)."
    )
    yield ""
    yield "| faults | time | vs no faults | allowed | throttled | requests / node | nodes lost | meets targets |"
    yield "|---|---|---|---|---|---|---|---|"
    for cell, s in rows:
        if cell.label == BASELINE:
            yield f"| {cell.label} | {sec(s['time'])} | 1x | - | {pct(s['throttled_share'])} | {s['requests_per_node']:.3f} | {s['lost']} | - |"
            continue
        yield (
            f"| {cell.label} | {sec(s['time'])} | {s['vs_baseline']:.2f}x | {s['allowed_ratio']:.2f}x "
            f"(+{s['allowance']:g} s) | {pct(s['throttled_share'])} | {s['requests_per_node']:.3f} | {s['lost']} | {met(s)} |"
        )


def _shift_lines(rows: Entries) -> Iterator[str]:
    for cell, s in rows:
        yield f"{cell.label}, burst 30, N = {cell.nodes}; the piecewise ideal (each step at its limit) is {cell.ideal:g} s."
        yield ""
        yield f"- Time: {sec(s['time'])}, **{s['vs_ideal']:.3f}x** the piecewise ideal (target <= 1.15x)"
        yield f"- Throttled: **{pct(s['throttled_share'])}** (target < 8%); nodes lost: {s['lost']}"
        for i, (at, limit) in enumerate(cell.changes):
            yield f"- Followed the change to {limit:g}/s at {at:g} s in **{sec(s[f'follow_{i}'])}**"
        yield (
            "- Following time: from the change to the end of the first timeline bin (0.25 s) in which the "
            "client's rate (every answer: accepted, throttled or failed) is within 15% of the new limit."
        )
        yield f"- Meets targets: {met(s)}"


def _clients_lines(rows: Entries) -> Iterator[str]:
    for cell, s in rows:
        yield (
            f"{cell.label}: one pool split in four, four worker processes on the client core starting together "
            f"(the ideal is {cell.ideal:g} s). Time: the last to finish; spread: the last finish time / the first."
        )
        yield ""
        yield f"- Aggregate time {sec(s['time'])}: **{s['vs_ideal']:.3f}x** the ideal (target <= 1.15x)"
        yield f"- Throttled: **{pct(s['throttled_share'])}** (target < 5%); nodes lost: {s['lost']}"
        finishes = ", ".join(f"{t:.2f}" for t in s["finishes"])
        yield f"- Spread of the finish times ({finishes} s): **{s['spread']:.3f}** (target <= 1.20)"
        yield f"- Meets targets: {met(s)}"


def _outage_lines(rows: Entries) -> Iterator[str]:
    yield (
        "A bucket of 300/s (burst 30), the outage's times from the first deallocate request. Requests in the "
        "window: for 500s the emulator's `outage_requests`; for refused connections (which the emulator never "
        "sees) the client's own count between the window's start and end (`client.stats.requests`, sampled "
        "every 5 ms, its clock set to 0 at its first request). Resumed: from the window's end to the end of the first timeline bin (0.25 s) with a "
        "success. False failures: nodes reported not accepted that the service did deallocate (listed after "
        "the run). Targets: at most 512 (max_concurrency) + the probes in the window, resumed within 2 s, no "
        "node lost, no false failure."
    )
    yield ""
    yield "| outage | N | requests in window (emulator / client) | probes | resumed after | time | nodes lost | false failures | meets targets |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for cell, s in rows:
        yield (
            f"| {cell.label} | {cell.nodes} | {s['outage_requests']} / {s['client_window_requests']} | {s['probes']} "
            f"| {sec(s['resume'])} | {sec(s['time'])} | {s['lost']} | {s['false_failures']} | {met(s)} |"
        )


def _failing_lines(rows: Entries) -> Iterator[str]:
    for cell, s in rows:
        yield f"{cell.label} (`--outage 0:100000:error_500`), bucket 300/s, N = {cell.nodes}:"
        yield ""
        yield f"- Requests sent: **{s['requests']}**, {pct(s['requests_per_node'])} of N (target < 20%)"
        yield f"- The run ended after **{sec(s['time'])}**"
        outcomes = ", ".join(f"{k}: {v}" for k, v in s["counts"].items() if v)
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items())
        yield f"- Outcomes: {outcomes}; by status and error code: {errors}"
        yield f"- Nodes without the service's error ({cell.service_error}): {s['without_service_error']}; meets targets: {met(s)}"


def _max_rate_lines(rows: Entries) -> Iterator[str]:
    for cell, s in rows:
        rate = cell.client["max_rate"]
        yield (
            f"- {cell.label}, N = {cell.nodes}: achieved **{s['achieved_rate']:.1f} requests/s** (N / time), "
            f"{s['rate_error'] * 100:.1f}% off {rate} (target within 5%); nodes lost: {s['lost']}; meets targets: {met(s)}"
        )


def _window_lines(rows: Entries) -> Iterator[str]:
    yield "A window limiter instead of the token bucket (`--throttle-window`, `--throttle-sliding`): at most R times"
    yield "the window per window, refused whole once spent. Ideal = N / R. Not one of the issue's cells: our target."
    yield ""
    yield "| cell | time | time / ideal | throttled | nodes lost | meets targets |"
    yield "|---|---|---|---|---|---|"
    for cell, s in rows:
        yield (
            f"| {cell.label} | {sec(s['time'])} | {fmt(s['vs_ideal'], '.3f')}x | {pct(s['throttled_share'])} "
            f"| {s['lost']} | {met(s)} |"
        )


def _lag_lines(rows: Entries) -> Iterator[str]:
    for cell, s in rows:
        yield (
            f"- {cell.label} (bucket 1000/s, burst 100, latency 0), in the client's process: lag p99 "
            f"**{s['lag_p99_ms']:.2f} ms** (target < 3 ms), max **{s['lag_max_ms']:.2f} ms** (target < 10 ms); "
            f"the run took {s['vs_ideal']:.3f}x its ideal; meets targets: {met(s)}"
        )
        yield (
            "- Lag: how late each tick of `asyncio.sleep(0.005)` in a loop wakes, against its sleep's end, over the "
            f"whole run; the worst tick came {s['lag_max_at']:.2f} s into the run (median over runs)."
        )


def _cpu_lines(cpu: dict[str, Any]) -> Iterator[str]:
    yield (
        f"The throughput scenario of `python -m benchmarks` (no limit, {cpu['count']} nodes, emulator "
        f"`{' '.join(THROUGHPUT_EMULATOR)}`), this library (`deallocate_nodes`) and the bare aiohttp loop back to "
        f"back in each of {cpu['rounds']} rounds: client CPU seconds per 1,000 deallocations, the ratio the median "
        f"of the per-round ratios. Target: within {CPU_TARGET:g}x."
    )
    yield ""
    yield "| concurrency | this library | bare loop | ratio | per round |"
    yield "|---|---|---|---|---|"
    for concurrency, c in cpu["by_concurrency"].items():
        rounds = ", ".join(f"{v:.2f}" for v in c["ratio"]["per_round"])
        yield f"| {concurrency} | {c['ours']:.3f} | {c['bare']:.3f} | **{c['ratio']['median']:.2f}x** | {rounds} |"


def _start_lines(rows: Entries) -> Iterator[str]:
    yield "Every node `deallocated`; the client runs `start_nodes` (Start Node, the inverse run) against a bucket, as"
    yield "in cell 1. Targets as cell 1's N = 10R."
    yield ""
    yield from _bucket_table(rows)


TITLES = {
    "bucket": "1. Token bucket",
    "noise": "2. Noise: random throttling answers",
    "shift": "3. Limit shift",
    "clients": "4. Four clients, one bucket",
    "outage": "5. Outages",
    "failing": "5b. A service that keeps failing",
    "max_rate": "6. max_rate",
    "start": "Start runs (issue 12): the inverse direction",
    "window": "Window limiters (off the matrix)",
    "lag": "7. Event loop lag",
}
SECTIONS = {
    "bucket": _bucket_lines,
    "noise": _noise_lines,
    "shift": _shift_lines,
    "clients": _clients_lines,
    "outage": _outage_lines,
    "failing": _failing_lines,
    "max_rate": _max_rate_lines,
    "start": _start_lines,
    "window": _window_lines,
    "lag": _lag_lines,
}


def _lines(results: dict[str, Any], entries: Entries, png: str | None) -> Iterator[str]:
    yield "# Traffic control benchmarks"
    yield ""
    mode = "quick (one small cell per group, one run)" if results["quick"] else "full"
    if results["full_matrix"]:
        mode += ", full token bucket matrix"
    yield from machine_lines(results, f"{mode}; the suite took {results['duration'] / 60:.1f} min")
    yield (
        f"- Every cell: a fresh emulator process and the client (`deallocate_nodes`, adaptive) in a worker process, "
        f"**max_concurrency=512** (rate x round trip reaches 300 requests in flight at 1,000/s and 150 ms one way); "
        f"the median of {results['rounds']} interleaved run(s), nodes lost and false failures the worst run's."
    )
    yield ""
    yield from _summary_lines(entries, results["cpu"])
    for group, title in TITLES.items():
        rows = [(cell, s) for cell, s in entries if cell.group == group]
        if rows:
            yield f"## {title}"
            yield ""
            yield from SECTIONS[group](rows)
            yield ""
    yield "## CPU per 1,000 deallocations against the bare loop"
    yield ""
    yield from _cpu_lines(results["cpu"])
    yield ""
    if png:
        yield (
            "Charts: answers per second on the emulator's timeline (0.25 s bins) against the limit in force, the "
            "client's sent requests per second from its own samples, and the outage window shaded."
        )
        yield ""
        yield f"![the client's rate against the service's limit]({png})"
        yield ""


def chart(entries: Entries, path: Path) -> bool:
    """The client's rate over time against the limit, one panel per chart cell; False without matplotlib."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (benchmark extra only)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    panels = [(cell, s) for cell, s in entries if cell.chart]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for axis, (cell, s) in zip(axes[0], panels, strict=True):
        width, rows = s["timeline"]["bin"], s["timeline"]["rows"]
        count = round(max(rows[-1][0], s["time"]) / width) + 1
        ok, bad, limit = [0.0] * count, [0.0] * count, [math.nan] * count
        for start, accepted, throttled, error, rate in rows:
            i = round(start / width)
            ok[i], bad[i] = accepted / width, (throttled + error) / width
            limit[i] = math.nan if rate is None else rate
        for i in range(1, count):  # the limit holds through bins without answers (a refused window)
            if math.isnan(limit[i]):
                limit[i] = limit[i - 1]
        xs = [i * width for i in range(count)]
        sent = [(requests_by(s["sent"], x + width) - requests_by(s["sent"], x)) / width for x in xs]
        axis.step(xs, ok, where="post", color="tab:green", label="accepted /s")
        axis.step(xs, bad, where="post", color="tab:red", label="throttled or failed /s")
        axis.step(xs, sent, where="post", color="tab:blue", linewidth=0.8, label="sent by the client /s")
        axis.step(xs, limit, where="post", color="black", linestyle="--", label="service limit")
        if cell.window:
            axis.axvspan(cell.window[0], cell.window[1], color="grey", alpha=0.2, label=f"outage ({cell.window[2]})")
        axis.set_title(cell.label, fontsize=9)
        axis.set_xlabel("run time (s)")
        axis.set_ylabel("requests per second")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(quick: bool, rounds: int, full_matrix: bool, command: str) -> int:
    client, server = cores()
    started = time.monotonic()
    cells = all_cells(quick, full_matrix)
    runs: list[list[dict[str, Any]]] = [[] for _ in cells]
    for round_ in range(1, rounds + 1):
        for cell, cell_runs in zip(cells, runs, strict=True):
            run = measure(cell, client, server)
            cell_runs.append(run)
            ratio = f", {run['vs_ideal']:.3f}x ideal" if "vs_ideal" in run else ""
            print(f"  [{round_}/{rounds}] {cell.group}: {cell.label}: {run['time']:.2f} s{ratio}", flush=True)
    cpu = cpu_cost(quick, rounds, client, server)
    relate_noise(cells, runs)
    entries = [(cell, summarise(cell, cell_runs)) for cell, cell_runs in zip(cells, runs, strict=True)]
    results: dict[str, Any] = {
        "machine": machine(pinned=client is not None),
        "versions": versions(),
        "quick": quick,
        "full_matrix": full_matrix,
        "rounds": rounds,
        "command": command,
        "duration": time.monotonic() - started,
        "cpu": cpu,
        "cells": [{**dataclasses.asdict(cell), "summary": s} for cell, s in entries],
    }
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "RESULTS.control.quick.md" if quick else HERE / "RESULTS.control.md"
    png = out.with_suffix(".png")
    text = "\n".join(_lines(results, entries, png.name if chart(entries, png) else None))
    out.write_text(text)
    json_out = out_dir / f"results.control{'.quick' if quick else ''}.json"
    json_out.write_text(json.dumps(results, indent=1))
    print(text)
    print(f"written: {out}, {json_out} ({results['duration']:.0f} s)")
    return 0
