"""OpenTelemetry glue: a span per public call and per HTTP attempt, and the client's metrics; nothing when off.

``opentelemetry-api`` is optional (the ``otel`` extra), and the SDK is never imported: the application configures a
provider (or passes one to the client). ``import batch_dealloc_async`` imports no OpenTelemetry module; a client
imports the API when it opens, if the application uses OpenTelemetry (imported the API, or passed a provider). A
provider the API package defines itself (the proxy that stands in until an application sets one, or a no-op) means
off: no span, no instrument, and each request pays an attribute check. While a client finds no provider it looks
again at most once a second, so a global provider set after it opened is picked up.

A public call's :class:`Scope` rides in a context variable: every request of the call finds it, whether its own
task sends it or a bulk run's workers do (a task inherits the context it was started in). A public method called
while the same client is inside another public call in the same context (``deallocate_pool`` calls
``deallocate_pools``) records no span of its own, as the Azure SDKs suppress nested ones.

What is recorded, and under which names, is in the README's "Observability" section.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, TypeVar

from ._http import ExchangeError
from ._outcomes import OutcomeStatus
from ._version import version

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from ._http import Exchange, Reply
    from ._outcomes import NodeOutcome
    from ._traffic import AdaptiveLimiter

__all__ = ["NAMESPACE", "RunTelemetry", "Scope", "Telemetry", "arguments_of"]

_T = TypeVar("_T")
Attributes = dict[str, "AttributeValue"]

NAMESPACE: Final = "Microsoft.Batch"
INSTRUMENTATION: Final = "batch_dealloc_async"
_LOOK_EVERY: Final = 1.0  # seconds between looks for a global provider while there is none
# Seconds between gauge updates while the limiter moves (in startup it moves on every answer).
_GAUGES_EVERY: Final = 0.1
_MAX_ID: Final = 64  # the longest id the service accepts; a longer (bad) argument is cut in an attribute
_MAX_DESCRIPTION: Final = 300
_MAX_CACHED: Final = 256  # attribute sets kept for reuse (methods x statuses x error types: a few dozen in practice)
# The HTTP semantic conventions' advice for http.client.request.duration (seconds).
_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ARGUMENTS: Final = {"pool_id": "batch.pool.id", "node_id": "batch.node.id"}
_WINDOW: Final = "batch_dealloc_async.limiter.window"
_WINDOW_HELP: Final = "Requests the limiter lets in flight at once."
_RATE: Final = "batch_dealloc_async.limiter.rate"
_RATE_HELP: Final = "The limiter's pacing rate (absent while unpaced)."

# The call in progress in this context, if any. Context-local, not global: each task sees its own.
_SCOPE: Final[ContextVar[Scope | None]] = ContextVar("batch_dealloc_async_scope", default=None)


def _in_use() -> bool:
    """Whether the application may have set a global provider: it imported the API, or names one in the environment.

    Until then the API is not even imported (it costs some 30 ms of CPU), and nothing is on.
    """
    modules = sys.modules
    return (
        "opentelemetry.trace" in modules
        or "opentelemetry.metrics" in modules
        or "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        or "OTEL_PYTHON_METER_PROVIDER" in os.environ
    )


def _from_api(thing: object) -> bool:
    """Whether ``thing`` is one of the API package's own providers, tracers or meters (no-ops and proxies)."""
    return type(thing).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


def error_type(exc: BaseException) -> str:
    """``error.type`` of a failed call: the exception's class, by its public name (``cancelled`` for a cancellation)."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    cls = type(exc)
    module = cls.__module__
    if module.startswith(f"{INSTRUMENTATION}."):
        module = INSTRUMENTATION  # the package's public name, not its private module
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _attempt_error_type(exc: BaseException) -> str:
    """``error.type`` of an attempt with no answer: what the exchange said (``connect``, ``timeout``, ``io``...)."""
    return exc.kind if isinstance(exc, ExchangeError) else error_type(exc)


def arguments_of(
    method: Callable[..., object], names: Sequence[str]
) -> Callable[[tuple[object, ...], Mapping[str, object]], Attributes]:
    """What picks the span attributes (``batch.pool.id``, ``batch.node.id``) out of a public method's arguments.

    The positions are found once, here; only string values are recorded, cut to the longest id there is.
    """
    parameters = list(inspect.signature(method).parameters)[1:]  # after self
    positions = {name: parameters.index(name) for name in names}

    def pick(args: tuple[object, ...], kwargs: Mapping[str, object]) -> Attributes:
        found: Attributes = {}
        for name, index in positions.items():
            value = args[index] if index < len(args) else kwargs.get(name)
            if isinstance(value, str):
                found[_ARGUMENTS[name]] = value[:_MAX_ID]
        return found

    return pick


def _api_create_gauge() -> object:
    """The API's own ``Meter.create_gauge``: a meter that does not override it has no synchronous gauges."""
    from opentelemetry.metrics import Meter  # noqa: PLC0415 (optional; imported only when needed)

    return Meter.create_gauge


