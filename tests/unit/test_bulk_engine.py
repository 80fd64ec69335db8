"""The bulk engine through a scripted fake backend, on virtual time: every figure below is exact."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

import attrs
import pytest

from batch_dealloc_async import (
    AuthenticationError,
    BatchDeallocError,
    BatchError,
    BatchErrorMessage,
    BatchNode,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    BulkReport,
    ClientStats,
    ConflictError,
    CredentialError,
    DeallocateResult,
    NodeOutcome,
    NotFoundError,
    OutcomeStatus,
    ServerError,
)
from batch_dealloc_async._actions import DEALLOCATE
from batch_dealloc_async._bulk import BulkRun, NodeSource
from tests.virtual_time import run_virtual

POOL: Final = "pool-1"
START: Final = 1000.0  # the virtual clock's first reading, like a monotonic clock's
RESOLUTION: Final = time.get_clock_info("monotonic").resolution
POLLS: Final = (1.0, 2.5, 4.75, 8.125, 13.1875, 20.78125, 32.171875, 47.171875, 62.171875)  # waits 1, 1.5, 2.25 ... 15
WATCHED: Final = "(state eq 'deallocated') or (state eq 'deallocating')"
ELIGIBLE: Final = "(state eq 'idle') or (state eq 'running')"
COMPLEMENT: Final = "(state ne 'idle') and (state ne 'running')"

S = OutcomeStatus


def service_error(cls: type[BatchServiceError], status: int, code: str) -> BatchServiceError:
    """An error built as the client builds it from a response."""
    return cls(
        status=status,
        error=BatchError(code=code, message=BatchErrorMessage(value=f"{code}\nRequestId:r1\nTime:2025-06-01")),
        request_id="r1",
        client_request_id="00000000-0000-0000-0000-000000000001",
        attempts=1,
    )


def conflict() -> BatchServiceError:
    return service_error(ConflictError, 409, "OperationInvalidForCurrentState")


def not_found(code: str = "NodeNotFound") -> BatchServiceError:
    return service_error(NotFoundError, 404, code)


def server_error() -> BatchServiceError:
    return service_error(ServerError, 500, "InternalError")


def auth_error() -> BatchServiceError:
    return service_error(AuthenticationError, 403, "AuthenticationFailed")


def transport_error() -> BatchTransportError:
    return BatchTransportError("connection reset", client_request_id="c1", attempts=3)


@attrs.frozen
class Step:
    """What the fake does with a deallocate call: wait ``delay``, then raise ``error`` or accept (or hang)."""

    delay: float = 0.0
    error: BatchDeallocError | None = None
    hang: bool = False
    done_after: float | None = None  # once accepted, the node shows deallocated this much later
    retries: int = 0
    throttled: int = 0


HANG: Final = Step(hang=True)


def now() -> float:
    return asyncio.get_running_loop().time()


def matcher(filter_: str) -> Callable[[str | None], bool]:
    """The three filter shapes the engine sends, parsed minimally."""
    terms = [re.fullmatch(r"\(?state (eq|ne) '([a-z]+)'\)?", term) for term in re.split(r" or | and ", filter_)]
    assert all(terms), filter_
    ops = {m[1] for m in terms if m}
    values = {m[2] for m in terms if m}
    if ops == {"eq"} and " and " not in filter_:
        return lambda state: state in values
    assert ops == {"ne"}, filter_
    assert " or " not in filter_, filter_
    return lambda state: state not in values


class FakeBackend:
    """A NodeBackend over in-memory pools whose node states are timelines on the virtual clock."""

    def __init__(
        self,
        pools: dict[str, dict[str, str | None]] | None = None,
        script: dict[str, Step] | None = None,
        *,
        default: Step = Step(),
        unreadable: dict[str, BatchDeallocError] | None = None,
        list_errors: dict[str, list[BatchDeallocError | None]] | None = None,
        list_delay: float = 0.0,
    ) -> None:
        self.pools = {
            pool: {node: [(-math.inf, state)] for node, state in nodes.items()}
            for pool, nodes in (pools if pools is not None else {POOL: {}}).items()
        }
        self.script = script or {}
        self.default = default
        self.unreadable = unreadable or {}
        self.list_errors = list_errors or {}
        self.list_delay = list_delay  # virtual seconds after each node listed (a slow, many-page listing)
        self.performs: list[tuple[float, str]] = []
        self.reads: list[str] = []
        self.listings: list[tuple[float, str, str]] = []

    def state(self, pool_id: str, node_id: str, at: float) -> str | None:
        return [state for since, state in self.pools[pool_id][node_id] if since <= at][-1]

    async def perform(self, pool_id: str, node_id: str, run: ClientStats) -> DeallocateResult:
        step = self.script.get(node_id, self.default)
        self.performs.append((now(), node_id))
        run.requests += 1 + step.retries
        run.retries += step.retries
        run.throttled += step.throttled
        if step.hang:
            await asyncio.get_running_loop().create_future()
        await asyncio.sleep(step.delay)
        if step.error is not None:
            raise step.error
        nodes = self.pools.get(pool_id, {})
        if node_id in nodes:
            nodes[node_id].append((now(), "deallocating"))
            if step.done_after is not None:
                nodes[node_id].append((now() + step.done_after, "deallocated"))
        return DeallocateResult(
            pool_id=pool_id, node_id=node_id, request_id=f"r-{node_id}", client_request_id="c", attempts=1
        )

    async def read_state(self, pool_id: str, node_id: str, run: ClientStats) -> str | None:
        run.requests += 1
        self.reads.append(node_id)
        await asyncio.sleep(0)
        if node_id in self.unreadable:
            raise self.unreadable[node_id]
        if node_id not in self.pools.get(pool_id, {}):
            raise not_found()
        return self.state(pool_id, node_id, now())

    async def list_nodes(self, pool_id: str, filter_: str, run: ClientStats) -> AsyncIterator[BatchNode]:
        at = now()
        self.listings.append((at, pool_id, filter_))
        run.requests += 1
        wanted = matcher(filter_)
        await asyncio.sleep(0)
        errors = self.list_errors.get(pool_id)
        if errors and (error := errors.pop(0)) is not None:
            raise error
        if pool_id not in self.pools:
            raise not_found("PoolNotFound")
        for node_id in list(self.pools[pool_id]):
            state = self.state(pool_id, node_id, at)
            if wanted(state):
                yield BatchNode(id=node_id, state=state)
                if self.list_delay:
                    await asyncio.sleep(self.list_delay)


def make_run(backend: FakeBackend, *, slots: int = 1, **options: Any) -> BulkRun:
    """A run on the running (virtual) loop's clock."""
    settings: dict[str, Any] = {"deadline": None, "wait": False, "wait_timeout": 3600.0, "on_outcome": None}
    settings.update(options)
    loop = asyncio.get_running_loop()
    return BulkRun(backend, DEALLOCATE, slots=slots, clock=loop.time, sleep=asyncio.sleep, **settings)


