"""The traffic-control scenarios, run by the real client against :class:`SimService` on virtual time.

``python -m tests.simulation.scenarios [name-substring ...]`` prints the matrix (for tuning); with ``--seeds N``
it runs each cell over seeds 1..N of the model's randomness (two processes) and prints means, worst cases and the
token-bucket matrix's counts: one seed is a single draw, and a change is judged on 16. The tests in
``test_control.py`` assert the targets on the same cells.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from batch_dealloc_async import AccessToken, BatchDeallocClient, RetryPolicy
from tests.simulation.service import Outage, ServiceModel, SimExchange, SimService, Timeline
from tests.virtual_time import run_virtual

ENDPOINT = "https://sim.westus.batch.azure.com"
EPOCH = 1_750_000_000.0


class StaticToken:
    """A token credential that never expires (cheaper than signing: the simulation measures control, not CPU)."""

    async def get_token(self, *scopes: str) -> AccessToken:
        del scopes
        return AccessToken("sim-token", int(EPOCH + 10**7))


@dataclass(frozen=True)
class Cell:
    """One scenario: the service, the work, and how the client is set up."""

    name: str
    model: ServiceModel
    nodes: int
    ideal: float | None = None  # seconds; None: computed from the model's rate (schedule included)
    clients: int = 1
    stagger: float = 0.0  # seconds between the clients' starts (processes started together start a few ms apart)
    max_concurrency: int = 512
    max_rate: float | None = None
    deadline: float | None = None
    action: str = "deallocate"
    options: dict[str, Any] = field(default_factory=dict)

    def ideal_time(self) -> float:
        if self.ideal is not None:
            return self.ideal
        return piecewise_ideal(self.model, self.nodes)


def piecewise_ideal(model: ServiceModel, nodes: int) -> float:
    """Seconds for the bucket's rate (following the schedule) to grant ``nodes`` tokens, burst not counted."""
    steps = [(0.0, model.rate), *model.schedule]
    granted = 0.0
    for i, (at, rate) in enumerate(steps):
        end = steps[i + 1][0] if i + 1 < len(steps) else float("inf")
        if rate is None:
            return at
        if granted + rate * (end - at) >= nodes:
            return at + (nodes - granted) / rate
        granted += rate * (end - at)
    raise AssertionError("unreachable")


@dataclass
class Result:
    """What a cell's run measured."""

    cell: Cell
    elapsed: float
    requests: int
    throttled: int
    during_outage: int
    refused: int
    counts: dict[str, int]
    finish_times: list[float]
    timeline: Timeline
    stats: list[Any]
    cpu: float
    trace: list[tuple[float, ...]] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)
    others_share: float = 0.0  # the other user's throttled share (``ServiceModel.background``)

    @property
    def ratio(self) -> float:
        return self.elapsed / self.cell.ideal_time()

    @property
    def share(self) -> float:
        return self.throttled / max(1, self.requests)

    @property
    def lost(self) -> int:
        return sum(n for status, n in self.counts.items() if status not in {"accepted", "deallocated", "skipped"})

    def line(self) -> str:
        spread = max(self.finish_times) / min(self.finish_times) if len(self.finish_times) > 1 else 1.0
        return (
            f"{self.cell.name:<46} {self.elapsed:7.2f}s {self.ratio:6.3f}x thr {self.share * 100:5.1f}% "
            f"req {self.requests:6d} out {self.during_outage:5d} lost {self.lost:4d} spread {spread:5.3f} "
            f"cpu {self.cpu:5.2f}s"
        )


