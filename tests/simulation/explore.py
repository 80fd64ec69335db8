"""Random scenarios off the matrix, to find where traffic control falls short (a tuning tool, not a test).

``python -m tests.simulation.explore [COUNT] [--first N] [--jobs J] [--stall]`` draws ``COUNT`` service models
(80 by default): a token bucket of 20-3,000 requests/s with a burst of 2-200% of a second of it, one-way latency
0-300 ms with or without jitter, and one of: nothing more, random ``503 ServerBusy``, a limit that falls or
rises mid-run, random ``500`` errors; with ``--stall``, answers also stall for 0.1-0.3 s now and then. N is 3,
10 or 20 seconds of the rate. Each runs the real client on the simulated service (as ``scenarios`` does), and
the list prints worst first: time against the piecewise ideal, throttled share, nodes lost, requests per node.
Lines marked ``!!`` are over 1.3x, over 15% throttled, or lost a node.

Scenario ``#i`` is the same model whatever ``COUNT`` is (it is seeded by its number), so an outlier found here is
reproduced with ``--first i 1`` and traced with ``python -m tests.simulation.scenarios``'s tools. Two bugs this
found in a 20-second sweep: random ``ServerBusy`` on a token bucket hid the bucket's rate, and answer stalls
were read as a dry bucket.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tests.simulation.scenarios import Cell, run
from tests.simulation.service import ServiceModel

_LATENCIES = (0.00025, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3)
_KINDS = ("plain", "plain", "busy", "drop", "rise", "err")


def scenario(index: int, *, stalls: bool = False) -> Cell:
    """Random scenario ``#index`` (the same for the same index and ``stalls``)."""
    rng = random.Random(f"explore-{index}")
    rate = math.exp(rng.uniform(math.log(20), math.log(3000)))
    burst = max(1.0, rate * math.exp(rng.uniform(math.log(0.02), math.log(2.0))))
    latency = rng.choice(_LATENCIES)
    jitter = latency * rng.choice([0.0, 0.2, 1.0])
    kind = rng.choice(_KINDS)
    faults: dict[str, Any] = {}
    schedule: tuple[tuple[float, float | None], ...] = ()
    if kind == "busy":
        faults["server_busy"] = rng.choice([0.005, 0.02, 0.05])
    elif kind == "drop":
        schedule = ((rng.uniform(2, 6), rate * rng.uniform(0.1, 0.6)),)
    elif kind == "rise":
        schedule = ((rng.uniform(2, 6), rate * rng.uniform(1.5, 4)),)
    elif kind == "err":
        faults["error_500"] = rng.choice([0.01, 0.03])
    nodes = int(rate * rng.choice([3, 10, 20]))
    if stalls:  # drawn last: the scenario is otherwise the same as without stalls
        faults["stalls"] = tuple((rng.uniform(1.0, 8.0), rng.choice([0.1, 0.2, 0.3])) for _ in range(3))
    model = ServiceModel(
        rate=rate, burst=burst, latency=latency, jitter=jitter, schedule=schedule, seed=index, **faults
    )
    change = f" limit -> {schedule[0][1]:.0f}/s at {schedule[0][0]:.1f} s" if schedule else ""
    extra = "".join(f" {k}={v}" for k, v in faults.items() if k != "stalls") + (" stalls" if stalls else "")
    name = (
        f"#{index} {kind} R={rate:.0f} B={burst:.0f} L={latency * 1000:g}ms J={jitter * 1000:g}ms "
        f"N={nodes}{extra}{change}"
    )
    return Cell(name, model, nodes=nodes)


def _measure(job: tuple[int, bool]) -> tuple[str, float, float, int, float]:
    cell = scenario(job[0], stalls=job[1])
    result = run(cell)
    return cell.name, result.ratio, result.share, result.lost, result.requests / cell.nodes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.explore", description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=80, help="scenarios to draw (default 80)")
    parser.add_argument("--first", type=int, default=0, help="number of the first scenario (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="processes to run them in (default 2)")
    parser.add_argument("--stall", action="store_true", help="answers also stall for 0.1-0.3 s three times")
    args = parser.parse_args(argv)
    jobs = [(index, args.stall) for index in range(args.first, args.first + args.count)]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(_measure, jobs))
    for name, ratio, share, lost, per_node in sorted(results, key=lambda r: -r[1]):
        flag = " !!" if ratio > 1.3 or share > 0.15 or lost else ""
        print(f"{ratio:6.3f}x thr {share * 100:5.1f}% lost {lost:3d} req/node {per_node:5.2f}  {name}{flag}")
    ratios = [r[1] for r in results]
    print(f"median {statistics.median(ratios):.3f}x, worst {max(ratios):.3f}x over {len(results)} scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