def run_nodes(backend: FakeBackend, node_ids: NodeSource, **options: Any) -> BulkReport:
    async def main() -> BulkReport:
        return await make_run(backend, **options).nodes(POOL, node_ids)

    return run_virtual(main(), start=START)


async def agen(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item


def statuses(report: BulkReport | list[NodeOutcome]) -> dict[str, S]:
    outcomes = report.outcomes if isinstance(report, BulkReport) else report
    return {o.node_id: o.status for o in outcomes}


def ids(count: int) -> list[str]:
    return [f"n{i}" for i in range(count)]


# ------------------------------------------------------------------------------------------ one outcome each

MIXED: Final = {
    "ok": Step(delay=1.0),
    "busy": Step(delay=0.5, error=conflict()),
    "gone": Step(error=not_found()),
    "boom": Step(delay=2.0, error=server_error()),
    "reset": Step(error=transport_error()),
}
MIXED_INPUT: Final = ["ok", "busy", "ok", "gone", "bad id", "boom", "reset", "", "busy"]


@pytest.mark.parametrize("entry", ["nodes", "stream"])
@pytest.mark.parametrize("source", [list, agen])
def test_every_node_ends_with_exactly_one_outcome(entry: str, source: Callable[[list[str]], NodeSource]) -> None:
    """Each id given (duplicates included) gets one outcome; a bad id fails with ValueError, even in a stream."""
    backend = FakeBackend({POOL: {"busy": "starting"}}, MIXED)

    async def main() -> list[NodeOutcome]:
        run = make_run(backend)
        if entry == "nodes":
            return (await run.nodes(POOL, source(MIXED_INPUT))).outcomes
        return [outcome async for outcome in run.stream(POOL, source(MIXED_INPUT))]

    outcomes = run_virtual(main(), start=START)
    assert Counter(o.node_id for o in outcomes) == Counter(MIXED_INPUT)
    by_id = {o.node_id: o for o in outcomes}
    assert {i: o.status for i, o in by_id.items()} == {
        "ok": S.ACCEPTED,
        "busy": S.SKIPPED,
        "gone": S.FAILED,
        "bad id": S.FAILED,
        "boom": S.FAILED,
        "reset": S.FAILED,
        "": S.FAILED,
    }
    assert isinstance(by_id["bad id"].error, ValueError)
    assert isinstance(by_id[""].error, ValueError)
    assert Counter(node for _, node in backend.performs) == {"ok": 2, "busy": 2, "gone": 1, "boom": 1, "reset": 1}


# ------------------------------------------------------------------------------------------------- deadline


@pytest.mark.parametrize("source", [list, agen])
def test_deadline_ends_in_flight_timed_out_and_unread_not_attempted(source: Callable[[list[str]], NodeSource]) -> None:
    """At the deadline, requests in flight end timed_out, unread ids not_attempted, and elapsed is the deadline."""
    script = {"n5": HANG}
    report = run_nodes(FakeBackend(script=script, default=Step(delay=3.0)), source(ids(10)), deadline=5.0)
    assert statuses(report) == {
        **dict.fromkeys(ids(4), S.ACCEPTED),
        **dict.fromkeys(["n4", "n5", "n6", "n7"], S.TIMED_OUT),
        **dict.fromkeys(["n8", "n9"], S.NOT_ATTEMPTED),
    }
    assert all(isinstance(o.error, BatchTimeoutError) for o in report.by_status(S.TIMED_OUT))
    assert report.elapsed == pytest.approx(5.0, abs=RESOLUTION)
    assert report.requests == 8


def test_deadline_gives_an_outcome_to_every_id_of_a_slow_async_source() -> None:
    """A deadline catching a worker on a slow async source loses no id read; the source is closed 5 s later."""
    closed: list[bool] = []

    async def slow() -> AsyncIterator[str]:
        try:
            for node_id in ids(10):
                await asyncio.sleep(1.0)
                yield node_id
        finally:
            closed.append(True)

    report = run_nodes(FakeBackend(default=Step(delay=10.0)), slow(), deadline=2.5)
    assert statuses(report) == {"n0": S.TIMED_OUT, "n1": S.TIMED_OUT, **dict.fromkeys(ids(10)[2:7], S.NOT_ATTEMPTED)}
    assert report.elapsed == pytest.approx(2.5 + 5.0)
    assert closed == [True]


def test_deadline_during_a_pool_listing_sends_nothing_more() -> None:
    """A deadline that passes while a pool is listed sends no request: the eligible nodes listed end not_attempted."""
    backend = FakeBackend({"p1": dict.fromkeys(ids(8), "idle")}, list_delay=1.0)

    async def main() -> BulkReport:
        return await make_run(backend, deadline=3.5).pools(["p1"], ("idle", "running"), None)

    report = run_virtual(main(), start=START)
    assert backend.performs == []
    assert statuses(report) == dict.fromkeys(ids(4), S.NOT_ATTEMPTED)
    assert report.elapsed == pytest.approx(3.5, abs=RESOLUTION)


# ------------------------------------------------------------------------------------------- 409, Get Node


@pytest.mark.parametrize(
    ("state", "unreadable", "status", "seen"),
    [
        ("deallocated", None, S.SKIPPED, "deallocated"),
        ("deallocating", None, S.SKIPPED, "deallocating"),
        ("starting", None, S.SKIPPED, "starting"),
        ("idle", None, S.FAILED, "idle"),
        ("running", None, S.FAILED, "running"),
        (None, None, S.FAILED, None),
        ("starting", not_found(), S.FAILED, None),
        ("starting", server_error(), S.FAILED, None),
    ],
)
def test_conflict_reads_the_node_state(
    state: str | None, unreadable: BatchDeallocError | None, status: S, seen: str | None
) -> None:
    """After a 409 a non-eligible state means skipped with it; an eligible or unreadable state means failed."""
    error = conflict()
    backend = FakeBackend(
        {POOL: {"n0": state}}, {"n0": Step(error=error)}, unreadable={"n0": unreadable} if unreadable else None
    )
    (outcome,) = run_nodes(backend, ["n0"]).outcomes
    assert (outcome.status, outcome.state, outcome.error, outcome.attempts) == (status, seen, error, 1)
    assert backend.reads == ["n0"]


# ------------------------------------------------------------------------------------------- auth stops it


@pytest.mark.parametrize("error", [auth_error(), CredentialError("the identity provider refused")])
@pytest.mark.parametrize("in_flight", [Step(delay=2.0), Step(delay=2.0, error=auth_error())])
def test_authentication_failure_stops_the_run(error: BatchDeallocError, in_flight: Step) -> None:
    """An auth failure ends its node failed with it; only requests already in flight go on; the rest not_attempted."""
    script = {"n0": Step(delay=1.0, error=error), **dict.fromkeys(["n1", "n2", "n3"], in_flight)}
    backend = FakeBackend(script=script, default=Step(delay=0.5))
    report = run_nodes(backend, ids(10))
    expected = S.ACCEPTED if in_flight.error is None else S.FAILED
    assert statuses(report) == {
        "n0": S.FAILED,
        **dict.fromkeys(["n1", "n2", "n3"], expected),
        **dict.fromkeys(ids(10)[4:], S.NOT_ATTEMPTED),
    }
    assert report.outcomes[0].error is error
    assert [node for _, node in backend.performs] == ids(4)


# ------------------------------------------------------------------------------------------------------ wait


@pytest.mark.parametrize(("done_after", "rounds"), [(0.5, 1), (2.0, 2), (10.0, 5), (60.0, 9)])
def test_wait_polls_with_growing_capped_delays(done_after: float, rounds: int) -> None:
    """Accepted nodes end deallocated once listed so; poll rounds wait 1, 1.5, 2.25 ... s, capped at 15 s."""
    backend = FakeBackend({POOL: {"n0": "idle", "n1": "running"}}, default=Step(done_after=done_after))
    report = run_nodes(backend, ["n0", "n1"], wait=True)
    assert {(o.node_id, o.status, o.state) for o in report.outcomes} == {
        ("n0", S.DEALLOCATED, "deallocated"),
        ("n1", S.DEALLOCATED, "deallocated"),
    }
    assert [(at - START, filter_) for at, _, filter_ in backend.listings] == [(t, WATCHED) for t in POLLS[:rounds]]
    assert (report.poll_rounds, report.poll_requests, report.requests) == (rounds, rounds, 2 + rounds)
    assert report.elapsed == POLLS[rounds - 1]


@pytest.mark.parametrize("limit", [{"wait_timeout": 10.0}, {"deadline": 10.0}])
def test_wait_ends_nodes_still_deallocating_timed_out(limit: dict[str, float]) -> None:
    """At wait_timeout (or the run's deadline) nodes not yet deallocated end timed_out with their last state."""
    backend = FakeBackend({POOL: {"n0": "idle", "n1": "idle"}}, {"n1": Step(done_after=3.0)})
    report = run_nodes(backend, ["n0", "n1"], wait=True, **limit)
    assert [(o.node_id, o.status, o.state) for o in report.outcomes] == [
        ("n1", S.DEALLOCATED, "deallocated"),
        ("n0", S.TIMED_OUT, "deallocating"),
    ]
    assert isinstance(report.outcomes[1].error, BatchTimeoutError)
    assert [at - START for at, _, _ in backend.listings][:4] == list(POLLS[:4])
    assert max(at - START for at, _, _ in backend.listings) <= 10.0
    assert report.elapsed == pytest.approx(10.0, abs=RESOLUTION)


@pytest.mark.parametrize("error", [server_error(), transport_error(), not_found("PoolNotFound")])
def test_wait_retries_a_failed_listing_next_round(error: BatchDeallocError) -> None:
    """A listing that fails while waiting is tried again next round, on the same growing schedule."""
    backend = FakeBackend({POOL: {"n0": "idle"}}, {"n0": Step(done_after=2.0)}, list_errors={POOL: [None, error]})
    report = run_nodes(backend, ["n0"], wait=True)
    assert [(o.node_id, o.status) for o in report.outcomes] == [("n0", S.DEALLOCATED)]
    assert [at - START for at, _, _ in backend.listings] == list(POLLS[:3])
    assert report.poll_rounds == 3


# ------------------------------------------------------------------------------------------------------ pools

P1: Final[dict[str, str | None]] = {"a": "idle", "b": "running", "c": "starting", "d": "deallocated", "e": "unusable"}


@pytest.mark.parametrize(
    ("p2", "list_errors", "p2_outcomes"),
    [
        (None, {}, {}),  # no such pool: PoolNotFound
        ({"x": "idle", "y": "starting"}, {"p2": [server_error()]}, {}),
        ({"x": "idle", "y": "starting"}, {"p2": [None, transport_error()]}, {"x": S.NOT_ATTEMPTED}),
    ],
)
def test_pools_act_on_eligible_nodes_and_skip_the_others(
    p2: dict[str, str | None] | None, list_errors: dict[str, list[BatchDeallocError | None]], p2_outcomes: dict[str, S]
) -> None:
    """Eligible nodes are acted on, others skipped with their state; a pool that cannot be listed is a pool error."""
    pools = {"p1": dict(P1)} | ({"p2": p2} if p2 is not None else {})
    backend = FakeBackend(pools, list_errors=list_errors)
    listed: list[tuple[str, int, int]] = []

    async def main() -> BulkReport:
        run = make_run(backend)
        return await run.pools(["p1", "p2"], ("idle", "running"), lambda *args: listed.append(args))

    report = run_virtual(main(), start=START)
    assert {o.node_id: (o.status, o.state) for o in report.outcomes if o.pool_id == "p1"} == {
        "a": (S.ACCEPTED, "deallocating"),
        "b": (S.ACCEPTED, "deallocating"),
        "c": (S.SKIPPED, "starting"),
        "d": (S.SKIPPED, "deallocated"),
        "e": (S.SKIPPED, "unusable"),
    }
    assert {o.node_id: o.status for o in report.outcomes if o.pool_id == "p2"} == p2_outcomes
    assert sorted(listed) == [("p1", 2, 3), ("p2", 0, 0)]
    assert list(report.pool_errors) == ["p2"]
    assert [(pool, f) for _, pool, f in backend.listings if pool == "p1"] == [("p1", ELIGIBLE), ("p1", COMPLEMENT)]


# ----------------------------------------------------------------------------------------------------- stream


def test_stream_yields_outcomes_as_they_end() -> None:
    """stream() yields each outcome at the virtual moment its node ends, not in input order."""
    script = {"n0": Step(delay=3.0), "n1": Step(delay=1.0), "n2": Step(delay=2.0, error=server_error())}

    async def main() -> list[tuple[float, str, S]]:
        run = make_run(FakeBackend(script=script))
        return [(now() - START, o.node_id, o.status) async for o in run.stream(POOL, ["n0", "n1", "n2"])]

    assert run_virtual(main(), start=START) == [(1.0, "n1", S.ACCEPTED), (2.0, "n2", S.FAILED), (3.0, "n0", S.ACCEPTED)]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_stream_buffer_is_bounded_by_the_slots_for_a_consumer_that_does_not_read(slots: int) -> None:
    """A consumer that stops reading leaves at most 6 outcomes per slot buffered; workers stop pulling input."""
    pulled: list[str] = []

    def source() -> Iterable[str]:
        for node_id in ids(100):
            pulled.append(node_id)
            yield node_id

    backend = FakeBackend(default=Step(delay=1.0))

    async def main() -> tuple[int, int, int]:
        stream = make_run(backend, slots=slots).stream(POOL, source())
        async with contextlib.aclosing(stream):
            await anext(stream)
            await asyncio.sleep(100)
            pulled_then = len(pulled)
            await asyncio.sleep(100)
            return len(backend.performs) - 1, pulled_then, len(pulled)

    buffered, pulled_then, pulled_later = run_virtual(main(), start=START)
    assert buffered <= 6 * slots
    assert pulled_then == pulled_later < 100


@pytest.mark.parametrize("deadline", [None, 500.0])
def test_closing_a_stream_early_cancels_the_run_cleanly(deadline: float | None) -> None:
    """aclose() on a stream with requests in flight cancels the run and leaves no task behind."""
    backend = FakeBackend(script={"n0": Step(delay=1.0), "n1": Step(delay=2.0)}, default=HANG)

    async def main() -> tuple[list[str], set[asyncio.Task[Any]], float]:
        stream = make_run(backend, deadline=deadline).stream(POOL, ids(10))
        got = [(await anext(stream)).node_id, (await anext(stream)).node_id]
        await stream.aclose()
        return got, asyncio.all_tasks() - {asyncio.current_task()}, now() - START

    assert run_virtual(main(), start=START) == (["n0", "n1"], set(), 2.0)
    assert [node for _, node in backend.performs] == ids(6)


# ---------------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("wait", [False, True])
def test_report_counts_what_the_backend_counted(wait: bool) -> None:
    """requests, retries and throttled come from the run's ClientStats, polls and state checks included."""
    script = {
        "n0": Step(retries=2, throttled=1, done_after=0.5),
        "n1": Step(error=conflict(), retries=1),
        "n2": Step(done_after=0.5),
    }
    backend = FakeBackend({POOL: {"n0": "idle", "n1": "starting", "n2": "idle"}}, script)
    report = run_nodes(backend, ["n0", "n1", "n2"], wait=wait)
    polls = 1 if wait else 0
    assert (report.requests, report.retries, report.throttled) == (3 + 2 + 1 + 1 + polls, 3, 1)
    assert (report.poll_rounds, report.poll_requests) == (polls, polls)


def workers_alive() -> int:
    return sum(task.get_name() == "batch-dealloc-worker" for task in asyncio.all_tasks())


@pytest.mark.parametrize(("window", "most"), [(5, 20), (1, 4)])
def test_workers_follow_the_window_in_use_not_the_ceiling(window: int, most: int) -> None:
    """With 512 slots of ceiling and a window of ``window``, a run holds four workers per slot in use, no more."""
    seen: list[int] = []

    class Counting(FakeBackend):
        async def perform(self, pool_id: str, node_id: str, run: ClientStats) -> DeallocateResult:
            seen.append(workers_alive())
            return await super().perform(pool_id, node_id, run)

    backend = Counting(default=Step(delay=0.1))
    report = run_nodes(backend, ids(300), slots=512, window=lambda: window)
    assert report.counts["accepted"] == 300
    assert max(seen) == most


def test_workers_grow_with_the_window_and_a_short_input_starts_few() -> None:
    """The crew grows as the window does (32 at a time), and three ids never start 2,048 workers."""
    seen: list[int] = []
    window = [8]

    class Growing(FakeBackend):
        async def perform(self, pool_id: str, node_id: str, run: ClientStats) -> DeallocateResult:
            seen.append(workers_alive())
            window[0] = min(512, window[0] + 1)  # the window grows by a slot per request
            return await super().perform(pool_id, node_id, run)

    report = run_nodes(Growing(default=Step(delay=0.1)), ids(3000), slots=512, window=lambda: window[0])
    assert report.counts["accepted"] == 3000
    assert seen[0] <= 32
    assert max(seen) == 4 * 512

    short: list[int] = []

    class Short(FakeBackend):
        async def perform(self, pool_id: str, node_id: str, run: ClientStats) -> DeallocateResult:
            short.append(workers_alive())
            return await super().perform(pool_id, node_id, run)

    assert run_nodes(Short(), ids(3), slots=512).counts["accepted"] == 3
    assert max(short) <= 32


def test_cancelling_a_wait_delivers_the_accepted_nodes_as_accepted() -> None:
    """Cancelled while waiting for nodes to show deallocated: every accepted node still reaches on_outcome."""
    delivered: list[NodeOutcome] = []

    async def main() -> None:
        backend = FakeBackend({POOL: dict.fromkeys(ids(20), "idle")}, default=Step(done_after=None))
        run = make_run(backend, slots=4, wait=True, on_outcome=delivered.append)
        task = asyncio.ensure_future(run.nodes(POOL, ids(20)))
        await asyncio.sleep(5.0)  # every node accepted long ago; the wait polls on
        assert delivered == []
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_virtual(main(), start=START)
    assert sorted(o.node_id for o in delivered) == sorted(ids(20))
    assert {o.status for o in delivered} == {S.ACCEPTED}


# --------------------------------------------------------------------------------------------------- backlog


@pytest.mark.parametrize(
    ("source", "deadline", "told"),
    [
        (list, None, 10),  # a list: its size is known, each node finished takes one off
        (list, 5.0, 10),  # a deadline ends the rest: what was not finished leaves the backlog at once
        (agen, None, 0),  # an async source has no size: nothing is told
        (iter, None, 0),  # nor has an iterator
    ],
)
def test_the_backlog_is_told_the_known_work_and_ends_at_zero(
    source: Callable[[list[str]], NodeSource], deadline: float | None, told: int
) -> None:
    """Traffic control is told the nodes of a sized input up front, one less per node finished, and zero at the end."""
    changes: list[int] = []
    backend = FakeBackend(script={"n7": HANG}, default=Step(delay=1.0)) if deadline else FakeBackend()
    report = run_nodes(backend, source(ids(10)), deadline=deadline, backlog=changes.append)
    assert len(report.outcomes) == 10
    assert sum(changes) == 0
    assert (changes[0] if changes else 0) == told
    if told and deadline is None:
        assert changes == [10, *[-1] * 10]


def test_a_cancelled_run_takes_its_nodes_off_the_backlog() -> None:
    """A run cancelled mid-way (three nodes done, one per second) leaves nothing of its work in the backlog."""
    changes: list[int] = []

    async def main() -> None:
        run = make_run(FakeBackend(default=Step(delay=1.0)), backlog=changes.append)
        task = asyncio.ensure_future(run.nodes(POOL, ids(10)))
        await asyncio.sleep(3.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_virtual(main(), start=START)
    assert changes[:4] == [10, -1, -1, -1]
    assert sum(changes) == 0
