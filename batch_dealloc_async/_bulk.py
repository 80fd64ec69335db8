"""The bulk engine: a fixed pool of workers pulls node ids and gives every one exactly one outcome.

The engine knows nodes only through :class:`NodeBackend`, three operations (act on a node, read its state,
list a pool), and what to do through a :class:`~._actions.NodeAction`; it never imports the client, the node
operations or the wire. Time is the client's injected clock and sleep, for the run's deadline and for the
waits between polls alike.

Memory is bounded by the number of workers, not the number of nodes: the input is pulled lazily, and nothing is
kept per node unless ``wait`` needs it (the accepted nodes it polls for) or the caller asked for a report.

Deadline: nodes still in the input end ``not_attempted``; requests in flight are cancelled and end ``timed_out``;
with ``wait``, accepted nodes not yet done end ``timed_out`` with their last state. An authentication failure
stops the run: the failed node says why, the rest end ``not_attempted``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sized,
)
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeAlias

import attrs

from ._errors import (
    AuthenticationError,
    BatchDeallocError,
    BatchTimeoutError,
    ConflictError,
    CredentialError,
    NodeStateError,
    ServiceDownError,
)
from ._outcomes import BulkReport, ClientStats, NodeOutcome, OutcomeStatus
from ._request import state_filter, validate_node_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from ._actions import NodeAction
    from ._models import BatchNode, DeallocateResult, StartResult

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "BulkRun",
    "ListedCallback",
    "NodeBackend",
    "NodeSource",
    "OutcomeCallback",
    "RunObserver",
]

_log = logging.getLogger(__name__)

NodeSource: TypeAlias = Iterable[str] | AsyncIterable[str]
OutcomeCallback: TypeAlias = Callable[[NodeOutcome], object]
ListedCallback: TypeAlias = Callable[[str, int, int], object]

_FIRST_POLL: Final = 1.0
_POLL_GROWTH: Final = 1.5
_POLL_CAP: Final = 15.0
DEFAULT_WAIT_TIMEOUT: Final = 3600.0
_WORKERS_PER_SLOT: Final = 4
_SPAWN_BATCH: Final = 32  # workers started at once, at most
# The same credential would be refused again; a service that fails everything is down: the rest of the run
# would only wait and fail too, so they end not_attempted at once.
_STOPS_THE_RUN: Final = (AuthenticationError, CredentialError, ServiceDownError)
_DRAIN_GRACE: Final = 5.0  # seconds after the deadline for reading the rest of an async input


class NodeBackend(Protocol):
    """The three operations a bulk run needs, with the run's action, body and timeout already bound."""

    async def perform(self, pool_id: str, node_id: str, run: ClientStats) -> DeallocateResult | StartResult:
        """Act on one node (retries included); raises :class:`BatchDeallocError` on failure."""
        ...

    async def read_state(self, pool_id: str, node_id: str, run: ClientStats) -> str | None:
        """The node's state now; raises :class:`BatchDeallocError` when it cannot be read."""
        ...

    def list_nodes(self, pool_id: str, filter_: str, run: ClientStats) -> AsyncIterator[BatchNode]:
        """The pool's nodes matching ``filter_``, id and state at least, every page."""
        ...


class RunObserver(Protocol):
    """What a run tells the client's telemetry (spans and metrics), when the client records any.

    ``nodes`` is read once per run: when False the run never calls :meth:`node`, so a node costs nothing more.
    """

    @property
    def nodes(self) -> bool:
        """Whether each node's work is wrapped by :meth:`node` (a span per node)."""
        ...

    def started(self, pool_ids: Sequence[str]) -> None:
        """The run began on these pools."""

    def node(self, pool_id: str, node_id: str, work: Awaitable[NodeOutcome]) -> Awaitable[NodeOutcome]:
        """Wrap one node's work (a span of its own); return what ``work`` returns."""
        ...

    def outcome(self, outcome: NodeOutcome) -> None:
        """A node's final outcome."""

    def finished(self, counts: Mapping[str, int]) -> None:
        """The run ended with these counts by status."""


