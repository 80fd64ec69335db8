"""The async client: one aiohttp session, one limiter, one retry loop per call."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import re
import ssl as ssl_module
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Final, Self, TypeVar

import aiohttp
import cattrs
import yarl

from . import _request as rq
from ._auth import (
    BATCH_SCOPE,
    AsyncTokenCredentialLike,
    SharedKeyCredential,
    TokenCache,
    canonical_query,
    request_string_to_sign,
)
from ._bulk import (
    DEFAULT_WAIT_TIMEOUT,
    BulkEngine,
    ListedCallback,
    NodeSource,
    OutcomeCallback,
    validate_deadline,
)
from ._converter import load_model
from ._errors import (
    AuthenticationError,
    BatchDeallocError,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ConflictError,
    ServerError,
    ThrottledError,
    service_error_class,
)
from ._limiter import AdaptiveLimiter
from ._models import (
    BatchNode,
    BatchNodeDeallocateOption,
    BatchNodeDeallocateOptions,
    BatchNodeListResult,
    BatchNodeState,
    DeallocateResult,
)
from ._outcomes import BulkReport, ClientStats, NodeOutcome
from ._retry import RetryPolicy, build_retrying, parse_retry_after

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from types import TracebackType

    import tenacity
    from multidict import CIMultiDictProxy

__all__ = ["BatchDeallocClient"]

_log = logging.getLogger("batch_dealloc_async")

_ERROR_BODY_CAP: Final = 64 * 1024  # an error body beyond this is not read (a 50 MB HTML page stays on the wire)
_SUCCESS_BODY_CAP: Final = 16 * 1024 * 1024  # a full page of 1,000 nodes is a few MB
_SKIP_WITHOUT_BODY: Final = frozenset({"Content-Type"})  # aiohttp would add application/octet-stream
_RECONCILED_STATES: Final = frozenset({BatchNodeState.DEALLOCATING, BatchNodeState.DEALLOCATED})
_USER_AGENT: Final = f"batch-dealloc-async/0.1.0 aiohttp/{aiohttp.__version__}"
DEFAULT_MAX_CONCURRENCY: Final = 64
_GUID_RE: Final = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
_T = TypeVar("_T")


class _State(enum.Enum):
    UNOPENED = enum.auto()
    OPENED = enum.auto()
    CLOSED = enum.auto()


class _Call:
    """Per-call bookkeeping across attempts (azure-core's settings dict, made explicit and small)."""

    __slots__ = ("ambiguous", "attempts", "client_request_id", "refreshed", "run", "token", "what")

    def __init__(self, client_request_id: str, run: ClientStats | None, what: str) -> None:
        self.client_request_id = client_request_id
        self.run = run
        self.what = what
        self.attempts = 0
        self.ambiguous = False  # an attempt may have taken effect without us seeing the answer
        self.refreshed = False  # a 401 already forced one token refresh
        self.token: str | None = None


class _Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _ssl_context(ssl: ssl_module.SSLContext | str | os.PathLike[str] | None) -> ssl_module.SSLContext | bool:
    if ssl is None:
        return True  # aiohttp's default: verify against the system store
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    return ssl_module.create_default_context(cafile=ssl)


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
            owned connector is sized to it.
        adaptive: Shrink the window and pace the sending rate when the service throttles (default), or keep
            a fixed limit of ``max_concurrency``.
        session: An aiohttp session to use instead of an owned one; the client never closes it.
        api_version: The service api-version.
        ssl: A CA bundle path or an ``ssl.SSLContext`` for an owned session; certificates are always
            verified.
        user_agent: Prepended to this library's User-Agent.
        clock: Monotonic seconds, for deadlines and pacing (for tests and simulations).
        sleep: Awaitable sleep, for backoff and pacing (for tests and simulations).
        wall_clock: Epoch seconds, for ``ocp-date`` and token expiry (for tests and simulations).
        rng: Source of backoff jitter (seed it to replay a run).

    Raises:
        ValueError: a bad endpoint, api-version or limit.
        TypeError: a credential that is neither a Shared Key nor a token credential.
    """

    __slots__ = (
        "_api_version",
        "_clock",
        "_date_second",
        "_date_text",
        "_dealloc_queries",
        "_endpoint",
        "_limiter",
        "_owns_session",
        "_pool_paths",
        "_retry",
        "_rng",
        "_session",
        "_shared_key",
        "_sleep",
        "_ssl",
        "_state",
        "_timeouts",
        "_tokens",
        "_user_agent",
        "_wall_clock",
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
        session: aiohttp.ClientSession | None = None,
        api_version: str = rq.DEFAULT_API_VERSION,
        ssl: ssl_module.SSLContext | str | os.PathLike[str] | None = None,
        user_agent: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._endpoint = rq.validate_endpoint(endpoint)
        self._api_version = rq.validate_api_version(api_version)
        self._retry = retry if retry is not None else RetryPolicy()
        if not isinstance(self._retry, RetryPolicy):
            raise TypeError("retry must be a RetryPolicy")
        self._shared_key: SharedKeyCredential | None = None
        self._tokens: TokenCache | None = None
        if isinstance(credential, SharedKeyCredential):
            self._shared_key = credential
        elif callable(getattr(credential, "get_token", None)):
            self._tokens = TokenCache(credential, scope=BATCH_SCOPE, wall_clock=wall_clock)
        else:
            raise TypeError("credential must be a SharedKeyCredential or have an async get_token(*scopes)")
        self._limiter = AdaptiveLimiter(max_concurrency, adaptive=adaptive, clock=clock, sleep=sleep)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError("session must be an aiohttp.ClientSession")
        self._session = session
        self._owns_session = session is None
        self._ssl = _ssl_context(ssl)
        self._user_agent = f"{user_agent} {_USER_AGENT}" if user_agent else _USER_AGENT
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not cryptography)
        self._state = _State.UNOPENED
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._pool_paths: dict[str, str] = {}
        self._dealloc_queries: dict[int | None, tuple[tuple[tuple[str, str], ...], str]] = {}
        self._date_second = -1
        self._date_text = ""
        self.stats = ClientStats()

    def __repr__(self) -> str:
        auth = "SharedKey" if self._shared_key is not None else "token"
        return f"BatchDeallocClient(endpoint={self._endpoint.base!r}, auth={auth}, limiter={self._limiter!r})"

    @property
    def endpoint(self) -> str:
        """The account endpoint."""
        return self._endpoint.base

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The client's limiter (read its ``limit``, ``rate`` and ``in_flight`` for progress displays)."""
        return self._limiter

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._retry

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a BatchDeallocClient cannot be reopened; create a new one")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limiter.max_concurrency, limit_per_host=0, ssl=self._ssl, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
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
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _check_open(self) -> aiohttp.ClientSession:
        if self._state is not _State.OPENED or self._session is None:
            state = "closed" if self._state is _State.CLOSED else "not opened"
            raise RuntimeError(f"the client is {state}; use it inside 'async with BatchDeallocClient(...)'")
        return self._session

    # ----------------------------------------------------------------------------------------- operations

    async def deallocate_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None = None,
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
        pool_id = rq.validate_id("pool_id", pool_id, rq.POOL_ID_MAX)
        node_id = rq.validate_id("node_id", node_id, rq.NODE_ID_MAX)
        body = rq.deallocate_body(rq.resolve_option(option))
        service_timeout = rq.validate_service_timeout(timeout)
        request = self._deallocate_request(pool_id, node_id, body, service_timeout)
        crid = _check_client_request_id(client_request_id)
        if ocp_date is not None and (not isinstance(ocp_date, datetime) or ocp_date.tzinfo is None):
            raise ValueError("ocp_date must be an aware datetime")
        return await self._deallocate(
            request,
            pool_id,
            node_id,
            service_timeout=service_timeout,
            client_request_id=crid,
            run=None,
            echo=return_client_request_id,
            ocp_date=None if ocp_date is None else ocp_date.timestamp(),
        )

    def _deallocate_request(self, pool_id: str, node_id: str, body: bytes | None, timeout: int | None) -> rq.Request:
        """The Deallocate Node request; the pool's part of the path and the query are built once per client."""
        prefix = self._pool_paths.get(pool_id)
        if prefix is None:
            prefix = f"/pools/{rq.quote_segment(pool_id)}/nodes/"
            if len(self._pool_paths) < 1024:  # noqa: PLR2004 (a bound, not a tuning knob)
                self._pool_paths[pool_id] = prefix
        query = self._dealloc_queries.get(timeout)
        if query is None:
            pairs = [("api-version", self._api_version)]
            if timeout is not None:
                pairs.append(("timeOut", str(timeout)))
            query = self._dealloc_queries[timeout] = (tuple(pairs), rq.encode_query(pairs))
        path = f"{prefix}{rq.quote_segment(node_id)}/deallocate"
        return rq.Request("POST", f"{self._endpoint.base}{path}?{query[1]}", path, query[0], body)

    async def _deallocate(
        self,
        request: rq.Request,
        pool_id: str,
        node_id: str,
        *,
        service_timeout: int | None,
        client_request_id: str | None,
        run: ClientStats | None,
        echo: bool = True,
        ocp_date: float | None = None,
    ) -> DeallocateResult:
        call = _Call(client_request_id or str(uuid.uuid4()), run, f"deallocate {pool_id}/{node_id}")
        return await self._deallocate_call(
            request, pool_id, node_id, call, service_timeout=service_timeout, echo=echo, ocp_date=ocp_date
        )

    async def _deallocate_call(
        self,
        request: rq.Request,
        pool_id: str,
        node_id: str,
        call: _Call,
        *,
        service_timeout: int | None,
        echo: bool = True,
        ocp_date: float | None = None,
        first_error: BatchDeallocError | None = None,
        start: float | None = None,
    ) -> DeallocateResult:
        """The whole call: retries, then the 409 reconciliation.

        ``first_error`` continues the call after a failed first attempt that was sent at ``start``.
        """
        try:
            reply = await self._call(
                request,
                call,
                202,
                service_timeout,
                echo=echo,
                ocp_date=ocp_date,
                first_error=first_error,
                start=start,
            )
        except ConflictError as exc:
            if not call.ambiguous:
                raise
            return await self._reconcile(pool_id, node_id, call, exc)
        return self._accepted(reply, pool_id, node_id, call)

    def _count_accepted(self, call: _Call) -> None:
        """Every path that ends a deallocation as accepted (a 202, or a reconciled 409) passes here once."""
        self.stats.accepted += 1
        if call.run is not None:
            call.run.accepted += 1

    def _accepted(self, reply: _Reply, pool_id: str, node_id: str, call: _Call) -> DeallocateResult:
        self._count_accepted(call)
        headers = reply.headers
        return DeallocateResult(
            pool_id=pool_id,
            node_id=node_id,
            request_id=headers.get("request-id") or None,
            client_request_id=call.client_request_id,
            etag=headers.get("ETag") or None,
            last_modified=rq.parse_http_date_cached(headers.get("Last-Modified")),
            data_service_id=headers.get("DataServiceId") or None,
            attempts=call.attempts,
        )

    async def _bulk_deallocate(
        self, request: rq.Request, pool_id: str, node_id: str, service_timeout: int | None, run: ClientStats
    ) -> DeallocateResult:
        """One node of a bulk run, the first attempt straight to the wire.

        Two coroutine layers fewer per request (measured in benchmarks/); any failure continues through the
        same retry and reconciliation path as :meth:`deallocate_node`.
        """
        call = _Call(str(uuid.uuid4()), run, f"deallocate {pool_id}/{node_id}")
        policy = self._retry
        per_attempt = float(service_timeout or rq.MAX_SERVICE_TIMEOUT) + policy.timeout_margin
        start = self._clock()  # the call's deadline counts from the first attempt
        try:
            reply = await self._attempt(
                self._check_open(),
                request,
                call,
                202,
                self._timeout_for(per_attempt, policy.deadline),
                echo=True,
                ocp_date=None,
            )
        except BatchDeallocError as exc:
            return await self._deallocate_call(
                request, pool_id, node_id, call, service_timeout=service_timeout, first_error=exc, start=start
            )
        return self._accepted(reply, pool_id, node_id, call)

    async def _reconcile(self, pool_id: str, node_id: str, call: _Call, conflict: ConflictError) -> DeallocateResult:
        """An earlier attempt may have worked: a 409 then means 'already deallocating', not failure."""
        _log.debug(
            "deallocate %s/%s: 409 after an ambiguous attempt; confirming the node's state (client-request-id %s)",
            pool_id,
            node_id,
            call.client_request_id,
        )
        query = [("api-version", self._api_version), ("$select", "id,state")]
        request = rq.Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes", node_id), query)
        check = _Call(str(uuid.uuid4()), call.run, f"get {pool_id}/{node_id}")
        try:
            reply = await self._call(request, check, 200, None)
            node = _parse_json(reply.body, BatchNode, check)
        except BatchDeallocError:
            raise conflict from None
        if node.state not in _RECONCILED_STATES:
            raise conflict
        self._count_accepted(call)
        return DeallocateResult(
            pool_id=pool_id,
            node_id=node_id,
            request_id=rq.header(reply.headers, "request-id"),
            client_request_id=call.client_request_id,
            etag=rq.header(reply.headers, "ETag"),
            last_modified=rq.parse_http_date(reply.headers.get("Last-Modified")),
            attempts=call.attempts,
            reconciled=True,
        )

    async def get_node(
        self, pool_id: str, node_id: str, *, select: Iterable[str] | None = ("id", "state"), timeout: int | None = None
    ) -> BatchNode:
        """Read one node (``GET .../pools/{poolId}/nodes/{nodeId}``), by default only its id and state.

        Raises:
            ValueError: a bad id, select or timeout.
            NotFoundError: no such pool or node.
        """
        pool_id = rq.validate_id("pool_id", pool_id, rq.POOL_ID_MAX)
        node_id = rq.validate_id("node_id", node_id, rq.NODE_ID_MAX)
        query = self._read_query(select, timeout)
        return await self._get_node(pool_id, node_id, query, rq.validate_service_timeout(timeout), None)

    async def _get_node(
        self, pool_id: str, node_id: str, query: list[tuple[str, str]], timeout: int | None, run: ClientStats | None
    ) -> BatchNode:
        request = rq.Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes", node_id), query)
        call = _Call(str(uuid.uuid4()), run, f"get {pool_id}/{node_id}")
        reply = await self._call(request, call, 200, timeout)
        return _parse_json(reply.body, BatchNode, call)

    async def _get_node_state(self, pool_id: str, node_id: str, *, run: ClientStats | None) -> BatchNode:
        query = [("api-version", self._api_version), ("$select", "id,state")]
        return await self._get_node(pool_id, node_id, query, None, run)

    async def _list(self, pool_id: str, filter_: str | None, *, run: ClientStats | None) -> AsyncIterator[BatchNode]:
        """Every node of the pool matching ``filter_``, id and state only, 1,000 to a page."""
        query = [("api-version", self._api_version), ("$select", "id,state"), ("maxresults", "1000")]
        if filter_ is not None:
            query.append(("$filter", filter_))
        request = rq.Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes"), query)
        async for page in self._pages(request, pool_id, None, run):
            for node in page.value:
                yield node

    def _read_query(self, select: Iterable[str] | None, timeout: int | None) -> list[tuple[str, str]]:
        query = [("api-version", self._api_version)]
        if select is not None:
            fields = [select] if isinstance(select, str) else list(select)
            if not fields or not all(isinstance(f, str) and f.replace("/", "").isalnum() for f in fields):
                raise ValueError(f"select must be property names such as ('id', 'state'), got {select!r}")
            query.append(("$select", ",".join(fields)))
        if (checked := rq.validate_service_timeout(timeout)) is not None:
            query.append(("timeOut", str(checked)))
        return query

    async def list_nodes(
        self,
        pool_id: str,
        *,
        states: Iterable[str] | None = None,
        select: Iterable[str] | None = ("id", "state"),
        max_results: int = 1000,
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
        pool_id = rq.validate_id("pool_id", pool_id, rq.POOL_ID_MAX)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 1000:  # noqa: PLR2004
            raise ValueError(f"max_results must be an int of 1..1000, got {max_results!r}")
        query = self._read_query(select, timeout)
        query.append(("maxresults", str(max_results)))
        if states is not None:
            query.append(("$filter", rq.state_filter(states)))
        request = rq.Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes"), query)
        async for page in self._pages(request, pool_id, rq.validate_service_timeout(timeout), None):
            for node in page.value:
                yield node

    async def _pages(
        self, request: rq.Request, pool_id: str, service_timeout: int | None, run: ClientStats | None
    ) -> AsyncIterator[BatchNodeListResult]:
        while True:
            call = _Call(str(uuid.uuid4()), run, f"list {pool_id}")
            reply = await self._call(request, call, 200, service_timeout)
            page = _parse_json(reply.body, BatchNodeListResult, call)
            yield page
            if not page.odata_next_link:
                return
            try:
                request = rq.Request.from_link(self._endpoint, page.odata_next_link, self._api_version)
            except ValueError as exc:
                raise BatchTransportError(str(exc), client_request_id=call.client_request_id) from None

    # ------------------------------------------------------------------------------------------- bulk

    def _bulk_engine(
        self,
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None,
        *,
        timeout: int | None,
        deadline: float | None,
        wait: bool,
        wait_timeout: float,
        emit: Callable[[NodeOutcome], object],
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> BulkEngine:
        self._check_open()
        body = rq.deallocate_body(rq.resolve_option(option, stacklevel=4))
        return BulkEngine(
            self,
            body=body,
            service_timeout=rq.validate_service_timeout(timeout),
            deadline=validate_deadline(deadline),
            wait=bool(wait),
            wait_timeout=validate_deadline(wait_timeout, "wait_timeout") or DEFAULT_WAIT_TIMEOUT,
            emit=emit,
            room=room,
        )

    @staticmethod
    def _report(engine: BulkEngine, outcomes: list[NodeOutcome]) -> BulkReport:
        stats = engine.stats
        return BulkReport(
            outcomes=outcomes,
            requests=stats.requests,
            retries=stats.retries,
            throttled=stats.throttled,
            elapsed=engine.elapsed(),
            pool_errors=dict(engine.pool_errors),
            poll_rounds=engine.poll_rounds,
            poll_requests=engine.poll_requests,
        )

    async def deallocate_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None = None,
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
        pool_id = rq.validate_id("pool_id", pool_id, rq.POOL_ID_MAX)
        _check_listed(node_ids)
        outcomes, emit = _collector(on_outcome)

        engine = self._bulk_engine(
            option, timeout=timeout, deadline=deadline, wait=wait, wait_timeout=wait_timeout, emit=emit
        )
        await engine.run_nodes(pool_id, node_ids)
        return self._report(engine, outcomes)

    async def iter_deallocate_nodes(
        self,
        pool_id: str,
        node_ids: NodeSource,
        *,
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None = None,
        wait: bool = False,
        deadline: float | None = None,
        timeout: int | None = None,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> AsyncIterator[NodeOutcome]:
        """Like :meth:`deallocate_nodes`, yielding each outcome as it becomes final; no report is kept.

        Memory stays bounded by the concurrency limit: a slow consumer slows the workers down. Close the
        iterator when leaving early (``contextlib.aclosing``) so that the run stops at once.
        """
        pool_id = rq.validate_id("pool_id", pool_id, rq.POOL_ID_MAX)
        _check_listed(node_ids)
        ready: asyncio.Queue[NodeOutcome | None] = asyncio.Queue()
        room = asyncio.Event()
        bound = 2 * self._limiter.max_concurrency

        async def wait_for_room() -> None:
            while ready.qsize() >= bound:
                room.clear()
                await room.wait()

        engine = self._bulk_engine(
            option,
            timeout=timeout,
            deadline=deadline,
            wait=wait,
            wait_timeout=wait_timeout,
            emit=ready.put_nowait,
            room=wait_for_room,
        )

        async def produce() -> None:
            try:
                await engine.run_nodes(pool_id, node_ids)
            finally:
                ready.put_nowait(None)

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
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def deallocate_pool(
        self,
        pool_id: str,
        *,
        states: Iterable[str] = ("idle", "running"),
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None = None,
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

    async def deallocate_pools(
        self,
        pool_ids: Iterable[str],
        *,
        states: Iterable[str] = ("idle", "running"),
        option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None = None,
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
        if isinstance(pool_ids, str):
            raise ValueError("pool_ids must be an iterable of pool ids, not one string")
        pools = list(dict.fromkeys(rq.validate_id("pool_id", p, rq.POOL_ID_MAX) for p in pool_ids))
        if not pools:
            raise ValueError("pool_ids must name at least one pool")
        wanted = tuple(dict.fromkeys([states] if isinstance(states, str) else states))
        rq.state_filter(wanted)  # checks the states
        outcomes, emit = _collector(on_outcome)

        engine = self._bulk_engine(
            option, timeout=timeout, deadline=deadline, wait=wait, wait_timeout=wait_timeout, emit=emit
        )
        async with asyncio.TaskGroup() as group:
            for pool in pools:
                group.create_task(engine.run_pool(pool, wanted, on_listed), name=f"batch-dealloc-pool-{pool}")
        return self._report(engine, outcomes)

    # ------------------------------------------------------------------------------------------ the wire

    async def _call(
        self,
        request: rq.Request,
        call: _Call,
        expected: int,
        service_timeout: int | None,
        *,
        echo: bool = True,
        ocp_date: float | None = None,
        first_error: BatchDeallocError | None = None,
        start: float | None = None,
    ) -> _Reply:
        session = self._check_open()
        policy = self._retry
        if start is None:
            start = self._clock()
        per_attempt = float(service_timeout or rq.MAX_SERVICE_TIMEOUT) + policy.timeout_margin
        # The first attempt runs outside tenacity: most calls succeed at once, and building a retry loop for
        # each of them costs more CPU than the rest of the call (measured in benchmarks/). A failure is
        # replayed as the loop's first outcome below, so tenacity decides on it exactly as if it had sent it.
        if first_error is None:
            try:
                return await self._attempt(
                    session,
                    request,
                    call,
                    expected,
                    self._timeout_for(per_attempt, policy.deadline),
                    echo=echo,
                    ocp_date=ocp_date,
                )
            except BatchDeallocError as exc:
                first_error = exc
        retry_it = policy.is_retryable(first_error) or self._refresh_after(first_error, call)
        if policy.max_attempts < 2 or not retry_it:  # noqa: PLR2004 (one attempt means no retry)
            raise first_error
        first: BatchDeallocError | None = first_error
        retrying = build_retrying(
            policy,
            start=start,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
            retry_now=lambda exc: self._refresh_after(exc, call, replayed=exc is first_error),
            before_sleep=lambda state: self._before_sleep(state, call),
            count_throttled=call.run is None,  # a bulk run never gives a node up for throttling
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:
                    replay, first = first, None
                    raise replay
                remaining = policy.deadline - (self._clock() - start)
                if remaining <= 0:
                    raise BatchTimeoutError(
                        f"{call.what}: deadline of {policy.deadline:g} s passed",
                        client_request_id=call.client_request_id,
                        attempts=call.attempts,
                    )
                return await self._attempt(
                    session,
                    request,
                    call,
                    expected,
                    self._timeout_for(per_attempt, remaining),
                    echo=echo,
                    ocp_date=None,
                )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _now_http_date(self) -> str:
        """The current ``ocp-date``, formatted once per second rather than once per request."""
        second = int(self._wall_clock())
        if second != self._date_second:
            self._date_second = second
            self._date_text = rq.format_http_date(second)
        return self._date_text

    def _timeout_for(self, per_attempt: float, remaining: float) -> aiohttp.ClientTimeout:
        """The attempt's client timeout; the common value is built once per client."""
        seconds = min(per_attempt, remaining)
        cached = self._timeouts.get(seconds)
        if cached is None:
            cached = aiohttp.ClientTimeout(total=seconds)
            if len(self._timeouts) < 8:  # noqa: PLR2004 (the per-attempt values; a deadline's remainder is not kept)
                self._timeouts[seconds] = cached
        return cached

    def _refresh_after(self, exc: BaseException, call: _Call, *, replayed: bool = False) -> bool:
        """A 401 (or 403 AuthenticationFailed) on a Bearer request: drop the token and resend once."""
        if replayed:
            return True  # the first attempt's 401, already decided on (and the token dropped) above
        if self._tokens is None or call.refreshed or not isinstance(exc, AuthenticationError):
            return False
        if exc.status != 401 and exc.code != "AuthenticationFailed":  # noqa: PLR2004 (HTTP status)
            return False
        call.refreshed = True
        if call.token is not None:
            self._tokens.invalidate(call.token)
        return True

    def _before_sleep(self, state: tenacity.RetryCallState, call: _Call) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        _log.debug(
            "%s: attempt %d failed (%s); retrying in %.3f s (client-request-id %s)",
            call.what,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
            call.client_request_id,
        )

    def _headers(self, request: rq.Request, call: _Call, *, echo: bool, ocp_date: float | None) -> dict[str, str]:
        """The protocol headers of one attempt: a fresh ocp-date every time, the call's client-request-id."""
        headers = {
            "client-request-id": call.client_request_id,
            "ocp-date": rq.format_http_date(ocp_date) if ocp_date is not None else self._now_http_date(),
            "User-Agent": self._user_agent,
        }
        if echo:
            headers["return-client-request-id"] = "true"
        if request.body is not None:
            headers["Content-Type"] = rq.CONTENT_TYPE
        return headers

    def _sign(self, key: SharedKeyCredential, request: rq.Request, headers: dict[str, str]) -> None:
        body = request.body
        to_sign = request_string_to_sign(
            request.method,
            key.account_name,
            request.path,
            canonical_query(request.query, lowercase_names=key.lowercase_query_names),
            ocp_date=headers["ocp-date"],
            length="" if request.method == "GET" else str(len(body)) if body is not None else "0",
            content_type=rq.CONTENT_TYPE if body is not None else "",
        )
        headers["Authorization"] = key.authorization(to_sign)

    async def _bearer(self, headers: dict[str, str], call: _Call) -> None:
        assert self._tokens is not None  # noqa: S101 (one of the two is always set)
        token = await self._tokens.get()
        call.token = token
        headers["Authorization"] = f"Bearer {token}"

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        request: rq.Request,
        call: _Call,
        expected: int,
        attempt_timeout: aiohttp.ClientTimeout,
        *,
        echo: bool,
        ocp_date: float | None,
    ) -> _Reply:
        """Send one attempt and read its answer; every failure becomes one of our typed errors."""
        limiter = self._limiter
        sent_at = limiter.try_acquire()
        if sent_at is None:
            sent_at = await limiter.acquire()
        try:
            call.attempts += 1
            _count(self.stats, call.run, retry=call.attempts > 1)
            headers = self._headers(request, call, echo=echo, ocp_date=ocp_date)
            if self._shared_key is not None:
                self._sign(self._shared_key, request, headers)
            else:
                await self._bearer(headers, call)
            body = request.body
            async with session.request(
                request.method,
                yarl.URL(request.url, encoded=True),
                data=body,
                headers=headers,
                skip_auto_headers=_SKIP_WITHOUT_BODY if body is None else None,
                timeout=attempt_timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                if status != expected:
                    raw = await _read_capped(response, _ERROR_BODY_CAP)
                    raise self._service_error(status, response.headers, raw, call)
                reply = _Reply(
                    status,
                    response.headers,
                    await _read_success(response, call) if request.method == "GET" else b"",
                )
        except ThrottledError as exc:
            self.stats.throttled += 1
            if call.run is not None:
                call.run.throttled += 1
            limiter.on_throttled(sent_at, exc.retry_after)
            raise
        except BatchDeallocError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._transport_error(exc, call, attempt_timeout) from exc
        finally:
            limiter.release()
        limiter.on_success()
        if echo:
            echoed = reply.headers.get("client-request-id")
            if echoed is not None and echoed.lower() != call.client_request_id.lower():
                call.ambiguous = True
                raise BatchTransportError(
                    f"{call.what}: the response echoes client-request-id {echoed[:64]!r}, not ours",
                    client_request_id=call.client_request_id,
                    attempts=call.attempts,
                )
        _log.debug(
            "%s: %d on attempt %d (request-id %s, client-request-id %s)",
            call.what,
            reply.status,
            call.attempts,
            reply.headers.get("request-id"),
            call.client_request_id,
        )
        return reply

    def _transport_error(
        self, exc: BaseException, call: _Call, attempt_timeout: aiohttp.ClientTimeout
    ) -> BatchTransportError:
        if isinstance(exc, aiohttp.ClientConnectorError):
            # Nothing reached the service: safe to retry, and not ambiguous.
            message = f"{call.what}: cannot connect to {self._endpoint.netloc} ({type(exc).__name__})"
            return BatchTransportError(message, client_request_id=call.client_request_id, attempts=call.attempts)
        call.ambiguous = True  # sent, perhaps processed: a later 409 is checked with Get Node
        if isinstance(exc, TimeoutError):
            message = f"{call.what}: no response within {attempt_timeout.total or 0:.1f} s"
            return BatchTimeoutError(message, client_request_id=call.client_request_id, attempts=call.attempts)
        message = f"{call.what}: {type(exc).__name__} from {self._endpoint.netloc}"
        return BatchTransportError(message, client_request_id=call.client_request_id, attempts=call.attempts)

    def _service_error(self, status: int, headers: CIMultiDictProxy[str], raw: bytes, call: _Call) -> BatchServiceError:
        error, snippet = rq.parse_error_body(raw, headers.get("Content-Type"))
        retry_after = parse_retry_after(headers, now=self._wall_clock())
        code = error.code if error is not None else None
        cls = service_error_class(status, code, has_retry_after=retry_after is not None)
        if cls is ServerError:
            call.ambiguous = True  # a 5xx that is not throttling may come after the service acted
        return cls(
            status=status,
            error=error,
            request_id=rq.header(headers, "request-id"),
            client_request_id=call.client_request_id,
            attempts=call.attempts,
            retry_after=retry_after,
            snippet=snippet,
        )


def _check_listed(node_ids: NodeSource) -> None:
    """A list or tuple of ids is checked whole before anything is sent (a stream is checked as it is read)."""
    if isinstance(node_ids, list | tuple):
        for node_id in node_ids:
            rq.validate_id("node_id", node_id, rq.NODE_ID_MAX)


def _collector(on_outcome: OutcomeCallback | None) -> tuple[list[NodeOutcome], Callable[[NodeOutcome], object]]:
    """The report's list of outcomes, and the sink that fills it and calls the caller's callback."""
    outcomes: list[NodeOutcome] = []

    def emit(outcome: NodeOutcome) -> object:
        outcomes.append(outcome)
        return on_outcome(outcome) if on_outcome is not None else None

    return outcomes, emit


def _count(stats: ClientStats, run: ClientStats | None, *, retry: bool) -> None:
    stats.requests += 1
    if retry:
        stats.retries += 1
    if run is not None:
        run.requests += 1
        if retry:
            run.retries += 1


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read at most ``cap`` bytes of a body; the rest stays unread and the connection is then dropped."""
    length = response.content_length
    if length is not None and length <= cap:
        return await response.read()
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        chunk = await response.content.read(cap - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


async def _read_success(response: aiohttp.ClientResponse, call: _Call) -> bytes:
    """A 200's body, refused (unread, or once past the cap) when larger than any real page."""
    declared = response.content_length
    body = (
        b""
        if declared is not None and declared > _SUCCESS_BODY_CAP
        else await _read_capped(response, _SUCCESS_BODY_CAP + 1)
    )
    if len(body) > _SUCCESS_BODY_CAP or (not body and declared):
        raise BatchTransportError(
            f"{call.what}: the answer is larger than {_SUCCESS_BODY_CAP // (1024 * 1024)} MiB; not read",
            client_request_id=call.client_request_id,
            attempts=call.attempts,
        )
    return body


def _parse_json(body: bytes, cls: type[_T], call: _Call) -> _T:
    try:
        return load_model(json.loads(body), cls)
    except (ValueError, TypeError, RecursionError, cattrs.BaseValidationError) as exc:
        raise BatchTransportError(
            f"{call.what}: the response body is not a valid {cls.__name__} ({type(exc).__name__})",
            client_request_id=call.client_request_id,
            attempts=call.attempts,
        ) from None


def _check_client_request_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _GUID_RE.match(value):
        raise ValueError("client_request_id must be a GUID without braces, e.g. 9C4D50EE-2D56-4CD3-8152-34347DC9F2B0")
    return value
