"""What the CLI shows: live progress on stderr, results on stdout (a table, one JSON document, or JSON lines).

rich is optional (the ``cli`` extra): without it, or when stderr is not a terminal, progress is one plain line
every few seconds and the summary is plain text. Nothing but results ever goes to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .._outcomes import BulkReport, NodeOutcome, OutcomeStatus

if TYPE_CHECKING:
    from .._outcomes import ClientStats

__all__ = ["Progress", "make_progress", "print_report", "write_jsonl"]

_PLAIN_EVERY = 3.0  # seconds between plain progress lines


class Progress(Protocol):
    """Receives outcomes and totals as a run goes; ``close`` leaves the terminal clean."""

    def add_total(self, count: int) -> None:
        """More nodes are known (a pool's listing came in)."""

    def outcome(self, outcome: NodeOutcome) -> None:
        """One node ended."""

    def close(self) -> None:
        """Stop drawing."""


class _Counts:
    def __init__(self, stats: ClientStats, total: int | None) -> None:
        self.stats = stats
        self.total = total
        self.done = 0
        self.by_status: Counter[str] = Counter()
        self.started = time.monotonic()

    def add_total(self, count: int) -> None:
        self.total = (self.total or 0) + count

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        rate = self.done / elapsed
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", ETA {(self.total - self.done) / rate:.0f} s"
        return (
            f"progress: {self.done}{total} nodes done, {rate:.0f}/s, "
            f"throttled {self.stats.throttled}, retried {self.stats.retries}, elapsed {elapsed:.1f} s{eta}"
        )


class PlainProgress(_Counts):
    """One line on stderr every few seconds, no control characters (for logs and CI)."""

    def __init__(self, stats: ClientStats, total: int | None, stream: TextIO) -> None:
        super().__init__(stats, total)
        self._stream = stream
        self._last = time.monotonic()

    def outcome(self, outcome: NodeOutcome) -> None:
        self.done += 1
        self.by_status[outcome.status.value] += 1
        now = time.monotonic()
        if now - self._last >= _PLAIN_EVERY:
            self._last = now
            print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        print(self.line(), file=self._stream, flush=True)


class RichProgress(_Counts):
    """A live bar with done/total, rate, throttled and retried counts, and the ETA."""

    def __init__(self, stats: ClientStats, total: int | None, stream: TextIO) -> None:
        super().__init__(stats, total)
        from rich.console import Console  # noqa: PLC0415 (optional dependency, only on a terminal)
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]deallocating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>6.0f}/s"),
            TextColumn("throttled {task.fields[throttled]} retried {task.fields[retried]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task = self._bar.add_task("deallocate", total=total, rate=0.0, throttled=0, retried=0)
        self._bar.start()

    def add_total(self, count: int) -> None:
        super().add_total(count)
        self._bar.update(self._task, total=self.total)

    def outcome(self, outcome: NodeOutcome) -> None:
        self.done += 1
        self.by_status[outcome.status.value] += 1
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._bar.update(
            self._task,
            completed=self.done,
            rate=self.done / elapsed,
            throttled=self.stats.throttled,
            retried=self.stats.retries,
        )

    def close(self) -> None:
        self._bar.stop()


class NoProgress:
    """For ``--quiet``."""

    def add_total(self, count: int) -> None:
        """Ignore."""

    def outcome(self, outcome: NodeOutcome) -> None:
        """Ignore."""

    def close(self) -> None:
        """Ignore."""


def make_progress(stats: ClientStats, total: int | None, *, quiet: bool, stream: TextIO | None = None) -> Progress:
    """The right progress display for where stderr goes."""
    stream = stream or sys.stderr
    if quiet:
        return NoProgress()
    if stream.isatty():
        try:
            return RichProgress(stats, total, stream)
        except ImportError:
            pass
    return PlainProgress(stats, total, stream)


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
    rows.append(("elapsed", f"{report.elapsed:.1f} s"))
    rate = report.requests / report.elapsed if report.elapsed > 0 else 0.0
    rows.append(("requests/s", f"{rate:.0f}"))
    return rows


def print_report(report: BulkReport, *, output: str, interrupted: bool = False, stream: TextIO | None = None) -> None:
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
    title = "Interrupted: partial summary" if interrupted else "Summary"
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
