"""What the CLI shows: live progress on stderr, results on stdout (a table, one JSON document, or JSON lines).

rich is optional (the ``cli`` extra): without it, or when stderr is not a terminal, progress is one plain line
every few seconds and the summary is plain text. Nothing but results ever goes to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .. import BulkReport, NodeOutcome, OutcomeStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .. import ClientStats

__all__ = ["Progress", "make_progress", "print_dry_run", "print_report", "print_states", "showing", "write_jsonl"]

_WORDS = {"deallocate": ("deallocating", "deallocated"), "start": ("starting", "started")}
_PLAIN_EVERY = 3.0  # seconds between plain progress lines
_TICK = 0.25  # seconds between refreshes of the counters the display reads from the client's stats


class Progress(Protocol):
    """Receives outcomes and totals as a run goes; ``close`` leaves the terminal clean."""

    def add_total(self, count: int) -> None:
        """More nodes are known (a pool's listing came in)."""

    def outcome(self, outcome: NodeOutcome) -> None:
        """One node ended."""

    def tick(self) -> None:
        """Time passed: refresh what comes from the client's counters (called a few times a second)."""

    def close(self) -> None:
        """Stop drawing."""


class _Counts:
    """What both displays show.

    With ``wait`` a run has two phases per node: its request is answered (accepted, or ended otherwise), then an
    accepted node is seen where it was going (``deallocated``, ``started``); both are counted.
    """

    def __init__(self, stats: ClientStats, total: int | None, *, wait: bool, verb: str = "deallocate") -> None:
        self.stats = stats
        self.total = total
        self.wait = wait
        self.doing, self.done_word = _WORDS.get(verb, (f"{verb}ing", f"{verb}ed"))
        # The client may have run before (the demo runs twice): this display counts from here.
        self._before = (stats.accepted, stats.throttled, stats.retries)
        self.done = 0
        self.waited = 0  # with wait: outcomes of accepted nodes (deallocated, or timed out waiting)
        self.by_status: Counter[str] = Counter()
        self.started = time.monotonic()

    def add_total(self, count: int) -> None:
        self.total = (self.total or 0) + count

    def outcome(self, outcome: NodeOutcome) -> None:
        self.done += 1
        self.by_status[outcome.status.value] += 1
        if self.wait and outcome.result is not None:
            self.waited += 1

    @property
    def accepted(self) -> int:
        """Requests of this run the service accepted."""
        return self.stats.accepted - self._before[0]

    @property
    def throttled(self) -> int:
        """Throttled answers during this run."""
        return self.stats.throttled - self._before[1]

    @property
    def retries(self) -> int:
        """Retries during this run."""
        return self.stats.retries - self._before[2]

    @property
    def answered(self) -> int:
        """Nodes whose request is over (without wait, the nodes done)."""
        if not self.wait:
            return self.done
        return self.done - self.waited + self.accepted

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        answered = self.answered
        rate = answered / elapsed
        eta = ""
        if self.total and rate > 0 and answered < self.total:
            eta = f", ETA {(self.total - answered) / rate:.0f} s"
        head = f"progress: {answered}{total} nodes done"
        if self.wait:
            head = (
                f"progress: {answered}{total} nodes answered, "
                f"{self.waited} of {self.accepted} accepted {self.done_word}"
            )
        return (
            f"{head}, {rate:.0f}/s, throttled {self.throttled}, retried {self.retries}, "
            f"elapsed {elapsed:.1f} s{eta}{self.condition()}"
        )

    def condition(self) -> str:
        """``, service failing, probing`` while the circuit breaker holds requests."""
        return ", service failing, probing" if self.stats.traffic == "failing" else ""


class PlainProgress(_Counts):
    """One line on stderr every few seconds, no control characters (for logs and CI)."""

    def __init__(
        self, stats: ClientStats, total: int | None, stream: TextIO, *, wait: bool, verb: str = "deallocate"
    ) -> None:
        super().__init__(stats, total, wait=wait, verb=verb)
        self._stream = stream
        self._last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= _PLAIN_EVERY:
            self._last = now
            print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        print(self.line(), file=self._stream, flush=True)


class RichProgress(_Counts):
    """A live bar with done/total, rate, throttled and retried counts, and the ETA; a second bar with wait."""

    def __init__(
        self, stats: ClientStats, total: int | None, stream: TextIO, *, wait: bool, verb: str = "deallocate"
    ) -> None:
        super().__init__(stats, total, wait=wait, verb=verb)
        from rich.console import Console  # noqa: PLC0415 (optional dependency, only on a terminal)
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # Sized for an 80-column terminal: the bar takes what the counters leave (the summary gives the elapsed time).
        self._bar = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
            expand=True,
        )
        self._task = self._bar.add_task(self.doing, total=total, info=self._info())
        self._waiting = self._bar.add_task(self.done_word, total=None, info="", visible=False) if wait else None
        self._bar.start()

    def _info(self) -> str:
        if self.stats.traffic == "failing":
            return "service failing, probing"
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{self.answered / elapsed:>5.0f}/s throttled {self.throttled} retried {self.retries}"

    def add_total(self, count: int) -> None:
        super().add_total(count)
        self._bar.update(self._task, total=self.total)

    def tick(self) -> None:
        # Outcomes only count (the base class); drawing happens here, a few times a second, not once per node.
        self._bar.update(self._task, completed=self.answered, info=self._info())
        if self._waiting is not None and self.accepted:
            self._bar.update(self._waiting, completed=self.waited, total=self.accepted, visible=True)

    def close(self) -> None:
        self.tick()
        self._bar.stop()


