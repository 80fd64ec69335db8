"""The retry policy and its tenacity loop.

What retries: throttling (429, and 503 ServerBusy) after at least the server's ``Retry-After``; 500, 502,
503 and 504 with exponential backoff and full jitter; transport errors (connection refused or reset, a
client-side timeout, an unreadable body). Never another 4xx. Time comes from an injected clock and sleep,
randomness from an injected ``random.Random``, so tests assert exact delays and run instantly.

tenacity stays inside this module, as stamina keeps it: :func:`call_with_retries` is the whole retry loop.
"""

from __future__ import annotations

import email.utils
import math
from typing import TYPE_CHECKING, Final, TypeVar

import attrs
import tenacity

from ._errors import BatchDeallocError, BatchServiceError, BatchTransportError, ThrottledError

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Mapping

T = TypeVar("T")

__all__ = ["RetryPolicy", "call_with_retries", "parse_retry_after"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a positive finite number, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one call retries. The defaults suit a bulk run against a throttled account.

    Attributes:
        max_attempts: Requests per call, the first included (default 10: with adaptive pacing a node rarely
            needs more than two). In bulk runs throttled attempts do not count: a node is never given up
            because the service asked to slow down; ``deadline`` bounds those calls.
        backoff_base: The first retry waits up to this many seconds (full jitter); each retry doubles it.
        backoff_cap: The most one backoff waits.
        max_retry_after: The most one server ``Retry-After`` hint is honoured for; longer hints are cut here.
        deadline: Seconds from the start of a call to its last possible attempt; an attempt's own timeout is
            cut so that the call ends by then.
        timeout_margin: Client-side timeout of an attempt = the service ``timeOut`` (30 s when not sent) plus
            this margin, so the service gives up first and says so.
        retry_statuses: The statuses that retry (429 and 503 as throttling, 5xx as server errors).
        retry_transport_errors: Retry connection errors, resets and client-side timeouts. These are
            ambiguous for a POST: a later ``409`` is reconciled with Get Node.
    """

    max_attempts: int = attrs.field(default=10, validator=_at_least_one)
    backoff_base: float = attrs.field(default=0.5, validator=_positive)
    backoff_cap: float = attrs.field(default=30.0, validator=_positive)
    max_retry_after: float = attrs.field(default=60.0, validator=_positive)
    deadline: float = attrs.field(default=300.0, validator=_positive)
    timeout_margin: float = attrs.field(default=5.0, validator=_positive)
    retry_statuses: frozenset[int] = attrs.field(default=frozenset({429, 500, 502, 503, 504}), converter=frozenset)
    retry_transport_errors: bool = True

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried under this policy."""
        if isinstance(exc, BatchServiceError):
            return exc.status in self.retry_statuses
        return isinstance(exc, BatchTransportError) and self.retry_transport_errors

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff before retry ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(retry_number - 1, 62))
        return rng.uniform(0.0, ceiling)


