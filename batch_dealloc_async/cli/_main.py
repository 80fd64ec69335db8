"""The ``batch-dealloc`` command line: its parser, and the ``deallocate``, ``start`` and ``nodes`` commands.

Only the package's public API is used here: the command is a user of the library like any other.
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
from typing import TYPE_CHECKING, Any

from .. import (
    DEALLOCATE_STATES,
    START_STATES,
    AuthenticationError,
    BatchDeallocClient,
    BatchDeallocError,
    BatchNodeDeallocateOption,
    BulkReport,
    CredentialError,
    NodeOutcome,
)
from ..emulator import add_arguments as add_emulator_arguments
from ._auth import UsageError, credential_from
from ._exit import EXIT_AUTH, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_code
from ._output import make_progress, print_dry_run, print_report, print_states, showing, write_jsonl
from ._telemetry import add_telemetry_arguments, configure_logging, exporting, logs_json

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .. import AsyncTokenCredentialLike, SharedKeyCredential

__all__ = ["build_parser", "main"]

# The service's options, the deprecated one left out (the library still takes it, with a warning).
_OPTIONS = tuple(o.value for o in BatchNodeDeallocateOption if o is not BatchNodeDeallocateOption.RETAINED_DATA)
_PAST = {"deallocate": "deallocated", "start": "started"}
_ELIGIBLE = {"deallocate": DEALLOCATE_STATES, "start": START_STATES}


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


def _states(text: str) -> tuple[str, ...]:
    states = tuple(s.strip() for s in text.split(",") if s.strip())
    if not states or not all(s.isalpha() and s.islower() for s in states):
        raise argparse.ArgumentTypeError(f"--state takes node states such as idle,running; got {text!r}")
    return states


def _add_account_arguments(command: argparse.ArgumentParser) -> None:
    """Where the account is, and how to sign in (from the environment by default)."""
    command.add_argument("--endpoint", required=True, help="account URL, e.g. https://acct.westus.batch.azure.com")
    auth = command.add_argument_group("authentication (default: from the environment)")
    auth.add_argument("--account-name", help="Batch account name for Shared Key (or BATCH_ACCOUNT_NAME)")
    auth.add_argument("--account-key", help=argparse.SUPPRESS)  # works, with a warning; prefer BATCH_ACCOUNT_KEY
    auth.add_argument("--managed-identity", action="store_true", help="use the managed identity (AZURE_CLIENT_ID)")


def _add_run_arguments(command: argparse.ArgumentParser, verb: str) -> None:
    """The options of a bulk run (``deallocate``, ``start``); the library checks the values it owns."""
    _add_account_arguments(command)
    command.add_argument("--pool", action="append", required=True, help="pool id (repeat with --all)")
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every node of the pools in --state")
    target.add_argument("--node", action="append", help="a node id (repeatable)")
    target.add_argument("--nodes-file", help="file of node ids, one per line ('-' for stdin)")
    command.add_argument(
        "--state", type=_states, help="with --all: eligible states (default: those the service allows)"
    )
    command.add_argument("--wait", action="store_true", help=f"wait until the nodes are {_PAST[verb]}")
    command.add_argument("--max-concurrency", type=_positive_int, help="requests in flight (default: the library's)")
    command.add_argument(
        "--fixed-concurrency", action="store_true", help="do not adapt to throttling (keep --max-concurrency)"
    )
    command.add_argument(
        "--max-rate",
        type=_positive_float,
        help="at most this many requests per second (leave room in a quota shared with other work)",
    )
    command.add_argument("--timeout", type=_positive_int, help="service timeOut per request, 1..30 s")
    command.add_argument("--deadline", type=_positive_float, help="seconds for the whole run")
    command.add_argument("--dry-run", action="store_true", help=f"list what would be {_PAST[verb]}; change nothing")
    command.add_argument("--output", choices=("table", "json", "jsonl"), default="table", help="result format")
    command.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batch-dealloc``."""
    parser = argparse.ArgumentParser(
        prog="batch-dealloc",
        description="Deallocate (and start again) Azure Batch compute nodes: one, many, or whole pools.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    add_telemetry_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dealloc = commands.add_parser(
        "deallocate",
        help="deallocate nodes",
        description="Deallocate nodes of a pool (--node, --nodes-file) or every eligible node of pools (--all).",
    )
    _add_run_arguments(dealloc, "deallocate")
    dealloc.add_argument("--option", choices=_OPTIONS, help="what to do with running tasks (service default: requeue)")

    start = commands.add_parser(
        "start",
        help="start deallocated nodes",
        description="Start deallocated nodes of a pool (--node, --nodes-file) or of whole pools (--all).",
    )
    _add_run_arguments(start, "start")

    nodes = commands.add_parser(
        "nodes",
        help="count a pool's nodes by state",
        description="Count the nodes of pools by state (one paged listing of id and state per pool).",
    )
    _add_account_arguments(nodes)
    nodes.add_argument("--pool", action="append", required=True, help="pool id (repeatable)")
    nodes.add_argument("--output", choices=("table", "json"), default="table", help="result format")

    emulator = commands.add_parser(
        "emulator", help="run the local Batch emulator", description="Run the local Batch emulator in the foreground."
    )
    add_emulator_arguments(emulator)  # one definition of the options: the emulator's own

    demo = commands.add_parser(
        "demo",
        help="watch a whole run against the built-in emulator",
        description=(
            "Start the emulator in process (throttling, faults, mixed states), deallocate every pool, then start "
            "the nodes again."
        ),
    )
    demo.add_argument("--nodes", type=_positive_int, default=2400, help="nodes in all (default 2400)")
    demo.add_argument("--pools", type=_positive_int, default=3, help="pools (default 3)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--output", choices=("table", "json", "jsonl"), default="table")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--no-start", action="store_true", help="stop after deallocating (do not start them again)")
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


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"adaptive": not args.fixed_concurrency}
    if args.max_concurrency is not None:
        options["max_concurrency"] = args.max_concurrency
    if args.max_rate is not None:
        options["max_rate"] = args.max_rate
    return options


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"wait": args.wait, "deadline": args.deadline, "timeout": args.timeout}
    if getattr(args, "option", None) is not None:
        options["option"] = args.option
    return options


