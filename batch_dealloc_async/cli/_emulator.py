"""``batch-dealloc emulator`` and ``batch-dealloc demo``: the parts of the CLI that need the emulator."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

from .. import BatchDeallocClient, BulkReport, NodeOutcome, OutcomeStatus
from ..emulator import BatchEmulator, EmulatorConfig, FaultConfig, config_from, serve
from ._exit import EXIT_INTERRUPTED, EXIT_OK, exit_code
from ._output import make_progress, print_report, showing, write_jsonl

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ._output import Progress

__all__ = ["demo_config", "run_demo", "run_emulator"]


def run_emulator(args: argparse.Namespace) -> int:
    """Serve in the foreground until Ctrl-C (the options are the emulator's own: ``add_arguments``)."""
    config = config_from(args)  # a ValueError is a usage error, reported by main()
    try:
        asyncio.run(serve(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"batch-dealloc: error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def demo_config(nodes: int, pools: int, seed: int) -> EmulatorConfig:
    """Realistic pools: mixed states, an account throttled at 600 requests/second, a few faults."""
    sizes = [nodes // pools + (1 if i < nodes % pools else 0) for i in range(pools)]
    return EmulatorConfig(
        pools={f"demo-pool-{i + 1}": size for i, size in enumerate(sizes)},
        seed=seed,
        deallocate_delay=2.0,
        throttle_rps=600.0,
        throttle_burst=40,
        faults=FaultConfig.mixed(0.02, reset_after=0.004),
    )


class _Demo:
    """The demo's two runs on one client, and every outcome seen (for the summary after a Ctrl-C)."""

    def __init__(self, args: argparse.Namespace, config: EmulatorConfig) -> None:
        self.args = args
        self.config = config
        self.outcomes: list[NodeOutcome] = []
        self.reports: dict[str, BulkReport] = {}

    def recorder(self, progress: Progress) -> Callable[[NodeOutcome], None]:
        def on_outcome(outcome: NodeOutcome) -> None:
            self.outcomes.append(outcome)
            if self.args.output == "jsonl":
                write_jsonl(outcome)
            progress.outcome(outcome)

        return on_outcome

    def banner(self, endpoint: str) -> None:
        if self.args.output != "table":
            return
        sizes = ", ".join(f"{p} ({n} nodes)" for p, n in self.config.pools.items())
        width = min(shutil.get_terminal_size().columns, 100)
        message = (
            f"Emulator at {endpoint}: {sizes}; throttled at {self.config.throttle_rps:.0f} requests/s, "
            "2% injected faults"
        )
        print(textwrap.fill(message, width), file=sys.stderr)

    async def deallocate(self, client: BatchDeallocClient) -> BulkReport:
        progress = make_progress(client.stats, None, quiet=self.args.quiet, wait=True)
        async with showing(progress):
            report = await client.deallocate_pools(
                list(self.config.pools),
                wait=True,
                deadline=120,
                on_outcome=self.recorder(progress),
                on_listed=lambda _p, n, others: progress.add_total(n + others),
            )
        self.reports["deallocate"] = report
        if self.args.output == "table":
            print_report(report, output="table", title="Deallocated")
        return report

    async def start_again(self, client: BatchDeallocClient, deallocated: BulkReport) -> None:
        by_pool: dict[str, list[str]] = {}
        for outcome in deallocated.outcomes:
            if outcome.status is OutcomeStatus.DEALLOCATED:
                by_pool.setdefault(outcome.pool_id, []).append(outcome.node_id)
        total = sum(len(ids) for ids in by_pool.values())
        progress = make_progress(client.stats, total, quiet=self.args.quiet, wait=True, verb="start")
        on_outcome = self.recorder(progress)
        async with showing(progress), asyncio.TaskGroup() as group:
            runs = [
                group.create_task(client.start_nodes(pool, ids, wait=True, deadline=120, on_outcome=on_outcome))
                for pool, ids in by_pool.items()
            ]
        report = BulkReport.merge(
            [run.result() for run in runs], elapsed=max((r.result().elapsed for r in runs), default=0)
        )
        self.reports["start"] = report
        if self.args.output == "table":
            print_report(report, output="table", title="Started again")

    async def run(self) -> None:
        async with BatchEmulator(self.config) as emu:
            self.banner(emu.endpoint)
            async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
                deallocated = await self.deallocate(client)
                if not self.args.no_start:
                    await self.start_again(client, deallocated)


def run_demo(args: argparse.Namespace) -> int:
    """Deallocate every eligible node of the emulator's pools, then (unless ``--no-start``) start them again.

    The emulator runs in process; each run waits for its nodes and shows its progress and summary.
    """
    demo = _Demo(args, demo_config(args.nodes, args.pools, args.seed))
    try:
        asyncio.run(demo.run())
    except KeyboardInterrupt:
        print_report(BulkReport(outcomes=demo.outcomes), output=args.output, interrupted=True)
        return EXIT_INTERRUPTED
    if args.output == "json":
        print(json.dumps({action: report.to_dict() for action, report in demo.reports.items()}, indent=2))
    elif args.output == "jsonl":
        for report in demo.reports.values():
            print_report(report, output="jsonl")
    return max((exit_code(report) for report in demo.reports.values()), default=EXIT_OK)