class NoProgress:
    """For ``--quiet``."""

    def add_total(self, count: int) -> None:
        """Ignore."""

    def outcome(self, outcome: NodeOutcome) -> None:
        """Ignore."""

    def tick(self) -> None:
        """Ignore."""

    def close(self) -> None:
        """Ignore."""


def make_progress(
    stats: ClientStats,
    total: int | None,
    *,
    quiet: bool,
    wait: bool = False,
    stream: TextIO | None = None,
    verb: str = "deallocate",
) -> Progress:
    """The right progress display for where stderr goes (``verb``: what the run does to nodes)."""
    stream = stream or sys.stderr
    if quiet:
        return NoProgress()
    if stream.isatty():
        try:
            return RichProgress(stats, total, stream, wait=wait, verb=verb)
        except ImportError:
            pass
    return PlainProgress(stats, total, stream, wait=wait, verb=verb)


@contextlib.asynccontextmanager
async def showing(progress: Progress) -> AsyncIterator[Progress]:
    """Refresh ``progress`` a few times a second while the block runs, and close it however the block ends.

    The ticks matter: a wait phase can go minutes without an outcome, and the display must still move.
    """

    async def ticker() -> None:
        while True:
            await asyncio.sleep(_TICK)
            progress.tick()

    task = asyncio.create_task(ticker())
    try:
        yield progress
    finally:
        task.cancel()
        await asyncio.wait([task])  # never raises: a cancellation of the caller still propagates
        progress.close()


def write_jsonl(outcome: NodeOutcome, stream: TextIO | None = None) -> None:
    """One outcome as one JSON line on stdout, flushed at once."""
    out = stream or sys.stdout
    out.write(json.dumps(outcome.to_dict()) + "\n")
    out.flush()


def _summary_rows(report: BulkReport) -> list[tuple[str, str]]:
    rows = [(status, str(count)) for status, count in report.counts.items() if count]
    rows.append(("nodes", str(len(report.outcomes))))
    rows.append(("requests", str(report.requests)))
    rows.append(("retries", str(report.retries)))
    rows.append(("throttled", str(report.throttled)))
    if report.outages:
        rows.append(("outages", f"{report.outages} ({report.probes} probes)"))
    rows.append(("elapsed", f"{report.elapsed:.1f} s"))
    rate = report.requests / report.elapsed if report.elapsed > 0 else 0.0
    rows.append(("requests/s", f"{rate:.0f}"))
    return rows


def print_report(
    report: BulkReport,
    *,
    output: str,
    interrupted: bool = False,
    stream: TextIO | None = None,
    title: str = "Summary",
) -> None:
    """The end of a run: a summary table, or the JSON report (``json``), or nothing more (``jsonl``)."""
    out = stream or sys.stdout
    if output == "json":
        document: dict[str, Any] = report.to_dict()
        document["interrupted"] = interrupted
        out.write(json.dumps(document, indent=2) + "\n")
        return
    if output == "jsonl":
        # Outcomes already went out line by line; the summary goes to stderr so stdout stays pure JSON lines.
        print(json.dumps({"summary": report.summary(), "interrupted": interrupted}), file=sys.stderr)
        return
    title = "Interrupted: partial summary" if interrupted else title
    failures = report.failures_by_code
    problems = [o for o in report.outcomes if o.status in {OutcomeStatus.FAILED, OutcomeStatus.TIMED_OUT}]
    try:
        _rich_summary(report, title, failures, problems, out)
    except ImportError:
        _plain_summary(report, title, failures, problems, out)