async def _run(cell: Cell) -> Result:
    loop = asyncio.get_running_loop()
    start = loop.time()
    service = SimService(cell.model, start)
    exchange = SimExchange(service)
    counts: dict[str, int] = {}
    finish: list[float] = []
    stats = []
    outcomes: list[Any] = []

    async def one(index: int, ids: list[str]) -> None:
        if cell.stagger:
            await asyncio.sleep(index * cell.stagger)
        async with BatchDeallocClient(
            ENDPOINT,
            StaticToken(),
            exchange=exchange,
            clock=loop.time,
            sleep=asyncio.sleep,
            wall_clock=lambda: EPOCH + loop.time(),
            rng=random.Random(index),
            max_concurrency=cell.max_concurrency,
            retry=RetryPolicy(),
            **({"max_rate": cell.max_rate} if cell.max_rate is not None else {}),
            **cell.options,
        ) as client:
            if index == 0:
                sampler = asyncio.ensure_future(sample(client))
            act = client.deallocate_nodes if cell.action == "deallocate" else client.start_nodes
            report = await act("pool", ids, deadline=cell.deadline)
            if index == 0:
                sampler.cancel()
            finish.append(loop.time() - start)
            stats.append(client.stats)
            outcomes.extend(report.outcomes)
            for status, n in report.counts.items():
                counts[status] = counts.get(status, 0) + n

    trace: list[tuple[float, ...]] = []

    async def sample(client: BatchDeallocClient) -> None:
        while True:
            limiter = client.limiter
            t = loop.time() - start
            trace.append((t, limiter.rate or 0.0, limiter.limit, limiter.in_flight, limiter.state, service.requests))
            await asyncio.sleep(0.1)

    per_client = -(-cell.nodes // cell.clients)
    ids = [f"tvm-{i:06d}" for i in range(cell.nodes)]
    cpu = time.process_time()
    async with asyncio.TaskGroup() as group:
        for index in range(cell.clients):
            group.create_task(one(index, ids[index * per_client : (index + 1) * per_client]))
    return Result(
        cell=cell,
        elapsed=loop.time() - start,
        requests=service.requests + exchange.refused,
        throttled=service.throttled,
        during_outage=service.during_outage,
        refused=exchange.refused,
        counts={k: v for k, v in counts.items() if v},
        finish_times=finish,
        timeline=service.timeline,
        stats=stats,
        cpu=time.process_time() - cpu,
        trace=trace,
        outcomes=outcomes,
        others_share=service.background_throttled / max(1, service.background_granted + service.background_throttled),
    )


def run(cell: Cell) -> Result:
    """Run one cell on a fresh virtual-time loop."""
    return run_virtual(_run(cell))


# ----------------------------------------------------------------------------------------------------- the matrix


def bucket_cells(*, quick: bool = False) -> list[Cell]:
    """Cell 1: token bucket R, burst R/10 or R, one-way latency; N = 10R and N = 3R."""
    cells = []
    rates = (50, 300, 1000)
    latencies = (0.0, 0.02, 0.05, 0.15)
    for rate in rates:
        for burst in (rate / 10, rate):
            for latency in latencies:
                for multiple in (10, 3):
                    if quick and (multiple == 3 or latency in {0.02, 0.05}):
                        continue
                    # "0 ms" is loopback: a quarter of a millisecond each way, processing included.
                    one_way = max(latency, 0.00025)
                    model = ServiceModel(rate=rate, burst=burst, latency=one_way, jitter=one_way / 5)
                    name = f"bucket R={rate} B={burst:g} L={latency * 1000:g}ms N={multiple}R"
                    cells.append(Cell(name, model, nodes=multiple * rate))
    return cells


def noisy_bucket_cells() -> list[Cell]:
    """A token bucket and 5% random ``503 ServerBusy`` at once (an account near its limit and busy): N = 10R."""
    cells = []
    for rate, latency in ((1000, 0.02), (2500, 0.0)):
        one_way = max(latency, 0.00025)
        model = ServiceModel(rate=rate, burst=rate / 10, latency=one_way, jitter=one_way / 5, server_busy=0.05)
        name = f"bucket R={rate} B={rate // 10} L={latency * 1000:g}ms + 5% ServerBusy N=10R"
        cells.append(Cell(name, model, nodes=10 * rate))
    return cells


def stall_cells() -> list[Cell]:
    """Answers that stall for 0.1 s four times (a pause in the service or the client's loop).

    A bucket of 1,000/s with 5% random ServerBusy, N = 10R: the answers held by a stall arrive at once, successes
    and throttles mixed, and must not read as a dry bucket. The same cells without stalls are ``noisy_bucket``'s.
    """
    cells = []
    for latency in (0.02, 0.15):
        model = ServiceModel(
            rate=1000,
            burst=100,
            latency=latency,
            jitter=latency / 5,
            server_busy=0.05,
            stalls=((2.3, 0.1), (4.1, 0.1), (5.9, 0.1), (7.7, 0.1)),
        )
        name = f"bucket R=1000 B=100 L={latency * 1000:g}ms + 5% ServerBusy + 4 stalls of 0.1 s N=10R"
        cells.append(Cell(name, model, nodes=10_000))
    return cells


def window_cells() -> list[Cell]:
    """Off the issue's matrix: window limiters (fixed and sliding) instead of a token bucket; N = 10R.

    Batch publishes no request limit, let alone its algorithm. A window limiter grants a window's quota as fast as
    it is asked and then nothing until the window turns (fixed), or until the grants of a window ago expire
    (sliding): its quota is a burst of a window's worth, and while it is spent the successes that trickle in say
    nothing about its rate (a sliding window's echo the client's own sending of a window ago).
    """
    cells = []
    for sliding in (False, True):
        for rate in (300, 1000):
            for window in (0.5, 1.0):
                for latency in (0.02, 0.1):
                    model = ServiceModel(rate=rate, window=window, sliding=sliding, latency=latency, jitter=latency / 5)
                    kind = "sliding" if sliding else "fixed"
                    name = f"{kind} window R={rate} W={window:g}s L={latency * 1000:g}ms N=10R"
                    cells.append(Cell(name, model, nodes=10 * rate))
    return cells


def tail_cells() -> list[tuple[Cell, Cell]]:
    """Off the matrix: a heavy tail of slow answers (1% or 5% take 0.3-2 s more), each with its reference.

    The reference is a client paced at exactly the bucket's rate, not adaptive: the slow answers that come last
    lengthen every run alike (a run's end waits for its slowest answer), so the ideal N/R says little here.
    """
    pairs = []
    for rate, burst, latency in ((300, 30, 0.02), (1000, 100, 0.05), (300, 300, 0.05)):
        for slow in (0.01, 0.05):
            model = ServiceModel(rate=rate, burst=burst, latency=latency, jitter=latency / 5, slow=(slow, 0.3, 2.0))
            name = f"tail R={rate} B={burst} L={latency * 1000:g}ms {slow:.0%} slow N=10R"
            cell = Cell(name, model, nodes=10 * rate)
            reference = replace(cell, name=f"{name}: paced at R", max_rate=float(rate), options={"adaptive": False})
            pairs.append((cell, reference))
    return pairs


def background_cells() -> list[Cell]:
    """Off the matrix: another user of the account sends a steady load (Poisson, not retried) on the same bucket.

    What is left for the run is the rate less that load; the ideal is N over it. The figure to watch besides the
    time is the other user's throttled share (``Result.others_share``): what the run costs the account's other
    traffic (job submissions, say).
    """
    cells = []
    for latency in (0.02, 0.1):
        for rate, background in ((400, 100), (400, 200), (400, 300), (1000, 500)):
            model = ServiceModel(rate=rate, burst=rate / 10, latency=latency, jitter=latency / 5, background=background)
            name = f"background {background}/s on R={rate} L={latency * 1000:g}ms"
            cells.append(Cell(name, model, nodes=int(10 * (rate - background)), ideal=10.0))
    return cells


def noise_cells() -> list[tuple[Cell, Cell]]:
    """Cell 2: no limit, random throttling; each with its fault-free baseline."""
    latency = 0.02
    base = ServiceModel(latency=latency, jitter=latency / 5)
    nodes = 5000
    pairs = []
    for name, model in (
        ("503 ServerBusy 1%", replace(base, server_busy=0.01)),
        ("503 ServerBusy 5%", replace(base, server_busy=0.05)),
        ("429 Retry-After 1 2%", replace(base, too_many=0.02)),
    ):
        pairs.append(
            (Cell(f"noise {name}", model, nodes=nodes, ideal=1.0), Cell("baseline", base, nodes=nodes, ideal=1.0))
        )
    return pairs


def shift_cell(latency: float = 0.02) -> Cell:
    """Cell 3: the limit goes 600 -> 150 at 5 s, back to 600 at 15 s."""
    model = ServiceModel(rate=600, burst=60, schedule=((5.0, 150), (15.0, 600)), latency=latency, jitter=latency / 5)
    return Cell(f"shift 600->150->600 L={latency * 1000:g}ms", model, nodes=3000 + 1500 + 3000)


def shared_cell(latency: float = 0.02) -> Cell:
    """Cell 4: four clients share one bucket of 400/s, started 3 ms apart (as processes started together are).

    The first client's opening requests then meet a full bucket and the others' a spent one, as on real sockets;
    started at the same instant, the four fared alike and the cell hid that gap.
    """
    model = ServiceModel(rate=400, burst=40, latency=latency, jitter=latency / 5)
    return Cell(f"shared 4 clients 400/s L={latency * 1000:g}ms", model, nodes=4 * 1000, clients=4, stagger=0.003)


def outage_cells(latency: float = 0.02) -> list[Cell]:
    """Cell 5: every request 500 (or refused) for 10 s mid-run; and a service that keeps failing."""
    base = ServiceModel(rate=300, burst=30, latency=latency, jitter=latency / 5)
    return [
        Cell("outage 500 for 10 s at 3 s", replace(base, outages=(Outage(3.0, 10.0),)), nodes=3000, ideal=10.0 + 10.0),
        Cell(
            "outage refused for 10 s at 3 s",
            replace(base, outages=(Outage(3.0, 10.0, "refuse"),)),
            nodes=3000,
            ideal=10.0 + 10.0,
        ),
        Cell("down: every request 500", replace(base, outages=(Outage(0.0, 10**6),)), nodes=3000, ideal=10.0),
    ]


def start_cell() -> Cell:
    """A start run on a throttled account: the figures of the token bucket cells hold for starting nodes too."""
    model = ServiceModel(rate=300, burst=30, latency=0.02, jitter=0.004, initial_state="deallocated")
    return Cell("start R=300 B=30 L=20ms N=10R", model, nodes=3000, action="start")


def max_rate_cell() -> Cell:
    """Cell 6: a ceiling of 200 requests/s on an unlimited service."""
    return Cell("max_rate 200/s", ServiceModel(latency=0.02), nodes=2000, ideal=10.0, max_rate=200.0)


def _seeded(job: tuple[Cell, int]) -> tuple[str, float, float, float, float]:
    """One cell's run with another seed: (name, time / ideal, throttled share, finish-time spread, others')."""
    cell, seed = job
    result = run(replace(cell, model=replace(cell.model, seed=seed)))
    spread = max(result.finish_times) / min(result.finish_times) if len(result.finish_times) > 1 else 1.0
    return cell.name, result.ratio, result.share, spread, result.others_share


def _sweep(cells: list[Cell], seeds: int) -> None:
    """Every cell over seeds 1..``seeds``, in two processes: per-cell figures, then the token-bucket counts."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(_seeded, [(cell, seed) for cell in cells for seed in range(1, seeds + 1)]))
    for cell in cells:
        mine = [row for row in rows if row[0] == cell.name]
        ratios = [row[1] for row in mine]
        print(
            f"{cell.name:<46} time/ideal mean {statistics.mean(ratios):.3f} max {max(ratios):.3f}  "
            f"throttled mean {statistics.mean(row[2] for row in mine) * 100:5.1f}%  "
            f"spread median {statistics.median(row[3] for row in mine):.2f}"
            + (
                f"  others throttled {statistics.mean(row[4] for row in mine) * 100:4.1f}%"
                if cell.model.background
                else ""
            )
        )
    long = [row for row in rows if row[0].startswith("bucket R=") and row[0].endswith(" N=10R") and "+" not in row[0]]
    short = [row for row in rows if row[0].startswith("bucket R=") and row[0].endswith(" N=3R")]
    if long:
        print(
            f"token bucket N=10R: within 1.10x {sum(r[1] <= 1.10 for r in long)} of {len(long)}, "
            f"under 5% throttled {sum(r[2] < 0.05 for r in long)}; "
            f"N=3R within 1.25x {sum(r[1] <= 1.25 for r in short)} of {len(short)}"
        )


def main(argv: list[str]) -> int:
    trace = "--trace" in argv
    seeds = 0
    if "--seeds" in argv:
        at = argv.index("--seeds")
        seeds = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2 :]
    argv = [a for a in argv if a != "--trace"]
    cells = [*bucket_cells(), *noisy_bucket_cells(), *stall_cells(), shift_cell(), shift_cell(0.15)]
    cells += [shared_cell(), shared_cell(0.1)]
    cells += outage_cells()
    cells += window_cells()
    cells += [c for pair in tail_cells() for c in pair[:1]] + background_cells()
    cells += [c for pair in noise_cells() for c in pair[:1]] + [noise_cells()[0][1], max_rate_cell(), start_cell()]
    wanted = [c for c in cells if not argv or any(a in c.name for a in argv)]
    if seeds:
        _sweep(wanted, seeds)
        return 0
    for cell in wanted:
        result = run(cell)
        print(result.line(), flush=True)
        if trace:
            previous = 0
            for t, rate, limit, in_flight, state, requests in result.trace[:200]:
                sent, previous = requests - previous, requests
                print(
                    f"   t={t:6.2f} rate={rate:8.1f} window={limit:4d} in flight {in_flight:4d} {state:<8} sent {sent}"
                )
    return 0


def follow_time(result: Result, at: float, limit: float, *, window: float = 0.5, within: float = 0.15) -> float | None:
    """Seconds after ``at`` until the client's rate came within ``within`` of ``limit``.

    The client's rate is its requests per second over ``window`` (throttled ones included), from the service's
    timeline; ``None`` if it never came that close.
    """
    timeline = result.timeline
    t = at
    while t < result.elapsed:
        sending = timeline.rate(timeline.sent, t, t + window)
        if abs(sending - limit) <= within * limit:
            return t - at
        t += timeline.bin
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