_MS_HEADERS: Final = ("retry-after-ms", "x-ms-retry-after-ms")
_MAX_SANE_HINT: Final = 365 * 24 * 3600.0


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Read a server's retry hint in seconds, or ``None`` when there is none or it is garbage.

    Accepts ``retry-after-ms``/``x-ms-retry-after-ms`` (milliseconds, as azure-core does) and ``Retry-After``
    as delta-seconds (fractions allowed) or an HTTP date. A negative value or a date in the past means 0.

    Args:
        headers: Response headers (case-insensitive mapping).
        now: The current wall-clock time (epoch seconds), to turn a date into a delay.
    """
    for name in _MS_HEADERS:
        value = _number(headers.get(name))
        if value is not None:
            return min(max(0.0, value / 1000.0), _MAX_SANE_HINT)
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    value = _number(raw)
    if value is not None:
        return min(max(0.0, value), _MAX_SANE_HINT)
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), _MAX_SANE_HINT)


def _number(raw: str | None) -> float | None:
    if raw is None or len(raw) > 32:  # noqa: PLR2004 (no honest number is longer)
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


async def call_with_retries(
    attempt: Callable[[float], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    count_throttled: bool = True,
    paced: bool = False,
) -> T:
    """Run ``attempt`` until it succeeds or the policy gives up; the last error is raised.

    ``attempt(remaining)`` sends one request and is given the seconds left of the call's deadline (it cuts its
    own timeout to fit, and raises a timeout error when nothing is left). The deadline counts from here.

    The first attempt runs outside tenacity: most calls succeed at once, and building a tenacity loop for each
    of them cost more CPU than the rest of the call (per deallocation, 1.1x the bare aiohttp loop's CPU with
    this fast path against 1.8x without it, measured in benchmarks/). A failed first attempt is replayed as
    the loop's first outcome, so tenacity decides on it exactly as if it had sent it.

    Args:
        attempt: One try; raises a :class:`BatchDeallocError` on failure.
        policy: What retries, how often, how long.
        clock: Monotonic seconds (the client's injected clock, not tenacity's own).
        sleep: Awaitable sleep (the client's injected sleep).
        rng: Source of jitter.
        on_retry: Called as ``(attempt_number, error, delay)`` before each wait (logging).
        count_throttled: Whether throttled attempts use up ``max_attempts``. Bulk runs pass False: a throttled
            request was not processed and the service named when to come back, so a node is never given up for
            it; the deadline still bounds the call.
        paced: Whether an adaptive limiter paces every attempt (and answers congestion by cutting its rate). A
            throttle without ``Retry-After`` then waits up to ``backoff_base`` (full jitter) at every retry, not
            a doubling backoff: the limiter, not each request, slows down for the service, and the retry waits
            its turn at the pacer. Doubling only lengthened a bulk run's tail: at 5% random ``ServerBusy`` a
            node throttled three times in a row waited up to 3.5 s after the others were done.
    """
    start = clock()
    try:
        return await attempt(policy.deadline)
    except BatchDeallocError as exc:
        first: BatchDeallocError | None = exc
        if policy.max_attempts < 2 or not policy.is_retryable(exc):  # noqa: PLR2004 (one attempt means no retry)
            raise
    retrying = _retrying(
        policy,
        start=start,
        clock=clock,
        sleep=sleep,
        rng=rng,
        count_throttled=count_throttled,
        paced=paced,
        on_retry=on_retry,
    )
    async for try_ in retrying:
        with try_:
            if first is not None:
                replay, first = first, None
                raise replay
            return await attempt(policy.deadline - (clock() - start))
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def _wait(
    policy: RetryPolicy, exc: BaseException | None, retry_number: int, rng: random.Random, *, paced: bool
) -> float:
    """Seconds to wait before retry ``retry_number`` after ``exc``."""
    if isinstance(exc, ThrottledError):
        if exc.retry_after is not None:
            # Wait at least what the server asked for (up to max_retry_after), and never less than backoff.
            return max(min(exc.retry_after, policy.max_retry_after), policy.backoff(retry_number, rng) / 4)
        if paced:
            return policy.backoff(1, rng)  # the first retry's backoff, every time (see call_with_retries)
    return policy.backoff(retry_number, rng)


def _retrying(
    policy: RetryPolicy,
    *,
    start: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    count_throttled: bool,
    paced: bool,
    on_retry: Callable[[int, BaseException, float], None] | None,
) -> tenacity.AsyncRetrying:
    """The tenacity loop for one call that started at ``start`` (a ``clock()`` reading)."""
    counted = 0  # failed attempts that use up max_attempts

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return _wait(policy, exc, state.attempt_number, rng, paced=paced)

    def stop(state: tenacity.RetryCallState) -> bool:
        nonlocal counted
        exc = state.outcome.exception() if state.outcome is not None else None
        if count_throttled or not isinstance(exc, ThrottledError):
            counted += 1
        if counted >= policy.max_attempts:
            return True
        # tenacity computes the wait first: give up now rather than sleep past the deadline and then send
        # an attempt with no time left.
        return clock() - start + state.upcoming_sleep >= policy.deadline

    def should_retry(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        return exc is not None and policy.is_retryable(exc)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and exc is not None:
            on_retry(state.attempt_number, exc, state.upcoming_sleep)

    return tenacity.AsyncRetrying(
        stop=stop, wait=wait, sleep=sleep, retry=should_retry, before_sleep=before_sleep, reraise=True
    )