def _plain_summary(
    report: BulkReport, title: str, failures: dict[str, int], problems: list[NodeOutcome], out: TextIO
) -> None:
    print(title, file=out)
    for name, value in _summary_rows(report):
        print(f"  {name:<14} {value}", file=out)
    if failures:
        print("Failures by error code", file=out)
        for code, count in failures.items():
            print(f"  {code:<40} {count}", file=out)
    for pool, error in report.pool_errors.items():
        print(f"pool {pool}: {error}", file=out)
    for outcome in problems[:20]:
        print(f"  {outcome.status.value:<10} {outcome.pool_id}/{outcome.node_id}: {outcome.error}", file=out)
    if len(problems) > 20:  # noqa: PLR2004 (a screenful)
        print(f"  ... and {len(problems) - 20} more (use --output json for all)", file=out)


def _rich_summary(
    report: BulkReport, title: str, failures: dict[str, int], problems: list[NodeOutcome], out: TextIO
) -> None:
    from rich.console import Console  # noqa: PLC0415 (optional dependency)
    from rich.table import Table  # noqa: PLC0415

    console = Console(file=out, highlight=False)
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in _summary_rows(report):
        table.add_row(name, value)
    console.print(table)
    if failures:
        by_code = Table(title="Failures by error code")
        by_code.add_column("code")
        by_code.add_column("nodes", justify="right")
        for code, count in failures.items():
            by_code.add_row(code, str(count))
        console.print(by_code)
    for pool, error in report.pool_errors.items():
        console.print(f"pool {pool}: {error}", markup=False)
    for outcome in problems[:20]:
        line = f"  {outcome.status.value:<10} {outcome.pool_id}/{outcome.node_id}: {outcome.error}"
        console.print(line, markup=False)
    if len(problems) > 20:  # noqa: PLR2004 (a screenful)
        console.print(f"  ... and {len(problems) - 20} more (use --output json for all)", markup=False)


def print_dry_run(planned: list[dict[str, Any]], *, verb: str, output: str, stream: TextIO | None = None) -> None:
    """What a dry run found: each node with ``would_<verb>`` or ``would_skip`` and its state; nothing was sent.

    Args:
        planned: One dict per node: ``pool_id``, ``node_id``, ``status`` and ``state``.
        verb: The action (``deallocate``).
        output: ``table``, ``json`` or ``jsonl``.
        stream: Where to write (stdout).
    """
    out = stream or sys.stdout
    act = f"would_{verb}"
    past = f"{verb}d" if verb.endswith("e") else f"{verb}ed"
    acted = [p for p in planned if p["status"] == act]
    if output == "jsonl":
        for line in planned:
            out.write(json.dumps({**line, "dry_run": True}) + "\n")
        out.flush()
        return
    if output == "json":
        document = {"dry_run": True, act: acted, "would_skip": [p for p in planned if p["status"] != act]}
        out.write(json.dumps(document, indent=2) + "\n")
        return
    for line in planned:
        word = f"would {verb}" if line["status"] == act else "would skip"
        print(f"{word:<16} {line['pool_id']}/{line['node_id']} ({line['state']})", file=out)
    print(
        f"dry run: {len(acted)} would be {past}, {len(planned) - len(acted)} skipped; nothing was changed",
        file=out,
    )


#: States a node is billed for compute in (a deallocated node is not).
_NOT_BILLED = frozenset({"deallocated"})


def print_states(counts: dict[str, dict[str, int]], *, output: str, stream: TextIO | None = None) -> None:
    """``batch-dealloc nodes``: per pool, the nodes by state (json: one document), and how many are billed."""
    out = stream or sys.stdout
    if output == "json":
        document = {pool: {"states": by_state, "nodes": sum(by_state.values())} for pool, by_state in counts.items()}
        out.write(json.dumps(document, indent=2) + "\n")
        return
    for pool, by_state in counts.items():
        total = sum(by_state.values())
        billed = sum(n for state, n in by_state.items() if state not in _NOT_BILLED)
        print(f"{pool}: {total} nodes, {billed} not deallocated", file=out)
        for state, count in by_state.items():
            print(f"  {state:<20} {count}", file=out)