class _Otel:
    """The parts of opentelemetry-api in use, imported when a client first looks for a provider."""

    __slots__ = (
        "attach",
        "client",
        "detach",
        "error",
        "in_context",
        "internal",
        "meter_provider",
        "noop_meters",
        "noop_tracers",
        "status",
        "tracer_provider",
    )

    def __init__(self) -> None:
        from opentelemetry import context, metrics, trace  # noqa: PLC0415 (optional; imported only when needed)

        self.attach = context.attach
        self.detach = context.detach
        self.client = trace.SpanKind.CLIENT
        self.internal = trace.SpanKind.INTERNAL
        self.error = trace.StatusCode.ERROR
        self.status = trace.Status
        self.in_context = trace.set_span_in_context
        self.tracer_provider = trace.get_tracer_provider
        self.meter_provider = metrics.get_meter_provider
        self.noop_tracers = trace.NoOpTracerProvider
        self.noop_meters = metrics.NoOpMeterProvider


class _Instruments:
    """The client's instruments on meter ``batch_dealloc_async``."""

    __slots__ = ("duration", "outcomes", "rate", "requests", "retries", "throttled", "window")

    def __init__(self, meter: Meter) -> None:
        description = "Duration of HTTP client requests (one per attempt)."
        self.duration: Histogram
        try:
            self.duration = meter.create_histogram(
                "http.client.request.duration",
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            )
        except TypeError:  # opentelemetry-api older than the advisory: the SDK's default buckets
            self.duration = meter.create_histogram("http.client.request.duration", unit="s", description=description)
        self.requests: Counter = meter.create_counter(
            "batch_dealloc_async.requests", unit="{request}", description="Requests sent, every attempt counted."
        )
        self.retries: Counter = meter.create_counter(
            "batch_dealloc_async.retries", unit="{request}", description="Attempts after the first of a call."
        )
        self.throttled: Counter = meter.create_counter(
            "batch_dealloc_async.throttled", unit="{response}", description="Throttled responses (429, 503 ServerBusy)."
        )
        self.outcomes: Counter = meter.create_counter(
            "batch_dealloc_async.node.outcomes",
            unit="{node}",
            description="Nodes of bulk runs by operation and how they ended.",
        )
        # Synchronous gauges, set when the limiter changes: instruments are shared by every client of a meter, and
        # the SDK keeps only the first callbacks registered under a name, so observable gauges would report one
        # client of a process (and keep it alive). A meter without them (API older than 1.23) gets no gauges.
        gauges = type(meter).create_gauge is not _api_create_gauge()
        self.window = meter.create_gauge(_WINDOW, unit="{request}", description=_WINDOW_HELP) if gauges else None
        self.rate = meter.create_gauge(_RATE, unit="{request}/s", description=_RATE_HELP) if gauges else None


