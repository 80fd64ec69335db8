"""The client: constructor checks, lifecycle, and public methods that check their arguments and delegate.

Which module does what (and imports which) is drawn in the README's "Architecture" section: the wire
(:mod:`._transport` over :mod:`._http`, with :mod:`._auth` and :mod:`._retry`), the node operations
(:mod:`._operations`), and the bulk engine (:mod:`._bulk`), which sees the operations only through a protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import math
import random
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from . import _request as rq
from ._actions import DEALLOCATE, START, NodeAction
from ._auth import AsyncTokenCredentialLike, SharedKeyCredential, authorizer_for
from ._bulk import DEFAULT_WAIT_TIMEOUT, BulkRun, ListedCallback, NodeSource, OutcomeCallback
from ._http import AiohttpExchange, Exchange
from ._models import (
    BatchNode,
    BatchNodeDeallocateOption,
    BatchNodeDeallocateOptions,
    DeallocateResult,
    StartResult,
)
from ._operations import BulkOperations, NodeOperations
from ._outcomes import BulkReport, ClientStats, NodeOutcome
from ._retry import RetryPolicy
from ._telemetry import RunTelemetry, Telemetry, arguments_of
from ._traffic import AdaptiveLimiter
from ._transport import Transport
from ._version import version

if TYPE_CHECKING:
    import os
    import ssl as ssl_module
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["DEFAULT_MAX_CONCURRENCY", "BatchDeallocClient", "BatchNodesClient"]

DEFAULT_MAX_CONCURRENCY: Final = 512
DEFAULT_STATES: Final = tuple(sorted(DEALLOCATE.eligible))
START_DEFAULT_STATES: Final = tuple(sorted(START.eligible))
_WORKER_SECONDS: Final = 0.1  # bulk runs keep workers for at least this many seconds of the rate (four per slot)

Option = BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None
_P = ParamSpec("_P")
_T = TypeVar("_T")


class _State(enum.Enum):
    UNOPENED = enum.auto()
    OPENED = enum.auto()
    CLOSED = enum.auto()


def _traced(
    *arguments: str,
) -> Callable[
    [Callable[Concatenate[BatchDeallocClient, _P], Awaitable[_T]]],
    Callable[Concatenate[BatchDeallocClient, _P], Coroutine[Any, Any, _T]],
]:
    """A public coroutine method, recorded as a span ``BatchDeallocClient.<name>`` (with ``arguments`` as attributes).

    Off (no provider), a call costs an attribute check and one more frame; see :mod:`._telemetry`.
    """

    def decorate(
        method: Callable[Concatenate[BatchDeallocClient, _P], Awaitable[_T]],
    ) -> Callable[Concatenate[BatchDeallocClient, _P], Coroutine[Any, Any, _T]]:
        name = f"BatchDeallocClient.{method.__name__}"
        pick = arguments_of(method, arguments)

        @functools.wraps(method)
        async def traced(self: BatchDeallocClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            telemetry = self._telemetry
            if not (telemetry.on or telemetry.look()):
                return await method(self, *args, **kwargs)
            return await telemetry.call(name, pick(args, kwargs), method(self, *args, **kwargs))

        return traced

    return decorate


def _traced_stream(
    *arguments: str,
) -> Callable[
    [Callable[Concatenate[BatchDeallocClient, _P], AsyncIterator[_T]]],
    Callable[Concatenate[BatchDeallocClient, _P], AsyncIterator[_T]],
]:
    """:func:`_traced` for a public async generator: the span lasts from the first item to the end of iteration."""

    def decorate(
        method: Callable[Concatenate[BatchDeallocClient, _P], AsyncIterator[_T]],
    ) -> Callable[Concatenate[BatchDeallocClient, _P], AsyncIterator[_T]]:
        name = f"BatchDeallocClient.{method.__name__}"
        pick = arguments_of(method, arguments)

        @functools.wraps(method)
        def traced(self: BatchDeallocClient, /, *args: _P.args, **kwargs: _P.kwargs) -> AsyncIterator[_T]:
            items = method(self, *args, **kwargs)
            telemetry = self._telemetry
            if not (telemetry.on or telemetry.look()) or telemetry.current() is not None:
                return items
            return telemetry.stream(name, pick(args, kwargs), items)

        return traced

    return decorate


class BatchDeallocClient:
    """Deallocates Azure Batch compute nodes; use as ``async with BatchDeallocClient(...) as client``.

    The constructor only checks and stores its arguments (no I/O, no event loop needed); entering the
    context creates the aiohttp session, inside the running loop.

    Args:
        endpoint: The account URL, e.g. ``https://myaccount.westus.batch.azure.com`` (plain http only for a
            loopback host, such as the local emulator).
        credential: A :class:`SharedKeyCredential`, or any token credential (``await get_token(*scopes)``):
            the msal-based credentials of this package, or azure-identity's.
        retry: The retry policy of every call.
        max_concurrency: The most requests in flight at once, shared by everything this client sends. The
            owned connector is sized to it. Adaptive, it is a ceiling: the window in use is sized from the
            rate and the round trip seen (twice their product, plus 8), so the default of 512 lets 1,000
            requests/s through a 300 ms round trip. Fixed, it is the window itself: choose it.
        adaptive: Find the service's rate and pace just under it, telling congestion from noise (default; see
            the README's "Traffic control"), or keep a fixed, unpaced limit of ``max_concurrency``.
        max_rate: A ceiling in requests per second for everything this client sends, so a bulk run leaves room
            in an account whose quota also serves other work (``None``: no ceiling).
        session: An aiohttp session to use instead of an owned one; the client never closes it.
        api_version: The service api-version.
        ssl: A CA bundle path or an ``ssl.SSLContext`` for an owned session; certificates are always
            verified.
        user_agent: Prepended to this library's User-Agent.
        clock: Monotonic seconds, for deadlines and pacing (for tests and simulations).
        sleep: Awaitable sleep, for backoff, pacing and polling (for tests and simulations).
        wall_clock: Epoch seconds, for ``ocp-date`` and token expiry (for tests and simulations).
        rng: Source of backoff jitter (seed it to replay a run).
        exchange: What sends each HTTP request, instead of the aiohttp session (for tests and simulations;
            see :class:`Exchange`). ``session`` and ``ssl`` are then unused.
        tracer_provider: An OpenTelemetry ``TracerProvider`` for this client's spans (default: the global one, once
            the application has set one). See the README's "Observability".
        meter_provider: An OpenTelemetry ``MeterProvider`` for this client's metrics (default: the global one).

    Raises:
        ValueError: a bad endpoint, api-version or limit.
        TypeError: a credential that is neither a Shared Key nor a token credential.
    """

    __slots__ = (
        "_aiohttp",
        "_clock",
        "_endpoint",
        "_operations",
        "_sleep",
        "_state",
        "_telemetry",
        "_transport",
        "stats",
    )

    def __init__(
        self,
        endpoint: str,
        credential: SharedKeyCredential | AsyncTokenCredentialLike,
        *,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        adaptive: bool = True,
        max_rate: float | None = None,
        session: aiohttp.ClientSession | None = None,
        api_version: str = rq.DEFAULT_API_VERSION,
        ssl: ssl_module.SSLContext | str | os.PathLike[str] | None = None,
        user_agent: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        exchange: Exchange | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._endpoint = rq.validate_endpoint(endpoint)
        api_version = rq.validate_api_version(api_version)
        policy = retry if retry is not None else RetryPolicy()
        if not isinstance(policy, RetryPolicy):
            raise TypeError("retry must be a RetryPolicy")
        authorizer = authorizer_for(credential, wall_clock=wall_clock)
        rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not cryptography)
        self.stats = ClientStats()
        limiter = AdaptiveLimiter(
            max_concurrency, adaptive=adaptive, max_rate=max_rate, clock=clock, sleep=sleep, rng=rng, stats=self.stats
        )
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            host=self._endpoint.host,
            port=urlsplit(self._endpoint.base).port or (443 if self._endpoint.scheme == "https" else 80),
            clock=clock,
            limiter=limiter,
        )
        self._aiohttp = AiohttpExchange(session, limit=max_concurrency, ssl=ssl, netloc=self._endpoint.netloc)
        library = f"batch-dealloc-async/{version()} aiohttp/{aiohttp.__version__}"
        self._transport = Transport(
            exchange=exchange if exchange is not None else self._aiohttp,
            authorizer=authorizer,
            limiter=limiter,
            policy=policy,
            stats=self.stats,
            user_agent=f"{user_agent} {library}" if user_agent else library,
            clock=clock,
            sleep=sleep,
            wall_clock=wall_clock,
            rng=rng,
            telemetry=self._telemetry,
        )
        self._operations = NodeOperations(self._transport, rq.RequestFactory(self._endpoint, api_version))
        self._clock = clock
        self._sleep = sleep
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"BatchDeallocClient(endpoint={self._endpoint.base!r}, {self._transport!r})"

    @property
    def endpoint(self) -> str:
        """The account endpoint."""
        return self._endpoint.base

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The client's limiter (read its ``limit``, ``rate`` and ``in_flight`` for progress displays)."""
        return self._transport.limiter

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._transport.policy

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session in use (``None`` until an owned one is opened)."""
        return self._aiohttp.session

    # ------------------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a BatchDeallocClient cannot be reopened; create a new one")
        await self._transport.open()
        self._telemetry.look()  # the providers, as the application has configured them by now
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the owned session (idempotent); a session passed in is left open."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._transport.close()

    def _check_open(self) -> None:
        if self._state is not _State.OPENED:
            state = "closed" if self._state is _State.CLOSED else "not opened"
            raise RuntimeError(f"the client is {state}; use it inside 'async with BatchDeallocClient(...)'")

    # ----------------------------------------------------------------------------------------- one node

    @_traced("pool_id", "node_id")
    async def deallocate_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        option: Option = None,
        timeout: int | None = None,
        client_request_id: str | None = None,
        return_client_request_id: bool = True,
        ocp_date: datetime | None = None,
    ) -> DeallocateResult:
        """Deallocate one compute node (``POST .../pools/{poolId}/nodes/{nodeId}/deallocate``).

        Args:
            pool_id: The pool.
            node_id: The node; it must be ``idle`` or ``running``.
            option: What to do with running tasks; ``None`` sends no body and the service applies
                ``requeue``. ``retaineddata`` is deprecated and warns.
            timeout: Seconds the service may spend (``timeOut``, 1..30); the client waits that plus the
                policy's margin for each attempt.
            client_request_id: The GUID to send on every attempt; generated when not given.
            return_client_request_id: Ask the service to echo the id (and check the echo).
            ocp_date: An aware datetime for the ``ocp-date`` header of the first attempt only (later attempts
                use a fresh date, so a long Retry-After never pushes a retry outside Shared Key's window).

        Returns:
            What the service answered, with the number of attempts.

        Raises:
            ValueError: a bad id, option or timeout (nothing was sent).
            ConflictError: the node is not idle or running (and no earlier ambiguous attempt of this call
                explains it).
            NotFoundError: no such pool or node.
            AuthenticationError: the credential was refused.
            ThrottledError, ServerError, BatchTransportError: still failing when the retries ran out.
        """
        body = rq.deallocate_body(rq.resolve_option(option))
        result = await self._act(
            DEALLOCATE, pool_id, node_id, body, timeout, client_request_id, return_client_request_id, ocp_date
        )
        assert isinstance(result, DeallocateResult)  # noqa: S101 (the action's result class)
        return result

    @_traced("pool_id", "node_id")
    async def start_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        timeout: int | None = None,
        client_request_id: str | None = None,
        return_client_request_id: bool = True,
        ocp_date: datetime | None = None,
    ) -> StartResult:
        """Start one deallocated compute node (``POST .../pools/{poolId}/nodes/{nodeId}/start``, no body).

        The same retries, timeouts and errors as :meth:`deallocate_node`. A ``409`` after an ambiguous attempt
        (a timeout, a reset, a 5xx) is checked with Get Node: ``starting``, ``waitingforstarttask``, ``idle`` or
        ``running`` means the earlier attempt worked (``result.reconciled``).

        Args:
            pool_id: The pool.
            node_id: The node; it must be ``deallocated``.
            timeout: Seconds the service may spend (``timeOut``, 1..30).
            client_request_id: The GUID to send on every attempt; generated when not given.
            return_client_request_id: Ask the service to echo the id (and check the echo).
            ocp_date: An aware datetime for the ``ocp-date`` header of the first attempt only.

        Returns:
            What the service answered, with the number of attempts.

        Raises:
            ValueError: a bad id or timeout (nothing was sent).
            ConflictError: the node is not deallocated (and no earlier ambiguous attempt of this call explains it).
            NotFoundError: no such pool or node.
            AuthenticationError: the credential was refused.
            ThrottledError, ServerError, BatchTransportError, ServiceDownError: still failing in the end.
        """
        result = await self._act(
            START, pool_id, node_id, None, timeout, client_request_id, return_client_request_id, ocp_date
        )
        assert isinstance(result, StartResult)  # noqa: S101 (the action's result class)
        return result

    async def _act(  # noqa: PLR0917 (the public method's arguments, passed on in order)
        self,
        action: NodeAction,
        pool_id: str,
        node_id: str,
        body: bytes | None,
        timeout: int | None,
        client_request_id: str | None,
        echo: bool,  # noqa: FBT001 (private; mirrors return_client_request_id)
        ocp_date: datetime | None,
    ) -> DeallocateResult | StartResult:
        """Check a single action's arguments, then perform it."""
        pool_id = rq.validate_pool_id(pool_id)
        node_id = rq.validate_node_id(node_id)
        service_timeout = rq.validate_service_timeout(timeout)
        crid = rq.check_client_request_id(client_request_id)
        if ocp_date is not None and (not isinstance(ocp_date, datetime) or ocp_date.tzinfo is None):
            raise ValueError("ocp_date must be an aware datetime")
        self._check_open()
        return await self._operations.act(
            action,
            pool_id,
            node_id,
            body=body,
            service_timeout=service_timeout,
            client_request_id=crid,
            echo=bool(echo),
            ocp_date=None if ocp_date is None else ocp_date.timestamp(),
        )

    @_traced("pool_id", "node_id")
    async def get_node(
        self, pool_id: str, node_id: str, *, select: Iterable[str] | None = ("id", "state"), timeout: int | None = None
    ) -> BatchNode:
        """Read one node (``GET .../pools/{poolId}/nodes/{nodeId}``), by default only its id and state.

        Raises:
            ValueError: a bad id, select or timeout.
            NotFoundError: no such pool or node.
        """
        pool_id = rq.validate_pool_id(pool_id)
        node_id = rq.validate_node_id(node_id)
        selected = rq.validate_select(select)
        service_timeout = rq.validate_service_timeout(timeout)
        self._check_open()
        return await self._operations.get_node(pool_id, node_id, select=selected, service_timeout=service_timeout)

    @_traced_stream("pool_id")
    async def list_nodes(
        self,
        pool_id: str,
        *,
        states: Iterable[str] | None = None,
        select: Iterable[str] | None = ("id", "state"),
        max_results: int = rq.MAX_PAGE_SIZE,
        timeout: int | None = None,
    ) -> AsyncIterator[BatchNode]:
        """Iterate a pool's nodes (``GET .../pools/{poolId}/nodes``), following ``odata.nextLink``.

        Args:
            pool_id: The pool.
            states: Only nodes in these states (a ``$filter`` such as ``(state eq 'idle') or ...``).
            select: The properties to return (``$select``); ``None`` for all.
            max_results: Nodes per page, 1..1000 (the service's maximum).
            timeout: Service-side ``timeOut`` of each page request.

        Raises:
            ValueError: bad arguments (before any request).
            NotFoundError: no such pool.
        """
        pool_id = rq.validate_pool_id(pool_id)
        if (
            isinstance(max_results, bool)
            or not isinstance(max_results, int)
            or not 1 <= max_results <= rq.MAX_PAGE_SIZE
        ):
            raise ValueError(f"max_results must be an int of 1..{rq.MAX_PAGE_SIZE}, got {max_results!r}")
        selected = rq.validate_select(select)
        service_timeout = rq.validate_service_timeout(timeout)
        filter_ = rq.state_filter(states) if states is not None else None
        self._check_open()
        async for node in self._operations.list_nodes(
            pool_id, filter_=filter_, select=selected, page_size=max_results, service_timeout=service_timeout
        ):
            yield node

    # ---------------------------------------------------------------------------------------------- bulk

    def _window_in_use(self) -> int:
        """The slots the limiter lets through now (or, once throttled, a tenth of its rate): bulk runs start workers.

        At a short round trip the window is a handful of slots, while the nodes a throttling burst caught sleep
        out their Retry-After (a second, typically) holding their workers: with workers for the window alone, every
        worker could be asleep and nothing sent for that second. Unthrottled, no node sleeps: no more tasks.
        """
        limiter = self._transport.limiter
        rate = limiter.rate
        if rate is None or not limiter.throttle_events:
            return limiter.limit
        return max(limiter.limit, math.ceil(rate * _WORKER_SECONDS))

    def _bulk(
        self,
        action: NodeAction,
        body: bytes | None,
        *,
        timeout: int | None,
        deadline: float | None,
        wait: bool,
        wait_timeout: float,
        on_outcome: OutcomeCallback | None,
    ) -> BulkRun:
        """A bulk run of ``action`` (its arguments checked here, before anything is sent)."""
        service_timeout = rq.validate_service_timeout(timeout)
        run_deadline = rq.validate_deadline(deadline)
        wait_limit = rq.validate_deadline(wait_timeout, "wait_timeout") or DEFAULT_WAIT_TIMEOUT
        self._check_open()
        scope = self._telemetry.current() if self._telemetry.on else None
        return BulkRun(
            BulkOperations(self._operations, action, body, service_timeout),
            action,
            slots=self._transport.limiter.max_concurrency,
            window=self._window_in_use,
            deadline=run_deadline,
            wait=bool(wait),
            wait_timeout=wait_limit,
            on_outcome=on_outcome,
            clock=self._clock,
            sleep=self._sleep,
            client_stats=self.stats,
            observer=None if scope is None else RunTelemetry(scope, action.verb),
            backlog=self._transport.limiter.expect,
        )

    @_traced()
    async def deallocate_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        option: Option = None,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """Deallocate many nodes of one pool concurrently; every node ends with exactly one outcome.

        Args:
            pool_id: The pool.
            node_ids: Any iterable or async iterable of node ids, pulled lazily. A list or tuple is checked
                whole before anything is sent; an id that fails the check in a stream ends ``failed``.
            option: See :meth:`deallocate_node`; one body is built for the whole run.
            wait: Then poll List Nodes (filtered, paged, id and state only) until the accepted nodes are
                ``deallocated``; they end ``deallocated``, or ``timed_out`` with their last state.
            deadline: Seconds for the whole run. Nodes not yet sent end ``not_attempted``; requests in flight
                are cancelled and end ``timed_out``.
            on_outcome: Called with each outcome as it becomes final (awaited when it returns an awaitable).
            timeout: The service ``timeOut`` of each request (1..30).
            wait_timeout: With ``wait`` and no ``deadline``, stop waiting after this many seconds.

        Returns:
            The report: every outcome, counts, failures by code, requests, retries, throttled responses.

        Raises:
            ValueError: a bad pool id, option, timeout or deadline, or a bad id in a list (nothing sent).
        """
        body = rq.deallocate_body(rq.resolve_option(option))
        run = self._bulk(
            DEALLOCATE,
            body,
            timeout=timeout,
            deadline=deadline,
            wait=wait,
            wait_timeout=wait_timeout,
            on_outcome=on_outcome,
        )
        return await run.nodes(_checked_nodes(pool_id, node_ids), node_ids)

    @_traced()
    async def start_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """Start many deallocated nodes of one pool concurrently; every node ends with exactly one outcome.

        As :meth:`deallocate_nodes`, with Start Node. With ``wait``, accepted nodes end ``started`` once seen
        ``idle`` or ``running`` after the request, ``failed`` (with :class:`NodeStateError`) once seen
        ``starttaskfailed`` or ``unusable``, or ``timed_out`` with their last state.

        Raises:
            ValueError: a bad pool id, timeout or deadline, or a bad id in a list (nothing sent).
        """
        run = self._bulk(
            START, None, timeout=timeout, deadline=deadline, wait=wait, wait_timeout=wait_timeout, on_outcome=on_outcome
        )
        return await run.nodes(_checked_nodes(pool_id, node_ids), node_ids)

    @_traced_stream()
    async def iter_deallocate_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        option: Option = None,
        wait: bool = False,
        deadline: float | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> AsyncIterator[NodeOutcome]:
        """Like :meth:`deallocate_nodes`, yielding each outcome as it becomes final; no report is kept.

        Memory stays bounded by the concurrency limit: a slow consumer slows the workers down. Close the
        iterator when leaving early (``contextlib.aclosing``) so that the run stops at once.
        """
        body = rq.deallocate_body(rq.resolve_option(option))
        stream = self._stream(DEALLOCATE, body, pool_id, node_ids, wait, deadline, timeout, wait_timeout)
        async with contextlib.aclosing(stream) as outcomes:
            async for outcome in outcomes:
                yield outcome

    @_traced_stream()
    async def iter_start_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        wait: bool = False,
        deadline: float | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> AsyncIterator[NodeOutcome]:
        """Like :meth:`start_nodes`, yielding each outcome as it becomes final; no report is kept."""
        stream = self._stream(START, None, pool_id, node_ids, wait, deadline, timeout, wait_timeout)
        async with contextlib.aclosing(stream) as outcomes:
            async for outcome in outcomes:
                yield outcome

    def _stream(  # noqa: PLR0917 (the public methods' arguments, in order)
        self,
        action: NodeAction,
        body: bytes | None,
        pool_id: str,
        node_ids: NodeSource,
        wait: bool,  # noqa: FBT001 (private; mirrors the public keyword)
        deadline: float | None,
        timeout: int | None,
        wait_timeout: float,
    ) -> AsyncGenerator[NodeOutcome]:
        """The run's stream of outcomes (arguments checked now); the caller closes it."""
        checked = _checked_nodes(pool_id, node_ids)
        run = self._bulk(
            action, body, timeout=timeout, deadline=deadline, wait=wait, wait_timeout=wait_timeout, on_outcome=None
        )
        return run.stream(checked, node_ids)

    @_traced()
    async def deallocate_pool(
        self,
        pool_id: str,
        *,
        states: Iterable[str] = DEFAULT_STATES,
        option: Option = None,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        on_listed: ListedCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """Deallocate every node of a pool that is in one of ``states``; report the others ``skipped``.

        The pool is listed twice, both before the first deallocation (one snapshot): the eligible nodes
        (``$filter`` on ``states``, ``$select=id,state``, following ``odata.nextLink``), which are then
        deallocated, and the others, which are reported ``skipped`` with their state. A pool that cannot be
        listed is named in ``report.pool_errors`` (and ``report.ok`` is False) rather than raised, so that
        :meth:`deallocate_pools` carries on with the other pools. ``on_listed(pool_id, eligible, others)`` is
        called once per pool when its listing is done (progress displays learn the total there). The other
        arguments are those of :meth:`deallocate_nodes`.

        Raises:
            ValueError: a bad pool id, state, option, timeout or deadline (nothing sent).
        """
        return await self.deallocate_pools(
            [pool_id],
            states=states,
            option=option,
            wait=wait,
            deadline=deadline,
            on_outcome=on_outcome,
            on_listed=on_listed,
            timeout=timeout,
            wait_timeout=wait_timeout,
        )

    @_traced()
    async def deallocate_pools(
        self,
        pool_ids: Iterable[str],
        *,
        states: Iterable[str] = DEFAULT_STATES,
        option: Option = None,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        on_listed: ListedCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """:meth:`deallocate_pool` for several pools at once, under one limiter, deadline and report.

        Raises:
            ValueError: a bad pool id, state, option, timeout or deadline (nothing sent).
        """
        pools, wanted = _checked_pools(pool_ids, states)
        body = rq.deallocate_body(rq.resolve_option(option))
        run = self._bulk(
            DEALLOCATE,
            body,
            timeout=timeout,
            deadline=deadline,
            wait=wait,
            wait_timeout=wait_timeout,
            on_outcome=on_outcome,
        )
        return await run.pools(pools, wanted, on_listed)

    @_traced()
    async def start_pool(
        self,
        pool_id: str,
        *,
        states: Iterable[str] = START_DEFAULT_STATES,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        on_listed: ListedCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """Start every ``deallocated`` node of a pool; report the others ``skipped`` with their state.

        As :meth:`deallocate_pool` (one snapshot, pool errors in the report), with Start Node; the other
        arguments are those of :meth:`start_nodes`.

        Raises:
            ValueError: a bad pool id, state, timeout or deadline (nothing sent).
        """
        return await self.start_pools(
            [pool_id],
            states=states,
            wait=wait,
            deadline=deadline,
            on_outcome=on_outcome,
            on_listed=on_listed,
            timeout=timeout,
            wait_timeout=wait_timeout,
        )

    @_traced()
    async def start_pools(
        self,
        pool_ids: Iterable[str],
        *,
        states: Iterable[str] = START_DEFAULT_STATES,
        wait: bool = False,
        deadline: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        on_listed: ListedCallback | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> BulkReport:
        """:meth:`start_pool` for several pools at once, under one limiter, deadline and report.

        Raises:
            ValueError: a bad pool id, state, timeout or deadline (nothing sent).
        """
        pools, wanted = _checked_pools(pool_ids, states)
        run = self._bulk(
            START, None, timeout=timeout, deadline=deadline, wait=wait, wait_timeout=wait_timeout, on_outcome=on_outcome
        )
        return await run.pools(pools, wanted, on_listed)


BatchNodesClient = BatchDeallocClient
"""The same client under a name for both directions (it deallocates and starts nodes); use either."""


def _checked_nodes(pool_id: object, node_ids: NodeSource) -> str:
    """The pool id, checked; a list or tuple of ids is checked whole (a stream is checked as it is read)."""
    checked = rq.validate_pool_id(pool_id)
    if isinstance(node_ids, list | tuple):
        for node_id in node_ids:
            rq.validate_node_id(node_id)
    return checked


def _checked_pools(pool_ids: Iterable[str], states: Iterable[str]) -> tuple[list[str], tuple[str, ...]]:
    """Distinct pool ids and states, checked."""
    if isinstance(pool_ids, str):
        raise ValueError("pool_ids must be an iterable of pool ids, not one string")
    pools = list(dict.fromkeys(rq.validate_pool_id(p) for p in pool_ids))
    if not pools:
        raise ValueError("pool_ids must name at least one pool")
    wanted = tuple(dict.fromkeys([states] if isinstance(states, str) else states))
    rq.state_filter(wanted)  # checks the states
    return pools, wanted
