"""``batch-dealloc``: deallocate nodes from the terminal, run the local emulator, or watch the demo.

Exit codes: 0 every eligible node done; 1 some nodes failed, timed out or were not attempted (or a pool could
not be listed); 2 usage error; 3 authentication or authorization failure; 130 interrupted (Ctrl-C prints the
partial summary and the outcomes so far).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._client import BatchDeallocClient
from .._errors import AuthenticationError, BatchDeallocError, CredentialError
from .._outcomes import BulkReport, NodeOutcome, OutcomeStatus
from .._request import MAX_SERVICE_TIMEOUT
from .._retry import RetryPolicy
from ._auth import UsageError, credential_from
from ._output import make_progress, print_report, showing, write_jsonl

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .._auth import AsyncTokenCredentialLike, SharedKeyCredential

__all__ = ["EXIT_AUTH", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_INTERRUPTED: Final = 130

_OPTIONS: Final = ("requeue", "terminate", "taskcompletion")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _service_timeout(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SERVICE_TIMEOUT:
        raise argparse.ArgumentTypeError(f"--timeout is 1..{MAX_SERVICE_TIMEOUT} seconds (the service's timeOut)")
    return value


def _states(text: str) -> tuple[str, ...]:
    states = tuple(s.strip() for s in text.split(",") if s.strip())
    if not states or not all(s.isalpha() and s.islower() for s in states):
        raise argparse.ArgumentTypeError(f"--state takes node states such as idle,running; got {text!r}")
    return states


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batch-dealloc``."""
    parser = argparse.ArgumentParser(
        prog="batch-dealloc",
        description="Deallocate Azure Batch compute nodes: one, many, or every eligible node of whole pools.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dealloc = commands.add_parser(
        "deallocate",
        help="deallocate nodes",
        description="Deallocate nodes of a pool (--node, --nodes-file) or every eligible node of pools (--all).",
    )
    dealloc.add_argument("--endpoint", required=True, help="account URL, e.g. https://acct.westus.batch.azure.com")
    dealloc.add_argument("--pool", action="append", required=True, help="pool id (repeat with --all)")
    target = dealloc.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every node of the pools in --state")
    target.add_argument("--node", action="append", help="a node id (repeatable)")
    target.add_argument("--nodes-file", help="file of node ids, one per line ('-' for stdin)")
    dealloc.add_argument(
        "--state", type=_states, default=("idle", "running"), help="with --all: eligible states (default idle,running)"
    )
    dealloc.add_argument("--option", choices=_OPTIONS, help="what to do with running tasks (service default: requeue)")
    dealloc.add_argument("--wait", action="store_true", help="wait until the nodes are deallocated")
    dealloc.add_argument("--max-concurrency", type=_positive_int, default=64, help="requests in flight (default 64)")
    dealloc.add_argument(
        "--fixed-concurrency", action="store_true", help="do not adapt to throttling (keep --max-concurrency)"
    )
    dealloc.add_argument("--timeout", type=_service_timeout, help="service timeOut per request, 1..30 s")
    dealloc.add_argument("--deadline", type=_positive_float, help="seconds for the whole run")
    dealloc.add_argument("--dry-run", action="store_true", help="list what would be done; deallocate nothing")
    dealloc.add_argument("--output", choices=("table", "json", "jsonl"), default="table", help="result format")
    dealloc.add_argument("--quiet", action="store_true", help="no progress on stderr")
    auth = dealloc.add_argument_group("authentication (default: from the environment)")
    auth.add_argument("--account-name", help="Batch account name for Shared Key (or BATCH_ACCOUNT_NAME)")
    auth.add_argument("--account-key", help=argparse.SUPPRESS)  # works, with a warning; prefer BATCH_ACCOUNT_KEY
    auth.add_argument("--managed-identity", action="store_true", help="use the managed identity (AZURE_CLIENT_ID)")

    emulator = commands.add_parser(
        "emulator", help="run the local Batch emulator", description="Run the local Batch emulator in the foreground."
    )
    from ..emulator import add_arguments  # noqa: PLC0415 (one definition of the options, the emulator's own)

    add_arguments(emulator)

    demo = commands.add_parser(
        "demo",
        help="watch a whole run against the built-in emulator",
        description="Start the emulator in process (throttling, faults, mixed states) and deallocate every pool.",
    )
    demo.add_argument("--nodes", type=_positive_int, default=2400, help="nodes in all (default 2400)")
    demo.add_argument("--pools", type=_positive_int, default=3, help="pools (default 3)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--output", choices=("table", "json", "jsonl"), default="table")
    demo.add_argument("--quiet", action="store_true")
    return parser


def _read_ids(path: str) -> list[str]:
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read --nodes-file {path}: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def exit_code(report: BulkReport) -> int:
    """0, 1 or 3 for a finished (or interrupted) run's report."""
    errors = [o.error for o in report.outcomes if o.error is not None and not o.ok]
    errors.extend(report.pool_errors.values())
    if any(isinstance(e, AuthenticationError | CredentialError) for e in errors):
        return EXIT_AUTH
    return EXIT_OK if report.ok else EXIT_FAILED


