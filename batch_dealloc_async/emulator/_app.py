"""The emulator's HTTP face: thin aiohttp.web handlers over :class:`BatchState`.

Each request goes: latency before, outage windows, authentication, throttling, injected faults (before), query
checks, the operation, injected faults (after), latency. Errors are the service's BatchError JSON, with its
content type.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import socket
import struct
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .._auth import canonical_query
from ._faults import (
    AFTER_FAULTS,
    BEFORE_FAULTS,
    THROTTLE_FAULTS,
    FaultPicker,
    TokenBucket,
    WindowLimiter,
    scheduled_rate,
)
from ._state import ServiceFault, decode_skiptoken, encode_skiptoken, parse_select, parse_state_filter
from ._stats import Timeline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from multidict import CIMultiDictProxy

    from ._config import EmulatorConfig, Outage
    from ._state import BatchState, Node
    from ._stats import EmulatorStats

__all__ = ["RUNTIME", "Runtime", "make_app"]

API_VERSION: Final = "2025-06-01"
JSON_TYPE: Final = "application/json;odata=minimalmetadata"
_OPTIONS: Final = frozenset({"requeue", "terminate", "taskcompletion", "retaineddata"})
_NO_AUTH_MESSAGE: Final = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly "
    "including the signature."
)
_HTML_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>Microsoft-Azure-Application-Gateway/v2</center>\r\n</body>\r\n</html>\r\n"
)
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_BAD_BODY: Final = "The specified Request Body is not syntactically valid."
_INTERNAL_ERROR: Final = "Server encountered an internal error. Please try again after some time."
_SERVER_BUSY: Final = "The server is currently unable to receive requests. Please retry your request."
_TOO_MANY_REQUESTS: Final = "Request failed as server encountered too many requests. Please try again."
#: The operations whose first request starts the run clock (listing comes before, and does not).
_CLOCK_STARTERS: Final = frozenset({"deallocate", "start"})
_NO_STEP: Final = -1.0  # no schedule step applied yet (steps begin at >= 0)
_ERRORS_METADATA: Final = "Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


def _nothing() -> None:
    pass


def _throttling(config: EmulatorConfig) -> tuple[object, ...]:
    """The settings that make the account's limiter: a change in any of them makes a new one."""
    return (
        config.throttle_rps,
        config.throttle_burst,
        config.throttle_schedule,
        config.throttle_window,
        config.throttle_sliding,
    )


