"""The CLI's progress display: what it counts in each phase, and that it moves when no outcome arrives."""

from __future__ import annotations

import asyncio
import io

from batch_dealloc_async import DeallocateResult, NodeOutcome, OutcomeStatus
from batch_dealloc_async._outcomes import ClientStats
from batch_dealloc_async.cli import _output
from batch_dealloc_async.cli._output import PlainProgress, make_progress, showing


def outcome(status: OutcomeStatus, *, accepted: bool = False) -> NodeOutcome:
    result = DeallocateResult(pool_id="p", node_id="n", request_id="r", client_request_id="c") if accepted else None
    return NodeOutcome(pool_id="p", node_id="n", status=status, result=result)


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_without_wait_nodes_done_are_outcomes() -> None:
    stats = ClientStats()
    progress = PlainProgress(stats, 4, NotATerminal(), wait=False)
    progress.outcome(outcome(OutcomeStatus.ACCEPTED, accepted=True))
    progress.outcome(outcome(OutcomeStatus.SKIPPED))
    assert progress.answered == 2
    assert progress.line().startswith("progress: 2/4 nodes done, ")


def test_with_wait_requests_and_deallocations_are_counted_apart() -> None:
    """Accepted nodes report nothing until deallocated: the request phase is read from the client's counters."""
    stats = ClientStats()
    progress = PlainProgress(stats, 5, NotATerminal(), wait=True)
    stats.accepted = 3  # three 202s, no outcome yet (they wait)
    progress.outcome(outcome(OutcomeStatus.SKIPPED))
    assert progress.answered == 4
    assert "4/5 nodes answered, 0 of 3 accepted deallocated" in progress.line()
    progress.outcome(outcome(OutcomeStatus.DEALLOCATED, accepted=True))
    progress.outcome(outcome(OutcomeStatus.TIMED_OUT, accepted=True))
    assert progress.answered == 4  # a deallocation seen later is not a second answer
    assert "4/5 nodes answered, 2 of 3 accepted deallocated" in progress.line()


def test_plain_lines_come_on_ticks_without_outcomes(monkeypatch) -> None:
    """A long wait phase has no outcomes; the plain display still prints a line every few seconds."""
    now = [100.0]
    monkeypatch.setattr(_output.time, "monotonic", lambda: now[0])
    stream = NotATerminal()
    progress = make_progress(ClientStats(), 10, quiet=False, wait=True, stream=stream)
    progress.tick()
    assert stream.getvalue() == ""
    now[0] += _output._PLAIN_EVERY
    progress.tick()
    now[0] += 1.0
    progress.tick()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("progress: 0/10 nodes answered")
    assert "\x1b" not in stream.getvalue()


async def test_showing_ticks_while_the_block_runs_and_closes_after() -> None:
    events: list[str] = []

    class Recorder:
        def add_total(self, count: int) -> None:
            events.append("total")

        def outcome(self, outcome: NodeOutcome) -> None:
            events.append("outcome")

        def tick(self) -> None:
            events.append("tick")

        def close(self) -> None:
            events.append("close")

    async with showing(Recorder()):
        await asyncio.sleep(_output._TICK * 2.5)
    assert events.count("tick") >= 1
    assert events[-1] == "close"
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert tasks == []  # the ticker is gone


async def test_showing_closes_when_the_block_is_cancelled() -> None:
    closed: list[bool] = []

    class Closing:
        def add_total(self, count: int) -> None: ...
        def outcome(self, outcome: NodeOutcome) -> None: ...
        def tick(self) -> None: ...
        def close(self) -> None:
            closed.append(True)

    async def run() -> None:
        async with showing(Closing()):
            await asyncio.sleep(10)

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert closed == [True]