class Telemetry:
    """One client's telemetry: it finds the providers, and opens a :class:`Scope` for each public call.

    Args:
        tracer_provider: The client's ``tracer_provider`` (``None``: the global one).
        meter_provider: The client's ``meter_provider`` (``None``: the global one).
        host: The endpoint's host (``server.address``).
        port: Its port (``server.port``).
        clock: Monotonic seconds (request durations; when to look for a provider again).
        limiter: The client's limiter: it reports its changes here once anything is recorded.
    """

    __slots__ = (
        "_meter_provider",
        "_next_gauges",
        "_next_look",
        "_request_attributes",
        "_tracer_provider",
        "_watch",
        "attempt_base",
        "base",
        "clock",
        "instruments",
        "limiter",
        "on",
        "otel",
        "tracer",
    )

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        host: str,
        port: int,
        clock: Callable[[], float],
        limiter: AdaptiveLimiter,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self.clock = clock
        self.limiter = limiter
        self.base: Attributes = {"server.address": host, "server.port": port}
        self.attempt_base: Attributes = {"az.namespace": NAMESPACE, **self.base}
        self.tracer: Tracer | None = None
        self.instruments: _Instruments | None = None
        self.on = False  # a tracer or a meter was found: only then does anything cost more than this check
        self.otel: _Otel | None = None
        self._watch = True  # something may still be found (a global provider set later)
        self._next_look = float("-inf")
        self._next_gauges = float("-inf")
        self._request_attributes: dict[tuple[str, int | None, str | None], Attributes] = {}

    def __repr__(self) -> str:
        return f"Telemetry(tracing={self.tracer is not None}, metrics={self.instruments is not None})"

    # ------------------------------------------------------------------------------------------ providers

    def look(self) -> bool:
        """Look for the providers, at most once a second while something is missing; whether telemetry is on."""
        if self._watch:
            now = self.clock()
            if now >= self._next_look:
                self._next_look = now + _LOOK_EVERY
                self._resolve()
        return self.on

    def _resolve(self) -> None:
        if self.otel is None:
            if self._tracer_provider is None and self._meter_provider is None and not _in_use():
                return  # nothing can have set a provider yet: look again later
            try:
                self.otel = _Otel()
            except ImportError:  # opentelemetry-api is not installed: off for good
                self._watch = False
                return
        otel = self.otel
        tracers, meters = self._tracer_provider, self._meter_provider
        global_tracers = tracers is None or (_from_api(tracers) and not isinstance(tracers, otel.noop_tracers))
        global_meters = meters is None or (_from_api(meters) and not isinstance(meters, otel.noop_meters))
        if self.tracer is None:
            provider = otel.tracer_provider() if global_tracers or tracers is None else tracers
            if not _from_api(provider):
                tracer = provider.get_tracer(INSTRUMENTATION, version())
                self.tracer = None if _from_api(tracer) else tracer  # the SDK's no-op when OTEL_SDK_DISABLED
        if self.instruments is None:
            meter_provider = otel.meter_provider() if global_meters or meters is None else meters
            if not _from_api(meter_provider):
                meter = meter_provider.get_meter(INSTRUMENTATION, version())
                self.instruments = None if _from_api(meter) else _Instruments(meter)
        self._watch = (self.tracer is None and global_tracers) or (self.instruments is None and global_meters)
        if not self.on and (self.tracer is not None or self.instruments is not None):
            self.on = True
            self.limiter.observer = self
        if self.instruments is not None:
            self.gauges()

    # ------------------------------------------------------------------------------------------------ calls

    def current(self) -> Scope | None:
        """This client's scope in the running context (one of its calls is in progress), else ``None``."""
        scope = _SCOPE.get()
        return scope if scope is not None and scope.owner is self else None

    def _open(self, name: str, attributes: Attributes) -> Scope:
        if self._watch:
            self.look()  # tracing found, metrics not yet (or the other way round): look again now and then
        tracer, otel = self.tracer, self.otel
        if tracer is None or otel is None:
            return Scope(self, None, None)
        attributes["az.namespace"] = NAMESPACE
        span = tracer.start_span(name, kind=otel.internal, attributes=attributes)
        return Scope(self, span, otel.in_context(span))

    async def call(self, name: str, attributes: Attributes, work: Awaitable[_T]) -> _T:
        """Await ``work``, a public call, under a span ``name`` (none when nested in another call of this client)."""
        if self.current() is not None:
            return await work
        scope = self._open(name, attributes)
        otel = self.otel
        token = _SCOPE.set(scope)
        # The call's span is current while it runs (callbacks such as on_outcome see it as their parent).
        attached = otel.attach(scope.context) if otel is not None and scope.context is not None else None
        try:
            return await work
        except BaseException as exc:  # recorded, then raised as it was
            scope.fail(exc)
            raise
        finally:
            if attached is not None and otel is not None:
                otel.detach(attached)
            _SCOPE.reset(token)
            scope.end()
            self.gauges()

    async def stream(self, name: str, attributes: Attributes, items: AsyncIterator[_T]) -> AsyncGenerator[_T]:
        """Iterate ``items``, a public method's async iterator, under a span ``name`` that ends with it.

        The scope is set only while ``items`` computes its next item: between items the caller's code runs in its
        own context, where a call of this client is a call of its own.
        """
        scope = self._open(name, attributes)
        try:
            while True:
                token = _SCOPE.set(scope)
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                finally:
                    _SCOPE.reset(token)
                yield item
        except BaseException as exc:  # recorded (a close by the caller is not a failure), then raised as it was
            if not isinstance(exc, GeneratorExit):
                scope.fail(exc)
            raise
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
            scope.end()
            self.gauges()

    # ---------------------------------------------------------------------------------------------- metrics

    def gauges(self) -> None:
        """Set the limiter's gauges now (a call ended: they are exact when it returns)."""
        if self.instruments is not None:
            self._next_gauges = float("-inf")
            self.traffic_limits(self.limiter.limit, self.limiter.rate)

    def request_attributes(self, method: str, status: int | None, error: str | None) -> Attributes:
        """The attributes of one attempt's metrics (kept for reuse: recording then allocates nothing)."""
        key = (method, status, error)
        found = self._request_attributes.get(key)
        if found is None:
            found = {**self.base, "http.request.method": method}
            if status is not None:
                found["http.response.status_code"] = status
            if error is not None:
                found["error.type"] = error
            if len(self._request_attributes) < _MAX_CACHED:
                self._request_attributes[key] = found
        return found

    # ---------------------------------------------------------------------- the limiter's TrafficObserver

    def traffic_event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        """A state change of traffic control: an event on the span of the call it happened in."""
        scope = self.current()
        if scope is not None:
            scope.root.event(name, dict(attributes))

    def traffic_limits(self, limit: int, rate: float | None) -> None:
        """The limiter's window or rate moved: the gauges, at most every tenth of a second (and after each call)."""
        instruments = self.instruments
        if instruments is None:
            return
        now = self.clock()
        if now < self._next_gauges:
            return
        self._next_gauges = now + _GAUGES_EVERY
        if instruments.window is not None:
            instruments.window.set(limit, self.base)
        if rate is not None and instruments.rate is not None:
            instruments.rate.set(rate, self.base)