class Runtime:
    """What the handlers share: state, configuration, counters, the bucket, the fault RNG and run time 0.

    Args:
        state: The pools and nodes.
        stats: The counters to bump.
        clock: Monotonic seconds.
        wall_clock: Epoch seconds.
        sleep: Waits for the latencies and the slow fault (injectable, so a test can drive them on its clock).
    """

    def __init__(
        self,
        state: BatchState,
        stats: EmulatorStats,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self.stats = stats
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.endpoint = ""
        self.picker = FaultPicker(state.config.seed)
        self.bucket: TokenBucket | WindowLimiter | None = None
        self.config = state.config
        #: Run time 0 (monotonic), set by the first Deallocate or Start; ``None`` until then.
        self.origin: float | None = None
        #: Called when run time 0 is set or the configuration changes (the emulator's outage watcher).
        self.wake: Callable[[], None] = _nothing
        self._step = _NO_STEP
        self._key = b""
        self._date_cache: tuple[str, float | None] = ("", None)
        self._http_second = -1
        self._http_date = ""
        self.apply(state.config)

    def apply(self, config: EmulatorConfig) -> None:
        """Take a new configuration (``BatchEmulator.update``); the state keeps its nodes, run time 0 is reset."""
        old = self.config
        self.config = config
        self.state.config = config
        self._key = base64.b64decode(config.key)
        self.origin = None
        changed = _throttling(old) != _throttling(config)
        if config.throttle_schedule:
            if changed or self._step == _NO_STEP:
                self.bucket = None  # set by the step in force, at the next request
                self._step = _NO_STEP
        elif config.throttle_rps is None:
            self.bucket = None
        elif self.bucket is None or changed:
            self.bucket = self._limiter(config.throttle_rps)
        self.wake()

    def _limiter(self, rate: float) -> TokenBucket | WindowLimiter:
        """The account's limit at ``rate``: the token bucket, or the window limiter when one is configured."""
        config = self.config
        if config.throttle_window is not None:
            return WindowLimiter(rate, config.throttle_window, self.clock, sliding=config.throttle_sliding)
        return TokenBucket(rate, config.throttle_burst, self.clock)

    def run_time(self, now: float) -> float:
        """Seconds since run time 0 (0 before it is set)."""
        return 0.0 if self.origin is None else now - self.origin

    def start_clock(self, now: float) -> None:
        """Set run time 0 to ``now`` unless it is set; a new run gets a new timeline."""
        if self.origin is None:
            self.origin = now
            self.stats.timeline = Timeline(self.config.timeline_bin)
            self.wake()

    def throttle_rate(self, now: float) -> float | None:
        """The token bucket's rate in force (``None``: unlimited), bringing the bucket to the scheduled step."""
        config = self.config
        if not config.throttle_schedule:
            return config.throttle_rps
        rate, at = scheduled_rate(config.throttle_schedule, self.run_time(now))
        step = _NO_STEP if at is None else at
        if step != self._step:
            self._step = step
            if rate is None:
                self.bucket = None  # unlimited; a later limited step starts with a full bucket
            elif self.bucket is None:
                self.bucket = self._limiter(rate)
            elif self.bucket.rate != rate:
                since = now if self.origin is None else self.origin + step
                self.bucket.set_rate(rate, since)
        return rate

    def outage(self, now: float) -> Outage | None:
        """The outage window in force at ``now``, if any (none before run time 0)."""
        if self.origin is None or not self.config.outages:
            return None
        run_time = now - self.origin
        return next((o for o in self.config.outages if o.covers(run_time)), None)

    def refusal(self, now: float) -> tuple[bool, float | None]:
        """Whether a refuse window is in force at ``now``, and the seconds until that may change (``None``: never)."""
        windows = [o for o in self.config.outages if o.kind == "refuse"]
        if self.origin is None or not windows:
            return False, None
        run_time = now - self.origin
        edges = [edge - run_time for o in windows for edge in (o.start, o.end) if edge > run_time]
        return any(o.covers(run_time) for o in windows), min(edges, default=None)

    def record(self, operation: str, status: int, answered: float | None, *, throttled: bool) -> None:
        """Count a request; an answer given since run time 0 also goes on the timeline."""
        self.stats.requests[(operation, status)] += 1
        origin = self.origin
        if answered is not None and origin is not None and answered >= origin:
            rate = self.throttle_rate(answered)
            self.stats.timeline.add(answered - origin, status, throttled=throttled, rate=rate)

    def http_date(self) -> str:
        """Now, RFC 7231, formatted once per second."""
        now = self.wall_clock()
        second = int(now)
        if second != self._http_second:
            self._http_second = second
            self._http_date = email.utils.formatdate(second, usegmt=True)
        return self._http_date

    def date_epoch(self, text: str) -> float | None:
        """An RFC 7231 date as epoch seconds (the last one is remembered: clients reuse it within a second)."""
        cached_text, cached = self._date_cache
        if text == cached_text:
            return cached
        try:
            parsed = email.utils.parsedate_to_datetime(text)
            epoch = parsed.timestamp() if parsed.tzinfo is not None else None
        except (TypeError, ValueError, IndexError, OverflowError):
            epoch = None
        self._date_cache = (text, epoch)
        return epoch

    def signature(self, string: str) -> str:
        """Base64 HMAC-SHA256 under the account key."""
        return base64.b64encode(hmac.new(self._key, string.encode(), hashlib.sha256).digest()).decode()


RUNTIME: Final = web.AppKey("runtime", Runtime)


class _Reset(Exception):  # noqa: N818 (control flow: the connection was reset on purpose)
    pass


class _Throttled(ServiceFault):
    """A throttling answer (429/503 with the throttling codes): the timeline counts it as throttled."""


# ------------------------------------------------------------------------------------------------- helpers


def _request_id() -> str:
    return str(uuid.uuid4())


def _error_response(runtime: Runtime, fault: ServiceFault, request: web.Request, request_id: str) -> web.Response:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    body: dict[str, Any] = {
        "odata.metadata": f"{runtime.endpoint}/$metadata#{_ERRORS_METADATA}",
        "code": fault.code,
        "message": {"lang": "en-US", "value": f"{fault.message}\nRequestId:{request_id}\nTime:{now}"},
    }
    if fault.values:
        body["values"] = [{"key": k, "value": v} for k, v in fault.values.items()]
    headers = _common_headers(request.headers, request_id)
    headers["Content-Type"] = JSON_TYPE
    headers.update(fault.headers)
    return web.Response(status=fault.status, body=json.dumps(body).encode(), headers=headers)


def _common_headers(request_headers: CIMultiDictProxy[str], request_id: str) -> dict[str, str]:
    headers = {"request-id": request_id, "DataServiceVersion": "3.0"}
    if request_headers.get("return-client-request-id", "").lower() == "true":
        crid = request_headers.get("client-request-id")
        if crid is not None:
            headers["client-request-id"] = crid
    return headers


def _authenticate(runtime: Runtime, request: web.Request) -> None:
    """Shared Key (the documented algorithm, and optionally the Python SDK's timeOut variant) or a Bearer token."""
    auth = request.headers.get("Authorization")
    if auth is None:
        raise ServiceFault(401, "AuthenticationFailed", _NO_AUTH_MESSAGE)
    if auth.startswith("Bearer "):
        token = auth[7:]
        validator = runtime.config.token_validator
        if token in runtime.config.bearer_tokens or (validator is not None and validator(token)):
            return
        # A refused token is a 401 (as Microsoft Entra-protected Azure services answer), so clients refresh.
        raise ServiceFault(401, "AuthenticationFailed", "The access token is invalid or has expired.")
    if not auth.startswith("SharedKey "):
        raise ServiceFault(401, "AuthenticationFailed", _NO_AUTH_MESSAGE)
    _check_shared_key(runtime, request, auth[10:])


def _denied(detail: str) -> ServiceFault:
    return ServiceFault(403, "AuthenticationFailed", _NO_AUTH_MESSAGE, {"AuthenticationErrorDetail": detail})


def _check_shared_key(runtime: Runtime, request: web.Request, credentials: str) -> None:
    headers = request.headers
    account, _, given = credentials.partition(":")
    if account != runtime.config.account_name:
        raise _denied("unknown account")
    ocp_date = headers.get("ocp-date")
    date = ocp_date or headers.get("Date")
    if not date:
        raise _denied("ocp-date or Date required")
    sent = runtime.date_epoch(date)
    if sent is None or abs(runtime.wall_clock() - sent) > runtime.config.max_clock_skew:
        raise _denied("request date out of range")
    ocp = "".join(
        f"{k}:{v}\n" for k, v in sorted((k.lower(), v) for k, v in headers.items() if k.lower().startswith("ocp-"))
    )
    path = request.raw_path.partition("?")[0]
    pairs = tuple(request.query.items())
    # VERB, then Content-Encoding, -Language, -Length, -MD5, -Type, Date (empty when ocp-date is sent),
    # If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range; then ocp-* and the resource.
    head = (
        f"{request.method}\n\n\n{headers.get('Content-Length', '')}\n\n{headers.get('Content-Type', '')}\n"
        f"{'' if ocp_date else date}\n\n\n\n\n\n{ocp}/{account}{path}"
    )
    if hmac.compare_digest(runtime.signature(head + canonical_query(pairs, lowercase_names=True)), given):
        return
    if runtime.config.accept_sdk_timeout_variant:
        variant = head + canonical_query(pairs, lowercase_names=False)
        if hmac.compare_digest(runtime.signature(variant), given):
            runtime.stats.sdk_timeout_signatures += 1
            return
    raise _denied("signature mismatch")


def _outage(runtime: Runtime, request: web.Request, now: float) -> None:
    """In an outage window: a 500 without processing, or a reset in a refuse window.

    (A request can still come in during a refuse window on a connection opened before the listener closed.)
    """
    outage = runtime.outage(now)
    if outage is None:
        return
    runtime.stats.outage_requests += 1
    if outage.kind == "refuse":
        _reset(request)
    raise ServiceFault(500, "InternalError", _INTERNAL_ERROR)


def _throttle(runtime: Runtime, now: float) -> None:
    runtime.throttle_rate(now)
    bucket = runtime.bucket
    if bucket is None:
        return
    wait = bucket.take()
    if wait is None:
        return
    runtime.stats.throttled += 1
    headers = {"Retry-After": TokenBucket.retry_after(wait)}
    if runtime.config.throttle_status == 503:  # noqa: PLR2004 (HTTP status)
        raise _Throttled(503, "ServerBusy", "The server is busy.", headers=headers)
    raise _Throttled(429, "TooManyRequests", "The server is busy, please retry.", headers=headers)


def _check_query(query: Mapping[str, str]) -> None:
    version = query.get("api-version")
    if version is None:
        raise ServiceFault(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified.",
            {"QueryParameterName": "api-version"},
        )
    if version != API_VERSION:
        raise ServiceFault(
            400,
            "UnsupportedRequestVersion",
            "The specified api-version is not supported.",
            {"QueryParameterName": "api-version", "QueryParameterValue": version[:50]},
        )
    timeout = query.get("timeOut") if "timeOut" in query else query.get("timeout")
    if timeout is not None:
        try:
            seconds = int(timeout)
        except ValueError:
            seconds = 0
        if seconds < 1:  # larger than 30 is accepted and treated as 30, as the service does
            raise ServiceFault(
                400,
                "InvalidQueryParameterValue",
                "Value for one of the query parameters specified in the request URI is invalid.",
                {"QueryParameterName": "timeOut", "QueryParameterValue": timeout[:50]},
            )


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP reset, as a crashed front end would."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()
    raise _Reset


def _before_fault(runtime: Runtime, request: web.Request, operation: str, request_id: str) -> web.Response | None:
    faults = runtime.config.faults
    if not faults.any_before or operation not in faults.operations:
        return None
    kind = runtime.picker.pick(faults, BEFORE_FAULTS)
    if kind is None:
        return None
    runtime.stats.faults[kind] += 1
    if kind in THROTTLE_FAULTS:
        runtime.stats.throttled += 1
        if kind == "server_busy":
            seconds = faults.server_busy_retry_after
            headers = {} if seconds is None else {"Retry-After": str(seconds)}
            raise _Throttled(503, "ServerBusy", _SERVER_BUSY, headers=headers)
        headers = {"Retry-After": str(faults.too_many_requests_retry_after)}
        raise _Throttled(429, "TooManyRequests", _TOO_MANY_REQUESTS, headers=headers)
    if kind == "reset_before":
        _reset(request)
    if kind == "html_502":
        return web.Response(status=502, body=_HTML_502, headers={"Content-Type": "text/html"})
    if kind == "truncated_json":
        body = json.dumps({"code": "InternalError", "message": {"lang": "en-US", "value": "Server error"}}).encode()
        headers = {"request-id": request_id, "Content-Type": JSON_TYPE}
        return web.Response(status=500, body=body[: len(body) // 2], headers=headers)
    if kind == "error_503":
        raise ServiceFault(503, "ServiceUnavailable", "The service is temporarily unavailable.")
    raise ServiceFault(500, "InternalError", _INTERNAL_ERROR)


async def _after_fault(runtime: Runtime, request: web.Request, operation: str) -> None:
    faults = runtime.config.faults
    if (faults.reset_after == 0 and faults.slow == 0) or operation not in faults.operations:
        return
    kind = runtime.picker.pick(faults, AFTER_FAULTS)
    if kind is None:
        return
    runtime.stats.faults[kind] += 1
    if kind == "reset_after":
        _reset(request)
    await runtime.sleep(faults.slow_seconds)


# ------------------------------------------------------------------------------------------------ operations


async def _deallocate_body(request: web.Request) -> str:
    if not request.body_exists:
        return "requeue"
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ServiceFault(
            413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum permissible limit."
        ) from None
    if not raw:
        return "requeue"
    try:
        body = json.loads(raw)
    except ValueError:
        raise ServiceFault(400, "InvalidRequestBody", _BAD_BODY) from None
    if not isinstance(body, dict):
        raise ServiceFault(400, "InvalidRequestBody", _BAD_BODY)
    unknown = set(body) - {"nodeDeallocateOption"}
    if unknown:
        raise ServiceFault(
            400,
            "InvalidRequestBody",
            _BAD_BODY,
            {"PropertyName": min(unknown)[:50]},
        )
    option = body.get("nodeDeallocateOption", "requeue")
    if option is None:
        return "requeue"
    if option not in _OPTIONS:
        raise ServiceFault(
            400,
            "InvalidPropertyValue",
            "The value provided for one of the properties in the request body is invalid.",
            {"PropertyName": "nodeDeallocateOption", "PropertyValue": str(option)[:50]},
        )
    return str(option)


def _changed(runtime: Runtime, request: web.Request, node: Node, pool_id: str, request_id: str) -> web.Response:
    headers = _common_headers(request.headers, request_id)
    headers["ETag"] = f"0x8DE{node.index:08X}{node.version:04X}"
    headers["Last-Modified"] = runtime.http_date()
    headers["DataServiceId"] = f"{runtime.endpoint}/pools/{pool_id}/nodes/{node.id}"
    return web.Response(status=202, headers=headers)


async def _operate(runtime: Runtime, request: web.Request, operation: str, request_id: str) -> web.Response:
    info = request.match_info
    state = runtime.state
    if operation == "deallocate":
        option = await _deallocate_body(request)
        node = state.deallocate(info["pool"], info["node"], option)
        return _changed(runtime, request, node, info["pool"], request_id)
    if operation == "start":
        node = state.start(info["pool"], info["node"])
        return _changed(runtime, request, node, info["pool"], request_id)
    query = request.query
    select = parse_select(query.get("$select"))
    if operation == "get":
        node = state.node(info["pool"], info["node"])
        body = state.to_wire(node, runtime.endpoint, info["pool"], select)
        body = {"odata.metadata": f"{runtime.endpoint}/$metadata#nodes/@Element", **body}
        headers = _common_headers(request.headers, request_id)
        headers["ETag"] = f"0x8DE{node.index:08X}{node.version:04X}"
        headers["Last-Modified"] = runtime.http_date()
        headers["Content-Type"] = JSON_TYPE
        return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)
    return _list(runtime, request, info["pool"], select, request_id)


def _list(
    runtime: Runtime, request: web.Request, pool_id: str, select: frozenset[str] | None, request_id: str
) -> web.Response:
    query = request.query
    filter_text = query.get("$filter")
    allowed = parse_state_filter(filter_text) if filter_text is not None else None
    limit_text = query.get("maxresults")
    limit = runtime.config.max_results
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ServiceFault(
                400,
                "InvalidQueryParameterValue",
                "Value for one of the query parameters specified in the request URI is invalid.",
                {"QueryParameterName": "maxresults", "QueryParameterValue": limit_text[:50]},
            ) from None
        if not 1 <= limit <= runtime.config.max_results:
            raise ServiceFault(
                400,
                "OutOfRangeQueryParameterValue",
                "One of the query parameters specified in the request URI is outside the permissible range.",
                {"QueryParameterName": "maxresults", "QueryParameterValue": limit_text[:50]},
            )
    token = query.get("$skiptoken")
    start = decode_skiptoken(token) if token is not None else 0
    state = runtime.state
    nodes, following = state.page(pool_id, allowed, start, limit)
    body: dict[str, Any] = {
        "odata.metadata": f"{runtime.endpoint}/$metadata#nodes",
        "value": [state.to_wire(n, runtime.endpoint, pool_id, select) for n in nodes],
    }
    if following is not None:
        link = request.rel_url.update_query({"$skiptoken": encode_skiptoken(following)})
        body["odata.nextLink"] = f"{runtime.endpoint}{link.raw_path_qs}"
    headers = _common_headers(request.headers, request_id)
    headers["Content-Type"] = JSON_TYPE
    return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)


async def _serve(request: web.Request, operation: str) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    request_id = _request_id()
    status = 0
    answered: float | None = None  # when the answer was decided (before the way back), for the timeline
    throttled = False
    try:
        config = runtime.config
        faults = config.faults
        affected = operation in faults.operations
        if faults.latency_before and affected:
            await runtime.sleep(faults.latency_before)  # the way there: nothing is looked at yet
        now = runtime.clock()
        if operation in _CLOCK_STARTERS:
            runtime.start_clock(now)
        try:
            _outage(runtime, request, now)
            if config.auth:
                try:
                    _authenticate(runtime, request)
                except ServiceFault:
                    runtime.stats.auth_failures += 1
                    raise
            _throttle(runtime, now)
            early = _before_fault(runtime, request, operation, request_id)
            if early is not None:
                response = early
            else:
                _check_query(request.query)
                response = await _operate(runtime, request, operation, request_id)
                await _after_fault(runtime, request, operation)
        except ServiceFault as fault:
            throttled = isinstance(fault, _Throttled)
            response = _error_response(runtime, fault, request, request_id)
        answered = runtime.clock()
        if (faults.latency or faults.latency_jitter) and affected:
            await runtime.sleep(faults.latency + runtime.picker.jitter(faults.latency_jitter))
        status = response.status
    except _Reset:
        status = -1  # counted as status -1: a reset
        answered = runtime.clock()
        raise asyncio.CancelledError from None  # aiohttp drops the (already aborted) connection quietly
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's "client closed request"); no answer to count
        answered = None
        raise
    finally:
        runtime.record(operation, status, answered, throttled=throttled)
    return response


async def _deallocate(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "deallocate")


async def _start(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "start")


async def _get(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "get")


async def _list_nodes(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "list")


async def _unknown(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    fault = ServiceFault(404, "ResourceNotFound", "The specified resource does not exist.")
    return _error_response(runtime, fault, request, _request_id())


async def _stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[RUNTIME].stats.to_dict())


async def _health(request: web.Request) -> web.StreamResponse:
    del request
    return web.json_response({"status": "ok"})


def make_app(runtime: Runtime) -> web.Application:
    """The aiohttp application serving ``runtime``."""
    app = web.Application(client_max_size=1024 * 1024)
    app[RUNTIME] = runtime
    router = app.router
    router.add_get("/_emulator/stats", _stats)
    router.add_get("/_emulator/health", _health)
    router.add_post("/pools/{pool}/nodes/{node}/deallocate", _deallocate)
    router.add_post("/pools/{pool}/nodes/{node}/start", _start)
    router.add_get("/pools/{pool}/nodes/{node}", _get, allow_head=False)
    router.add_get("/pools/{pool}/nodes", _list_nodes, allow_head=False)
    router.add_route("*", "/{tail:.*}", _unknown)
    return app
