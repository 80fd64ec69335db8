"""The bulk engine: a fixed pool of workers pulls node ids and gives every one exactly one outcome.

Memory is bounded by the number of workers, not the number of nodes: the input is pulled lazily through a
queue of ``workers`` slots, and nothing is kept per node unless ``wait`` needs it (the accepted nodes it polls
for). Every request goes through the client, so the client's one limiter paces all of them together.

Deadline: nodes still in the input, or queued, end ``not_attempted``; requests in flight are cancelled and end
``timed_out``; with ``wait``, accepted nodes not yet ``deallocated`` end ``timed_out`` with their last state.
An authentication failure stops the run: the failed node says why, the rest end ``not_attempted``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from . import _request as rq
from ._errors import AuthenticationError, BatchDeallocError, BatchTimeoutError, ConflictError, CredentialError
from ._models import BatchNodeState
from ._outcomes import ClientStats, NodeOutcome, OutcomeStatus
from ._request import state_filter

if TYPE_CHECKING:
    from ._client import BatchDeallocClient

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "BulkEngine",
    "ListedCallback",
    "NodeSource",
    "OutcomeCallback",
    "validate_deadline",
]

_log = logging.getLogger("batch_dealloc_async")

NodeSource: TypeAlias = Iterable[str] | AsyncIterable[str]
OutcomeCallback: TypeAlias = Callable[[NodeOutcome], object]
ListedCallback: TypeAlias = Callable[[str, int, int], object]

ELIGIBLE_STATES: Final = frozenset({BatchNodeState.IDLE, BatchNodeState.RUNNING})
_WAITING_STATES: Final = (BatchNodeState.DEALLOCATING, BatchNodeState.DEALLOCATED)
_FIRST_POLL: Final = 1.0
_POLL_GROWTH: Final = 1.5
_POLL_CAP: Final = 15.0
DEFAULT_WAIT_TIMEOUT: Final = 3600.0
_WORKERS_PER_SLOT: Final = 4


def validate_deadline(deadline: object, name: str = "deadline") -> float | None:
    """``None`` or a positive number of seconds.

    Raises:
        ValueError: anything else.
    """
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
        raise ValueError(f"{name} must be a positive number of seconds, got {deadline!r}")
    if deadline <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {deadline!r}")
    return float(deadline)


_END: Final[Any] = object()  # the input is exhausted (not None: None in the input is a bad id, not the end)


class _Feed:
    """The input, shared by every worker: a sync iterable is pulled without awaiting, an async one under a lock."""

    __slots__ = ("_aiter", "_lock", "items")

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

    async def pull(self) -> Any:  # noqa: ANN401 (a node id, whatever the caller put in, or _END)
        """The next id, or ``_END``."""
        if self.items is not None:
            return next(self.items, _END)
        assert self._aiter is not None  # noqa: S101 (one of the two is set)
        async with self._lock:
            return await anext(self._aiter, _END)


@attrs.define
class _Worker:
    """The node a worker is sending right now, if any."""

    node_id: str | None = None


class BulkEngine:
    """One bulk run over one or more pools, sharing a deadline, counters and an outcome sink.

    Args:
        client: The open client every request goes through.
        option: The request body (``None`` for none), built once for the run.
        service_timeout: The service ``timeOut`` of each request.
        deadline: Seconds for the whole run, or ``None``.
        wait: Poll until accepted nodes are ``deallocated``.
        wait_timeout: With ``wait`` and no deadline, stop waiting after this many seconds.
        emit: Called with every final outcome, exactly once per node; awaited when it returns an awaitable.
            Its synchronous part runs before any await, so a cancellation never loses an outcome.
        room: Awaited by a worker before it takes the next node (the streaming iterator's backpressure).
    """

    def __init__(
        self,
        client: BatchDeallocClient,
        *,
        body: bytes | None,
        service_timeout: int | None,
        deadline: float | None,
        wait: bool,
        wait_timeout: float,
        emit: Callable[[NodeOutcome], object],
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._body = body
        self._timeout = service_timeout
        self._wait = wait
        self._emit_fn = emit
        self._room = room
        self.stats = ClientStats()
        self.poll_rounds = 0  # with wait: listing rounds, and the requests they took (also in ``stats``)
        self.poll_requests = 0
        self._stopped: BaseException | None = None  # an auth failure stops the run
        self.pool_errors: dict[str, BatchDeallocError] = {}
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._deadline_at = None if deadline is None else self._started + deadline
        self._wait_until = self._deadline_at if self._deadline_at is not None else self._started + wait_timeout
        # More workers than slots: a worker waiting out a Retry-After must not leave a slot idle (with one worker
        # per slot, a burst of 429s stalls the whole run for the Retry-After). The limiter bounds what is sent.
        self._workers = _WORKERS_PER_SLOT * client.limiter.max_concurrency

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return asyncio.get_running_loop().time() - self._started

    async def _deliver(self, outcome: NodeOutcome) -> None:
        returned = self._emit_fn(outcome)
        if inspect.isawaitable(returned):
            await returned

    # ------------------------------------------------------------------------------------------ phases

    async def run_pool(self, pool_id: str, states: tuple[str, ...], on_listed: ListedCallback | None = None) -> None:
        """List the pool, then deallocate the nodes in ``states`` and report the others ``skipped``.

        Both listings (eligible states, and the rest) finish before the first deallocation, so the run
        works on one snapshot: paging never races our own state changes, and no node gets two outcomes.
        """
        eligible: dict[str, str | None] = {}
        others: dict[str, str | None] = {}
        complement = " and ".join(f"(state ne '{s}')" for s in states)
        try:
            async with asyncio.timeout_at(self._deadline_at):
                await self._collect(pool_id, state_filter(states), eligible)
                await self._collect(pool_id, complement, others)
        except TimeoutError:
            if not self._deadline_passed():
                raise
        except BatchDeallocError as exc:
            # The pool could not be listed: report what was found, deallocate nothing of a partial snapshot.
            _log.warning("listing pool %s failed: %s", pool_id, exc)
            self.pool_errors[pool_id] = exc
            if isinstance(exc, AuthenticationError | CredentialError):
                self._stopped = exc
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
            await self.run_nodes(pool_id, list(eligible))

    async def _collect(self, pool_id: str, filter_: str, into: dict[str, str | None]) -> None:
        async for node in self._client._list(pool_id, filter_, run=self.stats):  # noqa: SLF001
            into[node.id] = node.state

    async def run_nodes(self, pool_id: str, node_ids: NodeSource) -> None:
        """Deallocate every node of ``node_ids``; with ``wait``, then poll until they are deallocated.

        Args:
            pool_id: The pool.
            node_ids: The ids, pulled lazily by the workers.
        """
        feed = _Feed(node_ids)
        pending: dict[str, NodeOutcome] = {}
        workers = [_Worker() for _ in range(self._workers)]
        try:
            async with asyncio.timeout_at(self._deadline_at), asyncio.TaskGroup() as group:
                for worker in workers:
                    group.create_task(self._work(pool_id, feed, worker, pending), name="batch-dealloc-worker")
        except TimeoutError:
            if not self._deadline_passed():
                raise  # not our deadline
            _log.info("bulk run on %s: deadline reached; ending the remaining nodes", pool_id)
            await self._after_deadline(pool_id, workers, feed)
        if self._wait and pending:
            await self._wait_deallocated(pool_id, pending)

    async def _work(self, pool_id: str, feed: _Feed, me: _Worker, pending: dict[str, NodeOutcome]) -> None:
        items = feed.items
        while True:
            if self._room is not None:
                await self._room()
            node_id = next(items, _END) if items is not None else await feed.pull()
            if node_id is _END:
                return
            if self._stopped is not None:
                outcome = self._not_attempted(pool_id, node_id)
            else:
                me.node_id = node_id
                outcome = await self._deallocate_one(pool_id, node_id)
                me.node_id = None  # no await between the result and here: cancellation cannot lose it
            if self._wait and outcome.status is OutcomeStatus.ACCEPTED:
                pending[node_id] = outcome
            else:
                await self._deliver(outcome)

    async def _after_deadline(self, pool_id: str, workers: list[_Worker], feed: _Feed) -> None:
        """Give an outcome to everything the deadline caught: the requests in flight, and the unread input."""
        for worker in workers:
            if worker.node_id is not None:
                error = BatchTimeoutError(
                    f"deallocate {pool_id}/{worker.node_id}: the run's deadline passed with the request in flight",
                    client_request_id="",
                )
                await self._deliver(
                    NodeOutcome(pool_id=pool_id, node_id=worker.node_id, status=OutcomeStatus.TIMED_OUT, error=error)
                )
        while (node_id := await feed.pull()) is not _END:
            await self._deliver(self._not_attempted(pool_id, node_id))

    # --------------------------------------------------------------------------------------- one node

    async def _deallocate_one(self, pool_id: str, node_id: str) -> NodeOutcome:
        client = self._client
        try:
            rq.validate_id("node_id", node_id, rq.NODE_ID_MAX)
        except ValueError as exc:
            return NodeOutcome(pool_id=pool_id, node_id=str(node_id), status=OutcomeStatus.FAILED, error=exc)
        request = client._deallocate_request(pool_id, node_id, self._body, self._timeout)  # noqa: SLF001
        try:
            result = await client._bulk_deallocate(  # noqa: SLF001 (the engine is the client's own bulk half)
                request, pool_id, node_id, self._timeout, self.stats
            )
        except ConflictError as exc:
            state = await self._peek_state(pool_id, node_id)
            if state is not None and state not in ELIGIBLE_STATES:
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
            state=BatchNodeState.DEALLOCATING.value,
        )

    def _failed(self, pool_id: str, node_id: str, exc: BatchDeallocError, *, state: str | None = None) -> NodeOutcome:
        if isinstance(exc, AuthenticationError | CredentialError) and self._stopped is None:
            _log.warning("bulk run stopped: %s", exc)
            self._stopped = exc
        return NodeOutcome(
            pool_id=pool_id,
            node_id=node_id,
            status=OutcomeStatus.FAILED,
            error=exc,
            attempts=getattr(exc, "attempts", 0),
            state=state,
        )

    def _not_attempted(self, pool_id: str, node_id: str) -> NodeOutcome:
        return NodeOutcome(pool_id=pool_id, node_id=str(node_id), status=OutcomeStatus.NOT_ATTEMPTED)

    async def _peek_state(self, pool_id: str, node_id: str) -> str | None:
        """The node's state after a 409, or ``None`` when it cannot be read."""
        try:
            node = await self._client._get_node_state(pool_id, node_id, run=self.stats)  # noqa: SLF001
        except BatchDeallocError:
            return None
        return node.state

    # ------------------------------------------------------------------------------------------- wait

    async def _wait_deallocated(self, pool_id: str, pending: dict[str, NodeOutcome]) -> None:
        """Poll List Nodes (filtered, id and state only) until every pending node is deallocated."""
        polls = ClientStats()
        try:
            await self._poll(pool_id, pending, polls)
        finally:
            self.poll_requests += polls.requests
            self.stats.requests += polls.requests
            self.stats.retries += polls.retries
            self.stats.throttled += polls.throttled

    async def _poll(self, pool_id: str, pending: dict[str, NodeOutcome], polls: ClientStats) -> None:
        loop = asyncio.get_running_loop()
        delay = _FIRST_POLL
        filter_ = state_filter(_WAITING_STATES)
        while pending:
            remaining = self._wait_until - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * _POLL_GROWTH, _POLL_CAP)
            self.poll_rounds += 1
            try:
                async with asyncio.timeout_at(self._wait_until):
                    async for node in self._client._list(pool_id, filter_, run=polls):  # noqa: SLF001
                        outcome = pending.get(node.id)
                        if outcome is None:
                            continue
                        if node.state == BatchNodeState.DEALLOCATED:
                            del pending[node.id]
                            await self._deliver(
                                attrs.evolve(outcome, status=OutcomeStatus.DEALLOCATED, state=node.state)
                            )
                        elif node.state != outcome.state:
                            pending[node.id] = attrs.evolve(outcome, state=node.state)
            except TimeoutError:
                break
            except BatchDeallocError as exc:
                _log.warning("polling %s for deallocated nodes failed (%s); trying again", pool_id, exc)
        for outcome in pending.values():
            error = BatchTimeoutError(
                f"node {outcome.pool_id}/{outcome.node_id} was not deallocated in time (last state {outcome.state})",
                client_request_id=outcome.result.client_request_id if outcome.result else "",
                attempts=outcome.attempts,
            )
            await self._deliver(attrs.evolve(outcome, status=OutcomeStatus.TIMED_OUT, error=error))
        pending.clear()

    def _deadline_passed(self) -> bool:
        return self._deadline_at is not None and asyncio.get_running_loop().time() >= self._deadline_at
