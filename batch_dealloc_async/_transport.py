"""The wire: one attempt, and the retry loop around it (botocore's ``_get_response`` and ``_send_request``).

:class:`Transport` owns what every request shares: the HTTP exchange (and so the aiohttp session), the limiter,
the authorizer, the counters and the injected time. :meth:`Transport.send` is the retry loop
(:func:`~._retry.call_with_retries`) around :meth:`Transport._attempt`, which takes a limiter slot, sets the
attempt's headers, authorizes, exchanges, and turns the answer into a :class:`~._http.Reply` or one of our
typed errors. Nothing here knows what a node is.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Final

from . import _request as rq
from ._errors import (
    AuthenticationError,
    BatchDeallocError,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ServerError,
    ServiceDownError,
    ThrottledError,
    service_error_class,
)
from ._http import ExchangeError
from ._retry import call_with_retries, parse_retry_after
from ._traffic import Feedback

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Mapping

    from ._auth import Authorizer
    from ._http import Exchange, Reply
    from ._outcomes import ClientStats
    from ._retry import RetryPolicy
    from ._telemetry import Scope, Telemetry
    from ._traffic import AdaptiveLimiter

__all__ = ["LOGGED_HEADERS", "Call", "Transport", "loggable_headers"]

_log = logging.getLogger(__name__)

# Response headers whose values a log line may show (azure-core's HttpLoggingPolicy keeps such an allow-list); any
# other header is named with its value redacted. No request header is ever logged (Authorization is one).
LOGGED_HEADERS: Final = frozenset(
    {
        "client-request-id",
        "content-length",
        "content-type",
        "date",
        "dataserviceversion",
        "etag",
        "last-modified",
        "request-id",
        "retry-after",
        "retry-after-ms",
        "server",
        "x-ms-retry-after-ms",
    }
)


def loggable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` for a log line: values of :data:`LOGGED_HEADERS` as they are (cut short), others ``REDACTED``."""
    return {
        name: value[:128] if name.lower() in LOGGED_HEADERS else "REDACTED"
        for name, value in list(headers.items())[:32]
    }


class Call:
    """One call's bookkeeping across its attempts (azure-core's settings dict, made explicit and small).

    Args:
        what: How messages name the call (``deallocate pool/node``).
        client_request_id: Sent on every attempt; generated when not given.
        run: The bulk run's counters, also bumped (``None`` outside a run).
        echo: Ask the service to echo the client-request-id, and check the echo.
        ocp_date: An ``ocp-date`` (epoch seconds) for the first attempt only.
    """

    __slots__ = (
        "ambiguous",
        "attempts",
        "client_request_id",
        "credential",
        "echo",
        "failed",
        "ocp_date",
        "refreshed",
        "run",
        "trace",
        "what",
    )

    def __init__(
        self,
        what: str,
        *,
        client_request_id: str | None = None,
        run: ClientStats | None = None,
        echo: bool = True,
        ocp_date: float | None = None,
    ) -> None:
        self.what = what
        self.client_request_id = client_request_id or str(uuid.uuid4())
        self.run = run
        self.echo = echo
        self.ocp_date = ocp_date
        self.attempts = 0
        self.ambiguous = False  # an attempt may have taken effect without us seeing the answer
        self.refreshed = False  # a refusal already made the authorizer resend once
        self.failed = False  # the last attempt failed (5xx, no answer): the next one is a retry on the budget
        self.credential: str | None = None  # what the last attempt was authorized with (a token to drop if refused)
        self.trace: Scope | None = None  # the public call's telemetry scope, when the client records any

    def failed_exchange(self, exc: ExchangeError) -> BatchTransportError:
        """Our error for an exchange that gave no usable answer; one that may have been sent is ambiguous."""
        if exc.sent:
            self.ambiguous = True  # sent, perhaps processed: a later 409 is checked with Get Node
        if exc.kind == "timeout":
            return self.timeout_error(exc.detail)
        return self.transport_error(exc.detail)

    def check_echo(self, echoed: str | None) -> None:
        """The echoed client-request-id, when there is one, must be ours (else the answer is someone else's).

        Raises:
            BatchTransportError: another id came back.
        """
        if echoed is not None and echoed.lower() != self.client_request_id.lower():
            self.ambiguous = True
            raise self.transport_error(f"the response echoes client-request-id {echoed[:64]!r}, not ours")

    def timeout_error(self, message: str) -> BatchTimeoutError:
        """A timeout error naming this call."""
        return BatchTimeoutError(
            f"{self.what}: {message}", client_request_id=self.client_request_id, attempts=self.attempts
        )

    def transport_error(self, message: str) -> BatchTransportError:
        """A transport error naming this call."""
        return BatchTransportError(
            f"{self.what}: {message}", client_request_id=self.client_request_id, attempts=self.attempts
        )