def _ignore(nodes: int) -> None:
    """No one listens to the backlog."""
    del nodes


_END: Final[Any] = object()  # the input is exhausted (not None: None in the input is a bad id, not the end)


class _Feed:
    """The input, shared by every worker: a sync iterable is pulled without awaiting, an async one under a lock.

    An async source is read by a task of its own, which a cancelled worker does not cancel: a deadline never
    interrupts the source mid-item (that would close a generator and lose the ids it had not yet given).
    """

    __slots__ = ("_aiter", "_lock", "_next", "ended", "items")

    def __init__(self, source: NodeSource) -> None:
        if isinstance(source, str | bytes):
            raise ValueError("node_ids must be an iterable of ids, not one string")
        self.items: Iterator[str] | None = None
        self._aiter: AsyncIterator[str] | None = None
        if isinstance(source, AsyncIterable):
            self._aiter = aiter(source)
        else:
            self.items = iter(source)
        self._lock = asyncio.Lock()
        self._next: asyncio.Future[Any] | None = None
        self.ended = False  # a worker has seen the end

    async def pull(self) -> Any:  # noqa: ANN401 (a node id, whatever the caller put in, or _END)
        """The next id, or ``_END``."""
        if self.items is not None:
            return next(self.items, _END)
        assert self._aiter is not None  # noqa: S101 (one of the two is set)
        async with self._lock:
            if self._next is None:
                self._next = asyncio.ensure_future(anext(self._aiter, _END))
            try:
                return await asyncio.shield(self._next)
            finally:
                if self._next.done():
                    self._next = None

    async def close(self) -> None:
        """Stop reading an async source: cancel a read under way and close the source (a generator's finally runs)."""
        pending, self._next = self._next, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait([pending])
        aclose = getattr(self._aiter, "aclose", None)
        if aclose is not None:
            await aclose()


@attrs.define
class _Worker:
    """The node a worker is sending right now, if any."""

    node_id: str | None = None


class _Crew:
    """The workers of one pool's run, started as the window grows (:meth:`BulkRun._grow`)."""

    __slots__ = ("feed", "group", "left", "pending", "pool_id", "workers")

    def __init__(self, pool_id: str, feed: _Feed, pending: dict[str, NodeOutcome]) -> None:
        self.pool_id = pool_id
        self.feed = feed
        self.pending = pending
        self.workers: list[_Worker] = []
        self.left = 0  # nodes of a sized input not finished yet (told to ``backlog``)
        self.group: asyncio.TaskGroup | None = None


