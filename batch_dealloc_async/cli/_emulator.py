"""``batch-dealloc emulator`` and ``batch-dealloc demo``: the parts of the CLI that need the emulator."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

from .. import BatchDeallocClient, BulkReport, NodeOutcome
from ..emulator import BatchEmulator, EmulatorConfig, FaultConfig, config_from, serve
from ._exit import EXIT_INTERRUPTED, exit_code
from ._output import make_progress, print_report, showing, write_jsonl

if TYPE_CHECKING:
    import argparse

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


def run_demo(args: argparse.Namespace) -> int:
    """Start the emulator in process and deallocate every eligible node of every pool, waiting for them."""
    config = demo_config(args.nodes, args.pools, args.seed)
    outcomes: list[NodeOutcome] = []

    async def demo() -> BulkReport:
        async with BatchEmulator(config) as emu:
            if args.output == "table":
                sizes = ", ".join(f"{p} ({n} nodes)" for p, n in config.pools.items())
                width = min(shutil.get_terminal_size().columns, 100)
                message = (
                    f"Emulator at {emu.endpoint}: {sizes}; throttled at {config.throttle_rps:.0f} "
                    "requests/s, 2% injected faults"
                )
                print(textwrap.fill(message, width), file=sys.stderr)
            async with (
                BatchDeallocClient(emu.endpoint, emu.credential()) as client,
                showing(make_progress(client.stats, None, quiet=args.quiet, wait=True)) as progress,
            ):

                def on_outcome(outcome: NodeOutcome) -> None:
                    outcomes.append(outcome)
                    if args.output == "jsonl":
                        write_jsonl(outcome)
                    progress.outcome(outcome)

                return await client.deallocate_pools(
                    list(config.pools),
                    wait=True,
                    deadline=120,
                    on_outcome=on_outcome,
                    on_listed=lambda _p, n, others: progress.add_total(n + others),
                )

    try:
        report = asyncio.run(demo())
    except KeyboardInterrupt:
        print_report(BulkReport(outcomes=outcomes), output=args.output, interrupted=True)
        return EXIT_INTERRUPTED
    print_report(report, output=args.output)
    return exit_code(report)