class Scope:
    """A public call in progress, or one node of a bulk run: its span (``None`` when not tracing) and its context.

    Args:
        owner: The client's telemetry.
        span: The span, or ``None`` (metrics only).
        context: The OpenTelemetry context holding ``span`` (the parent of what happens inside), or ``None``.
        root: The call's scope, when this is a node's.
    """

    __slots__ = ("context", "owner", "root", "span")

    def __init__(self, owner: Telemetry, span: Span | None, context: Context | None, root: Scope | None = None) -> None:
        self.owner = owner
        self.span = span
        self.context = context
        self.root: Scope = root if root is not None else self

    def child(self, name: str, attributes: Attributes) -> Scope:
        """A scope inside this one (a node of a bulk run), with a span of its own when tracing."""
        owner, tracer, otel = self.owner, self.owner.tracer, self.owner.otel
        if tracer is None or otel is None or self.context is None:
            return Scope(owner, None, None, self.root)
        attributes["az.namespace"] = NAMESPACE
        span = tracer.start_span(name, context=self.context, kind=otel.internal, attributes=attributes)
        return Scope(owner, span, otel.in_context(span), self.root)

    def event(self, name: str, attributes: Attributes) -> None:
        """An event on this scope's span."""
        if self.span is not None:
            self.span.add_event(name, attributes)

    def fail(self, exc: BaseException) -> None:
        """The call raised ``exc``: the span ends with status ERROR."""
        span, otel = self.span, self.owner.otel
        if span is not None and otel is not None:
            span.set_attribute("error.type", error_type(exc))
            span.set_status(otel.status(otel.error, str(exc)[:_MAX_DESCRIPTION]))

    def end(self) -> None:
        """End the span."""
        if self.span is not None:
            self.span.end()

    # ---------------------------------------------------------------------------------------- attempts

    def attempt(self, send: Exchange, client_request_id: str, resend: int) -> Exchange:
        """``send``, recording the next exchange as an attempt of this call (``resend``: attempts before it)."""
        return _Attempt(self, send, client_request_id, resend)

    def throttled(self, status: int, retry_after: float | None) -> None:
        """A throttled answer: an event (with the Retry-After), and the counter."""
        if self.span is not None:
            attributes: Attributes = {"http.response.status_code": status}
            if retry_after is not None:
                attributes["retry_after"] = retry_after
            self.span.add_event("throttled", attributes)
        instruments = self.owner.instruments
        if instruments is not None:
            instruments.throttled.add(1, self.owner.base)