class _Run:
    """Collects outcomes (for the summary after Ctrl-C too) and feeds the progress display and jsonl."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.outcomes: list[NodeOutcome] = []
        self.progress_outcome: Callable[[NodeOutcome], None] | None = None

    def on_outcome(self, outcome: NodeOutcome) -> None:
        self.outcomes.append(outcome)
        if self.output == "jsonl":
            write_jsonl(outcome)
        if self.progress_outcome is not None:
            self.progress_outcome(outcome)


async def _deallocate(
    args: argparse.Namespace, credential: SharedKeyCredential | AsyncTokenCredentialLike, run: _Run
) -> BulkReport:
    node_ids = args.node or (_read_ids(args.nodes_file) if args.nodes_file else None)
    if node_ids is not None and len(args.pool) != 1:
        raise UsageError("--node and --nodes-file take exactly one --pool")
    async with BatchDeallocClient(
        args.endpoint,
        credential,
        max_concurrency=args.max_concurrency,
        adaptive=not args.fixed_concurrency,
        retry=RetryPolicy(),
    ) as client:
        if args.dry_run:
            return await _dry_run(client, args, node_ids, run)
        total = len(node_ids) if node_ids is not None else None
        async with showing(make_progress(client.stats, total, quiet=args.quiet, wait=args.wait)) as progress:
            run.progress_outcome = progress.outcome
            if node_ids is not None:
                return await client.deallocate_nodes(
                    args.pool[0],
                    node_ids,
                    option=args.option,
                    wait=args.wait,
                    deadline=args.deadline,
                    on_outcome=run.on_outcome,
                    timeout=args.timeout,
                )
            return await client.deallocate_pools(
                args.pool,
                states=args.state,
                option=args.option,
                wait=args.wait,
                deadline=args.deadline,
                on_outcome=run.on_outcome,
                on_listed=lambda _p, n, others: progress.add_total(n + others),
                timeout=args.timeout,
            )


async def _dry_run(
    client: BatchDeallocClient, args: argparse.Namespace, node_ids: list[str] | None, run: _Run
) -> BulkReport:
    """List states only: what would be deallocated is 'accepted'-to-be, shown as status not_attempted."""
    report = BulkReport()
    wanted = set(args.state) if node_ids is None else {"idle", "running"}
    for pool in args.pool:
        seen: dict[str, str | None] = {}
        async for node in client.list_nodes(pool):
            seen[node.id] = node.state
        ids = node_ids if node_ids is not None else list(seen)
        for node_id in ids:
            state = seen.get(node_id)
            status = OutcomeStatus.NOT_ATTEMPTED if state in wanted else OutcomeStatus.SKIPPED
            outcome = NodeOutcome(pool_id=pool, node_id=node_id, status=status, state=state or "not found")
            report.outcomes.append(outcome)
            run.on_outcome(outcome)
    report.requests = client.stats.requests
    would = sum(o.status is OutcomeStatus.NOT_ATTEMPTED for o in report.outcomes)
    if args.output == "table":
        for outcome in report.outcomes:
            verb = "would deallocate" if outcome.status is OutcomeStatus.NOT_ATTEMPTED else "would skip"
            print(f"{verb:<16} {outcome.pool_id}/{outcome.node_id} ({outcome.state})")
        print(f"dry run: {would} would be deallocated, {len(report.outcomes) - would} skipped; nothing was changed")
    elif args.output == "json":
        import json  # noqa: PLC0415

        document = {
            "dry_run": True,
            "would_deallocate": [o.to_dict() for o in report.outcomes if o.status is OutcomeStatus.NOT_ATTEMPTED],
            "would_skip": [o.to_dict() for o in report.outcomes if o.status is OutcomeStatus.SKIPPED],
        }
        print(json.dumps(document, indent=2))
    return report


async def _with_interrupt(work: Awaitable[int]) -> int:
    """Run ``work``; SIGINT/SIGTERM cancel it (the caller prints the partial summary)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _run_deallocate(args: argparse.Namespace) -> int:
    credential = credential_from(args)
    run = _Run(args.output)
    state: dict[str, BulkReport] = {}

    async def work() -> int:
        report = await _deallocate(args, credential, run)
        state["report"] = report
        return EXIT_OK

    try:
        asyncio.run(_with_interrupt(work()))
    except asyncio.CancelledError:
        partial = BulkReport(outcomes=run.outcomes)
        print_report(partial, output=args.output, interrupted=True)
        return EXIT_INTERRUPTED
    report = state["report"]
    if args.dry_run:
        return EXIT_OK
    print_report(report, output=args.output)
    return exit_code(report)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "deallocate":
        return _run_deallocate(args)
    from ._emulator import run_demo, run_emulator  # noqa: PLC0415 (the emulator loads only when asked for)

    if args.command == "emulator":
        code: int = run_emulator(args)
        return code
    demo_code: int = run_demo(args)
    return demo_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``batch-dealloc``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    code = EXIT_FAILED
    try:
        code = _dispatch(args)
    except (UsageError, ValueError) as exc:
        print(f"batch-dealloc: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except (AuthenticationError, CredentialError) as exc:
        print(f"batch-dealloc: authentication failed: {exc}", file=sys.stderr)
        code = EXIT_AUTH
    except BatchDeallocError as exc:
        print(f"batch-dealloc: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    else:
        return code
    if args.debug:
        traceback.print_exc()
    return code
