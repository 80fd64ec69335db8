"""A run on an account shared with someone else's steady load, on real sockets (off the issue's matrix).

``python -m benchmarks.shared_load [--rate R] [--burst B] [--other B/S] [--latency MS] [--runs N]
[--max-rate R/S]`` starts the emulator (a token bucket of ``--rate`` requests/s, ``--latency`` ms each way),
then a second process, "the other user", that sends ``--other`` deallocate requests per second at random
(Poisson) times, each once (a throttled one is not retried: it is what the run cost that user). Two seconds
later this library's worker deallocates ten seconds of what the other load leaves (N = 10 x (R - other)) with
its defaults, or under ``--max-rate``. Printed per run: the run's time against N over what is left, its own
throttled answers, and the other user's throttled share while the run lasted.

What it shows (README, traffic control, gap 6): left to itself the client takes more than what the other load
leaves, and the other user pays in throttled requests; ``max_rate`` at what is left keeps them whole.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python benchmarks/shared_load.py` as well as `python -m ...`
    sys.path.insert(0, str(HERE.parent))

from benchmarks.control import BASE_EMULATOR, CONCURRENCY, MONITOR, bucket, latency  # noqa: E402
from benchmarks.run import ROOT, cores, emulated, ids_spec, worker  # noqa: E402

OTHER = r"""
import asyncio, json, random, sys, time
from batch_dealloc_async import BatchDeallocClient, RetryPolicy, SharedKeyCredential, ThrottledError

spec = json.loads(sys.argv[1])

async def main():
    ids = open(spec["ids_file"]).read().split()
    rng = random.Random(7)
    counts = {"ok": 0, "throttled": 0, "other": 0}
    credential = SharedKeyCredential(spec["account"], spec["key"])
    async with BatchDeallocClient(
        spec["endpoint"], credential, adaptive=False, max_concurrency=4000, retry=RetryPolicy(max_attempts=1)
    ) as client:
        async def one(node):
            try:
                await client.deallocate_node("bench", node)
                counts["ok"] += 1
            except ThrottledError:
                counts["throttled"] += 1
            except Exception:
                counts["other"] += 1

        async def report():
            while True:
                print(json.dumps({"t": time.time(), **counts}), flush=True)
                await asyncio.sleep(0.25)

        reporter = asyncio.ensure_future(report())
        tasks, at = [], time.time()
        for node in ids:
            at += rng.expovariate(spec["rate"])
            await asyncio.sleep(max(0.0, at - time.time()))
            tasks.append(asyncio.ensure_future(one(node)))
        await asyncio.gather(*tasks)
        await reporter  # reports on (counts no longer move) until the run is over and this process is killed

asyncio.run(main())
"""


def one_run(args: argparse.Namespace, client_core: int | None, server_core: int | None) -> dict[str, Any]:
    """One run: a fresh emulator, the other user's process, then ours; the figures."""
    left = args.rate - args.other
    nodes = int(10 * left)
    other_nodes = int(args.other * 40)  # enough for the run and its margins
    emulator_args = [*BASE_EMULATOR, *bucket(args.rate, args.burst), *latency(args.latency)]
    with emulated(nodes + other_nodes, emulator_args, server_core) as (emulator, ids):
        other_spec = {**ids_spec(emulator, ids[nodes:], "ids.other.txt"), "rate": args.other}
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER, json.dumps(other_spec)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(other.stdout or ()), daemon=True)
        reader.start()
        try:
            time.sleep(2.0)  # the other load is under way before the run starts
            start = time.time()
            spec = {
                "contestant": "ours",
                "concurrency": CONCURRENCY,
                "core": client_core,
                "monitor": MONITOR,
                **({"max_rate": args.max_rate} if args.max_rate else {}),
                **ids_spec(emulator, ids[:nodes], "ids.0.txt"),
            }
            result = worker(spec)
            end = time.time()
            time.sleep(0.5)  # the other user's next report
        finally:
            other.kill()
            other.wait()
            reader.join(timeout=5)
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    before = max((row for row in rows if row["t"] <= start), key=lambda row: row["t"])
    after = min((row for row in rows if row["t"] >= end), key=lambda row: row["t"])
    ok, throttled = after["ok"] - before["ok"], after["throttled"] - before["throttled"]
    return {
        "time": round(result["wall"], 2),
        "vs_ideal": round(result["wall"] / (nodes / left), 3),
        "our_throttled": result.get("client_throttled"),
        "accepted": (result.get("counts") or {}).get("accepted"),
        "nodes": nodes,
        "other_throttled_share": round(throttled / max(1, ok + throttled), 4),
        "other_requests": ok + throttled,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shared_load", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=400.0, help="the account's bucket, requests/s (400)")
    parser.add_argument("--burst", type=int, default=40, help="the bucket's burst (40)")
    parser.add_argument("--other", type=float, default=200.0, help="the other user's load, requests/s (200)")
    parser.add_argument("--latency", type=int, default=20, help="one-way latency, ms (20)")
    parser.add_argument("--runs", type=int, default=2, help="runs (2)")
    parser.add_argument("--max-rate", type=float, default=None, help="our client's max_rate (none)")
    args = parser.parse_args(argv)
    if not 0 < args.other < args.rate:
        parser.error("--other must be above 0 and under --rate (without other load, run the control suite)")
    client_core, server_core = cores()
    for _ in range(args.runs):
        print(json.dumps(one_run(args, client_core, server_core)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