class _Deadline:
    """``asyncio.timeout`` run by the injected clock and sleep: the block is cancelled once ``clock() >= at``.

    A watchdog task sleeps (with the injected sleep) until the clock passes ``at``, then expires the timeout, so a
    simulated clock drives the run's deadline exactly as it drives the retries' backoff.
    """

    __slots__ = ("_at", "_clock", "_sleep", "_timeout", "_watchdog")

    def __init__(self, at: float | None, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self._at = at
        self._clock = clock
        self._sleep = sleep
        self._timeout = asyncio.timeout(None)
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._timeout.__aenter__()
        if self._at is not None:
            self._watchdog = asyncio.create_task(self._watch(self._at), name="batch-dealloc-deadline")
        return self

    async def _watch(self, at: float) -> None:
        while (left := at - self._clock()) > 0:
            await self._sleep(left)
        self._timeout.reschedule(asyncio.get_running_loop().time())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        watchdog = self._watchdog
        if watchdog is not None and not watchdog.done():
            watchdog.cancel()
            await asyncio.wait([watchdog])  # never raises; a cancellation of the caller still propagates
        await self._timeout.__aexit__(exc_type, exc, tb)  # raises TimeoutError when it expired


class BulkRun:
    """One bulk run over one or more pools, sharing a deadline, counters and an outcome sink.

    Create it inside the running loop, then call one of :meth:`nodes`, :meth:`pools` or :meth:`stream`.

    Args:
        backend: The operations every request goes through.
        action: What to do to each node, and its states.
        slots: The client's concurrency ceiling: workers are four per slot at most (a worker waiting out a
            Retry-After must not leave a slot idle), and a stream buffers two outcomes per slot.
        window: The slots in use now (the client's adaptive window), or ``None`` for ``slots``: workers start
            as it grows, four per slot, so a run that uses 20 slots of 512 holds 80 tasks, not 2,048 (fewer
            objects, shorter garbage collections, and no burst of task starts in the caller's loop).
        deadline: Seconds for the whole run, or ``None``.
        wait: Poll until accepted nodes reach the action's done state.
        wait_timeout: With ``wait`` and no deadline, stop waiting after this many seconds.
        on_outcome: Called with every final outcome, exactly once per node; awaited when it returns an
            awaitable. Its synchronous part runs before any await, so a cancellation never loses an outcome.
        clock: Monotonic seconds (the client's).
        sleep: Awaitable sleep (the client's).
        client_stats: The client's counters: the report counts the outages and probes of the run from them.
        observer: The client's telemetry for this run, or ``None`` when it records nothing.
        backlog: Told how many nodes are added to (positive) or leave (negative) the work still to do, when the
            input's size is known (traffic control does not probe for more rate when the work is nearly done).
    """

    def __init__(
        self,
        backend: NodeBackend,
        action: NodeAction,
        *,
        slots: int,
        window: Callable[[], int] | None = None,
        deadline: float | None,
        wait: bool,
        wait_timeout: float,
        on_outcome: OutcomeCallback | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        client_stats: ClientStats | None = None,
        observer: RunObserver | None = None,
        backlog: Callable[[int], None] | None = None,
    ) -> None:
        self._backend = backend
        self._backlog = backlog if backlog is not None else _ignore
        self._client_stats = client_stats
        self._outages_before = client_stats.outages if client_stats is not None else 0
        self._probes_before = client_stats.probes if client_stats is not None else 0
        self._action = action
        self._slots = slots
        self._window = window
        self._wait = wait
        self._on_outcome = on_outcome
        self._clock = clock
        self._sleep = sleep
        self._outcomes: list[NodeOutcome] | None = []
        self._room: Callable[[], Awaitable[None]] | None = None
        self.stats = ClientStats()
        self.poll_rounds = 0  # with wait: listing rounds, and the requests they took (also in ``stats``)
        self.poll_requests = 0
        self._stopped: BaseException | None = None  # an auth failure stops the run
        self.pool_errors: dict[str, BatchDeallocError] = {}
        self._started = clock()
        self._deadline_at = None if deadline is None else self._started + deadline
        self._wait_until = self._deadline_at if self._deadline_at is not None else self._started + wait_timeout
        self._observer = observer
        self._node_observer = observer if observer is not None and observer.nodes else None
        # Outcomes by status, for the INFO line and the span at the end (kept only when one of them wants it).
        self._tally: dict[str, int] | None = {} if observer is not None or _log.isEnabledFor(logging.INFO) else None

    # ------------------------------------------------------------------------------------------- entry points

    async def nodes(self, pool_id: str, node_ids: NodeSource) -> BulkReport:
        """Act on every node of ``node_ids`` (pulled lazily); with ``wait``, then poll until they are done."""
        self._begin([pool_id])
        try:
            await self._run_nodes(pool_id, node_ids)
        finally:
            self._end()
        return self._report()

    async def pools(
        self, pool_ids: Iterable[str], states: tuple[str, ...], on_listed: ListedCallback | None
    ) -> BulkReport:
        """Act on every node of the pools in ``states``; report the others ``skipped``. One TaskGroup, one report."""
        pools = list(pool_ids)
        self._begin(pools)
        try:
            async with asyncio.TaskGroup() as group:
                for pool_id in pools:
                    group.create_task(self._run_pool(pool_id, states, on_listed), name=f"batch-dealloc-pool-{pool_id}")
        finally:
            self._end()
        return self._report()

    async def stream(self, pool_id: str, node_ids: NodeSource) -> AsyncGenerator[NodeOutcome]:
        """Like :meth:`nodes`, yielding each outcome as it becomes final; no report is kept.

        A slow consumer slows the workers down: a worker takes no new node while two outcomes per slot wait, so
        the buffer holds at most six per slot (those two, plus one for each worker whose node was in progress).
        """
        ready: asyncio.Queue[NodeOutcome | None] = asyncio.Queue()
        room = asyncio.Event()
        bound = 2 * self._slots

        async def wait_for_room() -> None:
            while ready.qsize() >= bound:
                room.clear()
                await room.wait()

        self._outcomes = None
        self._on_outcome = ready.put_nowait
        self._room = wait_for_room

        async def produce() -> None:
            try:
                await self._run_nodes(pool_id, node_ids)
            finally:
                ready.put_nowait(None)

        self._begin([pool_id])

        # Not a TaskGroup: a generator must not yield inside one (closing it early would turn GeneratorExit into
        # an exception group). The task is still structured: cancelled and awaited whatever way the loop ends.
        producer = asyncio.create_task(produce(), name="batch-dealloc-iter")
        try:
            while (outcome := await ready.get()) is not None:
                room.set()
                yield outcome
            await producer  # re-raises what stopped the run, if anything did
        finally:
            if not producer.done():
                producer.cancel()
                # asyncio.wait never raises the producer's cancellation, and lets a cancellation of this task through.
                await asyncio.wait([producer])
            self._end()

    # --------------------------------------------------------------------------------------------- outcomes

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return self._clock() - self._started

    def _begin(self, pool_ids: list[str]) -> None:
        _log.info(
            "bulk %s run started: pool%s %s%s",
            self._action.verb,
            "s" if len(pool_ids) > 1 else "",
            ", ".join(pool_ids),
            " (waiting for the nodes)" if self._wait else "",
            extra={"operation": self._action.verb, "pool_ids": pool_ids},
        )
        if self._observer is not None:
            self._observer.started(pool_ids)

    def _end(self) -> None:
        """The INFO line with the counts, and the counts on the call's span (also when the run was stopped)."""
        tally = self._tally if self._tally is not None else {}
        stats = self.stats
        _log.info(
            "bulk %s run ended after %.1f s: %s; %d requests, %d retries, %d throttled",
            self._action.verb,
            self.elapsed(),
            ", ".join(f"{count} {status}" for status, count in sorted(tally.items())) or "no nodes",
            stats.requests,
            stats.retries,
            stats.throttled,
            extra={
                "operation": self._action.verb,
                "counts": {str(status): count for status, count in tally.items()},
                "requests": stats.requests,
                "retries": stats.retries,
                "throttled": stats.throttled,
            },
        )
        if self._observer is not None:
            self._observer.finished(tally)

    def _report(self) -> BulkReport:
        stats = self.stats
        return BulkReport(
            outcomes=self._outcomes if self._outcomes is not None else [],
            requests=stats.requests,
            retries=stats.retries,
            throttled=stats.throttled,
            elapsed=self.elapsed(),
            pool_errors=dict(self.pool_errors),
            poll_rounds=self.poll_rounds,
            poll_requests=self.poll_requests,
            outages=self._client_stats.outages - self._outages_before if self._client_stats is not None else 0,
            probes=self._client_stats.probes - self._probes_before if self._client_stats is not None else 0,
        )

    async def _deliver(self, outcome: NodeOutcome) -> None:
        if outcome.action != self._action.verb:
            outcome = attrs.evolve(outcome, action=self._action.verb)
        tally = self._tally
        if tally is not None:
            tally[outcome.status] = tally.get(outcome.status, 0) + 1
            if self._observer is not None:
                self._observer.outcome(outcome)
        if self._outcomes is not None:
            self._outcomes.append(outcome)
        if self._on_outcome is not None:
            returned = self._on_outcome(outcome)
            if inspect.isawaitable(returned):
                await returned

    def _deadline(self, at: float | None) -> _Deadline:
        return _Deadline(at, self._clock, self._sleep)

    def _deadline_passed(self) -> bool:
        return self._deadline_at is not None and self._clock() >= self._deadline_at

    # ------------------------------------------------------------------------------------------------ phases

    async def _run_pool(self, pool_id: str, states: tuple[str, ...], on_listed: ListedCallback | None) -> None:
        """List the pool, then act on the nodes in ``states`` and report the others ``skipped``.

        Both listings (eligible states, and the rest) finish before the first request, so the run works on one
        snapshot: paging never races our own state changes, and no node gets two outcomes.
        """
        eligible: dict[str, str | None] = {}
        others: dict[str, str | None] = {}
        complement = " and ".join(f"(state ne '{s}')" for s in states)
        listed = False
        try:
            async with self._deadline(self._deadline_at):
                await self._collect(pool_id, state_filter(states), eligible)
                await self._collect(pool_id, complement, others)
            listed = True
        except TimeoutError:
            if not self._deadline_passed():
                raise
            self.pool_errors[pool_id] = BatchTimeoutError(
                f"listing pool {pool_id}: the run's deadline passed before the listing finished", client_request_id=""
            )
        except BatchDeallocError as exc:
            _log.warning("listing pool %s failed: %s", pool_id, exc)
            self.pool_errors[pool_id] = exc
            if isinstance(exc, AuthenticationError | CredentialError):
                self._stopped = exc
        if not listed:
            # The pool could not be listed: report what was found, act on nothing of a partial snapshot.
            for node_id in eligible:
                await self._deliver(self._not_attempted(pool_id, node_id))
            eligible.clear()
        others = {node_id: state for node_id, state in others.items() if node_id not in eligible}
        if on_listed is not None:
            on_listed(pool_id, len(eligible), len(others))
        for node_id, state in others.items():
            await self._deliver(
                NodeOutcome(pool_id=pool_id, node_id=node_id, status=OutcomeStatus.SKIPPED, state=state)
            )
        if eligible:
            await self._run_nodes(pool_id, list(eligible))

    async def _collect(self, pool_id: str, filter_: str, into: dict[str, str | None]) -> None:
        async for node in self._backend.list_nodes(pool_id, filter_, self.stats):
            into[node.id] = node.state

    async def _run_nodes(self, pool_id: str, node_ids: NodeSource) -> None:
        feed = _Feed(node_ids)
        pending: dict[str, NodeOutcome] = {}
        crew = _Crew(pool_id, feed, pending)
        if isinstance(node_ids, Sized):
            crew.left = len(node_ids)
            self._backlog(crew.left)
        try:
            try:
                async with self._deadline(self._deadline_at), asyncio.TaskGroup() as group:
                    crew.group = group
                    self._grow(crew)
            except TimeoutError:
                if not self._deadline_passed():
                    raise  # not our deadline
                _log.info("bulk run on %s: deadline reached; ending the remaining nodes", pool_id)
                await self._after_deadline(pool_id, crew.workers, feed)
            finally:
                await feed.close()
            if self._wait and pending:
                await self._wait_done(pool_id, pending)
        except asyncio.CancelledError:
            await self._accepted_on_cancel(pending)
            raise
        finally:
            if crew.left:
                self._backlog(-crew.left)
                crew.left = 0

    async def _accepted_on_cancel(self, pending: dict[str, NodeOutcome]) -> None:
        """The run is cancelled: nodes accepted but still waited for end ``accepted`` (what they are)."""
        while pending:
            _, outcome = pending.popitem()
            await self._deliver(outcome)

    def _grow(self, crew: _Crew) -> None:
        """Start workers up to four per slot in use (``_SPAWN_BATCH`` at a time), none once the input has ended.

        Every worker calls this after each node, so the crew follows the window within a node's round trip.
        """
        full = len(crew.workers) >= _WORKERS_PER_SLOT * self._slots  # the most workers any window could want
        if crew.group is None or crew.feed.ended or full:
            return
        in_use = self._slots if self._window is None else min(self._window(), self._slots)
        wanted = min(_WORKERS_PER_SLOT * max(1, in_use), len(crew.workers) + _SPAWN_BATCH)
        while len(crew.workers) < wanted:
            worker = _Worker()
            crew.workers.append(worker)
            crew.group.create_task(self._work(crew, worker), name="batch-dealloc-worker")

    async def _work(self, crew: _Crew, me: _Worker) -> None:
        pool_id, feed, pending = crew.pool_id, crew.feed, crew.pending
        items = feed.items
        while True:
            if self._room is not None:
                await self._room()
            node_id = next(items, _END) if items is not None else await feed.pull()
            if node_id is _END:
                feed.ended = True
                return
            if self._stopped is not None:
                outcome = self._not_attempted(pool_id, node_id, self._stopped)
            else:
                me.node_id = node_id
                work = self._one(pool_id, node_id)
                observer = self._node_observer
                outcome = await (work if observer is None else observer.node(pool_id, node_id, work))
                me.node_id = None  # no await between the result and here: cancellation cannot lose it
            if crew.left:
                crew.left -= 1
                self._backlog(-1)
            if self._wait and outcome.status is OutcomeStatus.ACCEPTED:
                pending[node_id] = outcome
            else:
                await self._deliver(outcome)
            self._grow(crew)

    async def _after_deadline(self, pool_id: str, workers: list[_Worker], feed: _Feed) -> None:
        """Give an outcome to everything the deadline caught: the requests in flight, and the unread input."""
        for worker in workers:
            if worker.node_id is not None:
                error = BatchTimeoutError(
                    f"{self._action.verb} {pool_id}/{worker.node_id}: the run's deadline passed with the request "
                    "in flight",
                    client_request_id="",
                )
                await self._deliver(
                    NodeOutcome(pool_id=pool_id, node_id=worker.node_id, status=OutcomeStatus.TIMED_OUT, error=error)
                )
        try:
            async with self._deadline(self._clock() + _DRAIN_GRACE):
                while (node_id := await feed.pull()) is not _END:
                    await self._deliver(self._not_attempted(pool_id, node_id))
        except TimeoutError:
            _log.warning("bulk run on %s: the input gave no end within %g s of the deadline", pool_id, _DRAIN_GRACE)

    # ------------------------------------------------------------------------------------------------ one node

    async def _one(self, pool_id: str, node_id: str) -> NodeOutcome:
        try:
            validate_node_id(node_id)
        except ValueError as exc:
            return NodeOutcome(pool_id=pool_id, node_id=str(node_id), status=OutcomeStatus.FAILED, error=exc)
        try:
            result = await self._backend.perform(pool_id, node_id, self.stats)
        except ConflictError as exc:
            state = await self._peek_state(pool_id, node_id)
            if state is not None and state not in self._action.eligible:
                return NodeOutcome(
                    pool_id=pool_id,
                    node_id=node_id,
                    status=OutcomeStatus.SKIPPED,
                    error=exc,
                    attempts=exc.attempts,
                    state=state,
                )
            return self._failed(pool_id, node_id, exc, state=state)
        except BatchDeallocError as exc:
            return self._failed(pool_id, node_id, exc)
        return NodeOutcome(
            pool_id=pool_id,
            node_id=node_id,
            status=OutcomeStatus.ACCEPTED,
            result=result,
            attempts=result.attempts,
            state=self._action.accepted_state,
        )

    def _failed(self, pool_id: str, node_id: str, exc: BatchDeallocError, *, state: str | None = None) -> NodeOutcome:
        if isinstance(exc, _STOPS_THE_RUN) and self._stopped is None:
            _log.warning("bulk run stopped: %s", exc)
            self._stopped = exc
        attempts = getattr(exc, "attempts", 0)
        if isinstance(exc, ServiceDownError) and attempts == 0:
            # Held back by the breaker and never sent: not attempted, and the error says why.
            return NodeOutcome(pool_id=pool_id, node_id=node_id, status=OutcomeStatus.NOT_ATTEMPTED, error=exc)
        return NodeOutcome(
            pool_id=pool_id,
            node_id=node_id,
            status=OutcomeStatus.FAILED,
            error=exc,
            attempts=attempts,
            state=state,
        )

    @staticmethod
    def _not_attempted(pool_id: str, node_id: str, why: BaseException | None = None) -> NodeOutcome:
        return NodeOutcome(pool_id=pool_id, node_id=str(node_id), status=OutcomeStatus.NOT_ATTEMPTED, error=why)

    async def _peek_state(self, pool_id: str, node_id: str) -> str | None:
        """The node's state after a 409, or ``None`` when it cannot be read."""
        try:
            return await self._backend.read_state(pool_id, node_id, self.stats)
        except BatchDeallocError:
            return None

    # ---------------------------------------------------------------------------------------------------- wait

    async def _wait_done(self, pool_id: str, pending: dict[str, NodeOutcome]) -> None:
        """Poll List Nodes (filtered, id and state only) until every pending node is done."""
        polls = ClientStats()
        try:
            await self._poll(pool_id, pending, polls)
        finally:
            self.poll_requests += polls.requests
            self.stats.requests += polls.requests
            self.stats.retries += polls.retries
            self.stats.throttled += polls.throttled

    async def _poll(self, pool_id: str, pending: dict[str, NodeOutcome], polls: ClientStats) -> None:
        action = self._action
        delay = _FIRST_POLL
        filter_ = state_filter(action.watched)
        stopped: BatchDeallocError | None = None
        while pending and stopped is None:
            remaining = self._wait_until - self._clock()
            if remaining <= 0:
                break
            await self._sleep(min(delay, remaining))
            if self._clock() >= self._wait_until:
                break  # a round now would start with no time left
            delay = min(delay * _POLL_GROWTH, _POLL_CAP)
            self.poll_rounds += 1
            try:
                async with self._deadline(self._wait_until):
                    await self._poll_round(pool_id, pending, filter_, polls)
            except TimeoutError:
                break
            except (AuthenticationError, CredentialError) as exc:
                _log.warning("polling %s for %s nodes stopped: %s", pool_id, action.verb, exc)
                stopped = exc  # the same credential will be refused again: stop waiting
            except BatchDeallocError as exc:
                _log.warning("polling %s for %s nodes failed (%s); trying again", pool_id, action.verb, exc)
        for outcome in pending.values():
            error = stopped or BatchTimeoutError(
                f"node {outcome.pool_id}/{outcome.node_id} did not finish {action.verb} in time "
                f"(last state {outcome.state})",
                client_request_id=outcome.result.client_request_id if outcome.result else "",
                attempts=outcome.attempts,
            )
            await self._deliver(attrs.evolve(outcome, status=OutcomeStatus.TIMED_OUT, error=error))
        pending.clear()

    async def _poll_round(
        self, pool_id: str, pending: dict[str, NodeOutcome], filter_: str, polls: ClientStats
    ) -> None:
        """One listing of the watched states: nodes seen done (or failed) end; the others keep their last state."""
        action = self._action
        async for node in self._backend.list_nodes(pool_id, filter_, polls):
            outcome = pending.get(node.id)
            if outcome is None:
                continue
            if node.state in action.done:
                del pending[node.id]
                await self._deliver(attrs.evolve(outcome, status=action.done_status, state=node.state))
            elif node.state in action.failed:
                del pending[node.id]
                error = NodeStateError(pool_id=pool_id, node_id=node.id, state=node.state)
                await self._deliver(attrs.evolve(outcome, status=OutcomeStatus.FAILED, state=node.state, error=error))
            elif node.state != outcome.state:
                pending[node.id] = attrs.evolve(outcome, state=node.state)