async def _act(
    args: argparse.Namespace, credential: SharedKeyCredential | AsyncTokenCredentialLike, run: _Run
) -> BulkReport | None:
    """The run of ``args.command`` (``deallocate`` or ``start``); ``None`` for a dry run (it prints its own result)."""
    verb = args.command
    node_ids = args.node or (_read_ids(args.nodes_file) if args.nodes_file else None)
    if node_ids is not None and len(args.pool) != 1:
        raise UsageError("--node and --nodes-file take exactly one --pool")
    async with BatchDeallocClient(args.endpoint, credential, **_client_options(args)) as client:
        if args.dry_run:
            await _dry_run(client, args, node_ids)
            return None
        total = len(node_ids) if node_ids is not None else None
        quiet = args.quiet or args.log_format == "json"  # stderr carries JSON lines only
        display = make_progress(client.stats, total, quiet=quiet, wait=args.wait, verb=verb)
        async with showing(display) as progress:
            run.progress_outcome = progress.outcome
            options = _run_options(args)
            if node_ids is not None:
                act_on_nodes = client.deallocate_nodes if verb == "deallocate" else client.start_nodes
                return await act_on_nodes(args.pool[0], node_ids, on_outcome=run.on_outcome, **options)
            if args.state is not None:
                options["states"] = args.state
            act_on_pools = client.deallocate_pools if verb == "deallocate" else client.start_pools
            return await act_on_pools(
                args.pool,
                on_outcome=run.on_outcome,
                on_listed=lambda _p, n, others: progress.add_total(n + others),
                **options,
            )


async def _dry_run(client: BatchDeallocClient, args: argparse.Namespace, node_ids: list[str] | None) -> None:
    """List the pools' states only, and print what a run would do: nothing is changed."""
    verb = args.command
    eligible = _ELIGIBLE[verb]
    wanted = set(args.state or eligible) if node_ids is None else eligible
    planned: list[dict[str, Any]] = []
    for pool in args.pool:
        seen: dict[str, str | None] = {}
        async for node in client.list_nodes(pool):
            seen[node.id] = node.state
        for node_id in node_ids if node_ids is not None else list(seen):
            state = seen.get(node_id)
            status = f"would_{verb}" if state in wanted else "would_skip"
            planned.append({"pool_id": pool, "node_id": node_id, "status": status, "state": state or "not found"})
    print_dry_run(planned, verb=verb, output=args.output)


async def _count_states(args: argparse.Namespace, credential: SharedKeyCredential | AsyncTokenCredentialLike) -> int:
    """``batch-dealloc nodes``: the nodes of each pool by state (what is billed, what a run did)."""
    counts: dict[str, dict[str, int]] = {}
    async with BatchDeallocClient(args.endpoint, credential) as client:
        for pool in dict.fromkeys(args.pool):
            by_state: dict[str, int] = {}
            async for node in client.list_nodes(pool):
                state = node.state or "unknown"
                by_state[state] = by_state.get(state, 0) + 1
            counts[pool] = dict(sorted(by_state.items()))
    print_states(counts, output=args.output)
    return EXIT_OK


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


def _run_action(args: argparse.Namespace) -> int:
    credential = credential_from(args)
    run = _Run(args.output)
    state: dict[str, BulkReport | None] = {}

    async def work() -> int:
        state["report"] = await _act(args, credential, run)
        return EXIT_OK

    try:
        asyncio.run(_with_interrupt(work()))
    except asyncio.CancelledError:
        print_report(BulkReport(outcomes=run.outcomes), output=args.output, interrupted=True)
        return EXIT_INTERRUPTED
    report = state["report"]
    if report is None:
        return EXIT_OK  # a dry run
    print_report(report, output=args.output)
    return exit_code(report)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in _PAST:
        return _run_action(args)
    if args.command == "nodes":
        credential = credential_from(args)
        return asyncio.run(_count_states(args, credential))
    from ._emulator import run_demo, run_emulator  # noqa: PLC0415 (the emulator loads only when asked for)

    if args.command == "emulator":
        return run_emulator(args)
    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``batch-dealloc``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        with exporting(args.otel):
            return _dispatch(args)
    except (UsageError, ValueError) as exc:
        _fail(f"error: {exc}", debug=args.debug)
        return EXIT_USAGE
    except (AuthenticationError, CredentialError) as exc:
        _fail(f"authentication failed: {exc}", debug=args.debug)
        return EXIT_AUTH
    except BatchDeallocError as exc:
        _fail(f"error: {exc}", debug=args.debug)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(message: str, *, debug: bool) -> None:
    """The one-line error, and with ``--debug`` the traceback (printed while the exception is being handled)."""
    if logs_json():  # stderr carries JSON lines only: the error is one record more
        logging.getLogger("batch_dealloc_async.cli").error(message, exc_info=debug)
        return
    print(f"batch-dealloc: {message}", file=sys.stderr)
    if debug:
        traceback.print_exc()