class Transport:
    """Sends requests: a limiter slot, headers, authorization and retries for each.

    Args:
        exchange: The HTTP exchange (opened and closed with the transport).
        authorizer: Signs or tokens every attempt.
        limiter: Every attempt holds one of its slots while in flight.
        policy: The retry policy of every call.
        stats: The client's counters.
        user_agent: The User-Agent header.
        clock: Monotonic seconds (deadlines, the limiter).
        sleep: Awaitable sleep (backoff).
        wall_clock: Epoch seconds (``ocp-date``, Retry-After dates).
        rng: Jitter.
        telemetry: The client's telemetry (its spans and metrics of each attempt).
    """

    __slots__ = (
        "_authorizer",
        "_clock",
        "_date_second",
        "_date_text",
        "_exchange",
        "_rng",
        "_sleep",
        "_telemetry",
        "_user_agent",
        "_wall_clock",
        "limiter",
        "policy",
        "stats",
    )

    def __init__(
        self,
        *,
        exchange: Exchange,
        authorizer: Authorizer,
        limiter: AdaptiveLimiter,
        policy: RetryPolicy,
        stats: ClientStats,
        user_agent: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        wall_clock: Callable[[], float],
        rng: random.Random,
        telemetry: Telemetry,
    ) -> None:
        self._exchange = exchange
        self._authorizer = authorizer
        self.limiter = limiter
        self.policy = policy
        self.stats = stats
        self._user_agent = user_agent
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng
        self._telemetry = telemetry
        self._date_second = -1
        self._date_text = ""

    def __repr__(self) -> str:
        return f"Transport(authorizer={self._authorizer!r}, limiter={self.limiter!r})"

    async def open(self) -> None:
        """Open the exchange, inside the running loop."""
        await self._exchange.open()

    async def close(self) -> None:
        """Close the exchange, and stop the limiter's timer."""
        await self.limiter.close()
        await self._exchange.close()

    # -------------------------------------------------------------------------------------------- the loop

    def send(self, request: rq.Request, call: Call, *, expected: int, service_timeout: int | None) -> Awaitable[Reply]:
        """Send ``request`` until it is answered ``expected``, or the retry policy gives up.

        Args:
            request: The request (the same for every attempt; dates and signatures are per attempt).
            call: The call's bookkeeping.
            expected: The success status (202 for actions, 200 for reads).
            service_timeout: The ``timeOut`` the request carries (the attempt timeout is that plus the margin).

        Raises:
            BatchDeallocError: the last attempt's error.
        """
        policy = self.policy
        per_attempt = float(service_timeout or rq.MAX_SERVICE_TIMEOUT) + policy.timeout_margin
        if self._telemetry.on:
            call.trace = self._telemetry.current()
        return call_with_retries(
            lambda remaining: self._attempt(request, call, expected, per_attempt, remaining),
            policy=policy,
            clock=self._clock,
            sleep=self.limiter.backoff,  # the injected sleep, cut short when the service comes back from an outage
            rng=self._rng,
            on_retry=lambda number, exc, delay: _log.debug(
                "%s: attempt %d failed (%s); retrying in %.3f s (client-request-id %s)",
                call.what,
                number,
                exc,
                delay,
                call.client_request_id,
            ),
            count_throttled=call.run is None,  # a bulk run never gives a node up for throttling
            paced=self.limiter.adaptive,
        )

    # ------------------------------------------------------------------------------------- one attempt

    def _attempt(
        self, request: rq.Request, call: Call, expected: int, per_attempt: float, remaining: float
    ) -> Awaitable[Reply]:
        """One attempt: a request out, and after a refused token at most one resend (the authorizer decides).

        Not a coroutine of its own unless the authorizer may resend: every frame between the bulk engine and the
        socket is resumed on every wake-up of the request.
        """
        if remaining <= 0:
            raise call.timeout_error(f"deadline of {self.policy.deadline:g} s passed")
        timeout = min(per_attempt, remaining)
        if not self._authorizer.resends:
            return self._exchange_once(request, call, expected, timeout)
        return self._attempt_resending(request, call, expected, timeout)

    async def _attempt_resending(self, request: rq.Request, call: Call, expected: int, timeout: float) -> Reply:
        try:
            return await self._exchange_once(request, call, expected, timeout)
        except AuthenticationError as exc:
            if call.refreshed or not self._authorizer.refused(exc, call.credential):
                raise
            call.refreshed = True
        return await self._exchange_once(request, call, expected, timeout)

    async def _exchange_once(self, request: rq.Request, call: Call, expected: int, timeout: float) -> Reply:
        """Hold a limiter slot, send, and classify the answer; every failure becomes one of our typed errors."""
        limiter = self.limiter
        sent_at = limiter.try_acquire()
        if sent_at is None:
            sent_at = await self._acquire(call)
        try:
            call.attempts += 1
            self._count(call)
            headers = self._headers(request, call)
            call.credential = await self._authorizer.authorize(request, headers)
            trace = call.trace
            exchange = (
                self._exchange
                if trace is None
                else trace.attempt(self._exchange, call.client_request_id, call.attempts - 1)
            )
            reply = await exchange(
                request.method,
                request.url,
                headers,
                request.body,
                timeout,
                expected=expected,
                read_body=request.method == "GET",
            )
            if reply.status != expected:
                raise self._service_error(reply, call)
        except ThrottledError as exc:
            self.stats.throttled += 1
            if call.run is not None:
                call.run.throttled += 1
            if call.trace is not None:
                call.trace.throttled(exc.status, exc.retry_after)
            call.failed = False
            limiter.feedback(sent_at, Feedback.THROTTLED)
            raise
        except ServerError as exc:
            call.failed = True
            limiter.feedback(sent_at, Feedback.FAILED, exc)
            raise
        except BatchDeallocError:
            limiter.feedback(sent_at, Feedback.OTHER)
            raise
        except ExchangeError as exc:
            error = call.failed_exchange(exc)
            _log.debug(
                "%s: no answer to attempt %d (%s; client-request-id %s)",
                call.what,
                call.attempts,
                exc.detail,
                call.client_request_id,
            )
            call.failed = True
            limiter.feedback(sent_at, Feedback.FAILED, error)
            raise error from exc
        finally:
            limiter.release()
        limiter.feedback(sent_at, Feedback.OK)
        if call.echo:
            call.check_echo(reply.headers.get("client-request-id"))
        _log.debug(
            "%s: %d on attempt %d (request-id %s, client-request-id %s)",
            call.what,
            reply.status,
            call.attempts,
            reply.headers.get("request-id"),
            call.client_request_id,
        )
        return reply

    async def _acquire(self, call: Call) -> float:
        """The limiter's slow path: a retry after a failure spends retry budget; an outage may end the wait.

        Raises:
            ServiceDownError: the service has failed everything for a while (named for this call).
        """
        try:
            return await self.limiter.acquire(retry=call.failed)
        except ServiceDownError as exc:
            message = f"{call.what}: {exc.args[0]}; not sent" if call.attempts == 0 else f"{call.what}: {exc.args[0]}"
            raise ServiceDownError(
                message,
                last_error=exc.last_error,
                client_request_id=call.client_request_id,
                attempts=call.attempts,
            ) from None

    def _count(self, call: Call) -> None:
        retry = call.attempts > 1
        stats = self.stats
        stats.requests += 1
        if retry:
            stats.retries += 1
        run = call.run
        if run is not None:
            run.requests += 1
            if retry:
                run.retries += 1

    def _headers(self, request: rq.Request, call: Call) -> dict[str, str]:
        """The protocol headers of one attempt: a fresh ocp-date every time, the call's client-request-id."""
        if call.ocp_date is not None:
            date = rq.format_http_date(call.ocp_date)
            call.ocp_date = None  # the caller's date goes on the first attempt only
        else:
            date = self._now_http_date()
        headers = {"client-request-id": call.client_request_id, "ocp-date": date, "User-Agent": self._user_agent}
        if call.echo:
            headers["return-client-request-id"] = "true"
        if request.body is not None:
            headers["Content-Type"] = rq.CONTENT_TYPE
        return headers

    def _now_http_date(self) -> str:
        """The current ``ocp-date``, formatted once per second rather than once per request."""
        second = int(self._wall_clock())
        if second != self._date_second:
            self._date_second = second
            self._date_text = rq.format_http_date(second)
        return self._date_text

    def _service_error(self, reply: Reply, call: Call) -> BatchServiceError:
        headers: Mapping[str, str] = reply.headers
        error, snippet = rq.parse_error_body(reply.body, headers.get("Content-Type"))
        retry_after = parse_retry_after(headers, now=self._wall_clock())
        code = error.code if error is not None else None
        cls = service_error_class(reply.status, code, has_retry_after=retry_after is not None)
        if cls is ServerError:
            call.ambiguous = True  # a 5xx that is not throttling may come after the service acted
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "%s: %d on attempt %d (request-id %s, client-request-id %s); headers %s",
                call.what,
                reply.status,
                call.attempts,
                rq.header(headers, "request-id"),
                call.client_request_id,
                loggable_headers(headers),
            )
        return cls(
            status=reply.status,
            error=error,
            request_id=rq.header(headers, "request-id"),
            client_request_id=call.client_request_id,
            attempts=call.attempts,
            retry_after=retry_after,
            snippet=snippet,
        )