class _Attempt:
    """An :class:`~._http.Exchange` recording one exchange: a CLIENT span under its call's, and the request metrics.

    ``open`` and ``close`` are the wrapped exchange's.
    """

    __slots__ = ("_client_request_id", "_resend", "_scope", "_send")

    def __init__(self, scope: Scope, send: Exchange, client_request_id: str, resend: int) -> None:
        self._scope = scope
        self._send = send
        self._client_request_id = client_request_id
        self._resend = resend

    async def open(self) -> None:
        """Open the wrapped exchange."""
        await self._send.open()

    async def close(self) -> None:
        """Close the wrapped exchange."""
        await self._send.close()

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        """See :meth:`~._http.Exchange.__call__`."""
        span = self._start(method, url)
        clock = self._scope.owner.clock
        started = clock()
        try:
            reply = await self._send(method, url, headers, body, timeout, expected=expected, read_body=read_body)
        except BaseException as exc:  # recorded, then raised as it was
            self._end(
                span, method, status=None, error=_attempt_error_type(exc), request_id=None, seconds=clock() - started
            )
            raise
        status = reply.status
        error = str(status) if status >= 400 else None  # noqa: PLR2004 (every 4xx and 5xx is a failure)
        request_id = reply.headers.get("request-id")
        self._end(span, method, status=status, error=error, request_id=request_id, seconds=clock() - started)
        return reply

    def _start(self, method: str, url: str) -> Span | None:
        scope = self._scope
        owner = scope.owner
        tracer, otel = owner.tracer, owner.otel
        if tracer is None or otel is None or scope.context is None:
            return None
        attributes: Attributes = {
            **owner.attempt_base,
            "http.request.method": method,
            "url.full": url,
            "az.client_request_id": self._client_request_id,
        }
        if self._resend:
            attributes["http.request.resend_count"] = self._resend
        return tracer.start_span(method, context=scope.context, kind=otel.client, attributes=attributes)

    def _end(
        self,
        span: Span | None,
        method: str,
        *,
        status: int | None,
        error: str | None,
        request_id: str | None,
        seconds: float,
    ) -> None:
        owner = self._scope.owner
        otel = owner.otel
        if span is not None and otel is not None:
            ended: Attributes = {}  # one call: the SDK locks and checks the attributes on every call
            if status is not None:
                ended["http.response.status_code"] = status
            if request_id:
                ended["az.service_request_id"] = request_id[:_MAX_ID]
            if error is not None:
                ended["error.type"] = error
                span.set_status(otel.status(otel.error))
            span.set_attributes(ended)
            span.end()
        instruments = owner.instruments
        if instruments is not None:
            attributes = owner.request_attributes(method, status, error)
            instruments.duration.record(max(0.0, seconds), attributes)
            instruments.requests.add(1, attributes)
            if self._resend:
                instruments.retries.add(1, attributes)


class RunTelemetry:
    """What a bulk run records: pool ids and final counts on its call's span, a span per node, outcome metrics.

    It meets the bulk engine's ``RunObserver`` protocol. Nothing is kept per node: a node's span is ended and
    dropped when the node's outcome is known (what the SDK then keeps is up to its sampler and processor).

    Args:
        scope: The scope of the public call running the bulk run.
        verb: ``deallocate`` or ``start``.
    """

    __slots__ = ("_outcome_attributes", "_scope", "_verb", "nodes")

    def __init__(self, scope: Scope, verb: str) -> None:
        self._scope = scope.root
        self._verb = verb
        self._outcome_attributes: dict[str, Attributes] = {}
        self.nodes = self._scope.span is not None  # a span per node (tracing); else only metrics

    def started(self, pool_ids: Sequence[str]) -> None:
        """The run began on these pools."""
        if self._scope.span is not None:
            self._scope.span.set_attribute("batch.pool.ids", list(pool_ids))

    async def node(self, pool_id: str, node_id: str, work: Awaitable[NodeOutcome]) -> NodeOutcome:
        """Await ``work``, one node's part of the run, under a span of its own (requests inside are its children)."""
        scope = self._scope.child(f"{self._verb} node", {"batch.pool.id": pool_id, "batch.node.id": str(node_id)})
        token = _SCOPE.set(scope)
        try:
            outcome = await work
        except BaseException as exc:  # recorded, then raised as it was
            scope.fail(exc)
            scope.end()
            raise
        finally:
            _SCOPE.reset(token)
        span = scope.span
        if span is not None:
            span.set_attributes({"batch.outcome.status": outcome.status.value, "batch.attempts": outcome.attempts})
            if not outcome.ok and outcome.error is not None:
                scope.fail(outcome.error)
            span.end()
        return outcome

    def outcome(self, outcome: NodeOutcome) -> None:
        """A node's final outcome: the outcome counter."""
        instruments = self._scope.owner.instruments
        if instruments is None:
            return
        attributes = self._outcome_attributes.get(outcome.status)
        if attributes is None:
            attributes = {
                **self._scope.owner.base,
                "batch.operation": self._verb,
                "batch.outcome.status": outcome.status.value,
            }
            self._outcome_attributes[outcome.status] = attributes
        instruments.outcomes.add(1, attributes)

    def finished(self, counts: Mapping[str, int]) -> None:
        """The run ended with these counts by status: attributes ``batch.outcomes.<status>`` of the call's span."""
        span = self._scope.span
        if span is not None:
            span.set_attributes({f"batch.outcomes.{status.value}": counts.get(status, 0) for status in OutcomeStatus})
