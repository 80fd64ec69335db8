"""One limiter per client: a concurrency window plus, once the service throttles, a sending rate.

Everything a client sends takes a slot here, so the client reacts to throttling as one body:

* **Concurrency (AIMD).** At most ``limit`` requests are in flight. A throttled response halves the limit
  (once per congestion epoch); every success adds ``1/limit`` back, up to ``max_concurrency``.
* **Pacing (CUBIC on the rate).** The first throttled response switches pacing on. Each cut sets the rate to
  ``beta`` times the smaller of the current rate and the service's rate, estimated from successes: exactly,
  as successes per second since a congestion episode began (the service's bucket is empty then, so what
  it grants *is* its rate), or from the last second's successes. Until an exact estimate exists (the opening
  burst inflates the other), cuts use the steeper ``startup_beta``. Between cuts the rate climbs back along a
  cubic curve: quickly up to the last throttled rate, flat around it, then faster beyond it, as TCP CUBIC
  and the AWS SDKs' adaptive retry mode do, but never beyond twice the rate actually achieved.
* **Epochs.** Responses to requests sent before the last cut say nothing about the new rate, so they never
  cut again: one cut per round trip, as in TCP.

A fixed limit (``adaptive=False``) keeps the window at ``max_concurrency`` and never paces. The clock and
sleep are injected, so tests drive it without the network or wall time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["AdaptiveLimiter"]

_RATE_WINDOW: Final = 1.0  # seconds of successes behind the measured rate
_MIN_SAMPLES: Final = 4  # fewer successes than this in the window say nothing about the rate
_EPISODE_MIN_SPAN: Final = 0.02  # seconds of throttled traffic before its success rate counts as exact
_MAX_SAMPLES: Final = 8192  # success stamps kept (old ones also leave when the rate is measured)


class AdaptiveLimiter:
    """Concurrency window plus adaptive pacing, shared by every request of one client.

    Args:
        max_concurrency: The most requests in flight, ever.
        adaptive: False for a fixed limit: no pacing, no window changes.
        clock: Monotonic seconds.
        sleep: Awaitable sleep (pacing waits use it).
        beta: Multiplicative decrease of the rate on a throttle (0 < beta < 1).
        startup_beta: The steeper decrease used until the first cut that does not follow straight after
            another (the rate is still far above the service's limit then).
        recovery: Seconds the cubic curve takes to climb back to the last throttled rate.
        min_rate: Never pace slower than this many requests per second.
        initial_limit: The window at start; it grows by one per success (doubling every round trip) until
            the first throttle, then by ``1/limit`` (TCP's slow start, then congestion avoidance). A small
            start keeps the opening burst from running a full ``max_concurrency`` into a throttled account.
    """

    __slots__ = (
        "_beta",
        "_clock",
        "_cut_at",
        "_cut_beta",
        "_episode_start",
        "_episode_successes",
        "_in_flight",
        "_interval",
        "_limit",
        "_max",
        "_min_rate",
        "_next_slot",
        "_pace_generation",
        "_rate",
        "_rate_max",
        "_recovery",
        "_sleep",
        "_slot_waiters",
        "_startup",
        "_startup_beta",
        "_successes",
        "adaptive",
        "throttle_events",
    )

    def __init__(
        self,
        max_concurrency: int,
        *,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        beta: float = 0.9,
        startup_beta: float = 0.5,
        recovery: float = 1.0,
        min_rate: float = 1.0,
        initial_limit: int = 8,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not 0 < beta < 1 or not 0 < startup_beta < 1:
            raise ValueError("beta and startup_beta must be between 0 and 1")
        self._max = max_concurrency
        self.adaptive = adaptive
        self._clock = clock
        self._sleep = sleep
        self._beta = beta
        self._startup_beta = startup_beta
        self._recovery = recovery
        self._min_rate = min_rate
        self._limit = float(min(max(1, initial_limit), max_concurrency) if adaptive else max_concurrency)
        self._in_flight = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._rate: float | None = None  # None: not pacing
        self._interval = 0.0
        self._next_slot = 0.0
        self._pace_generation = 0
        self._rate_max = 0.0  # the rate the last cut happened at (CUBIC's W_max)
        self._cut_at = float("-inf")
        self._startup = True
        self._cut_beta = beta
        self._episode_start = float("-inf")
        self._episode_successes = 0
        self._successes: collections.deque[float] = collections.deque()
        self.throttle_events = 0

    def __repr__(self) -> str:
        rate = "unpaced" if self._rate is None else f"{self._rate:.1f}/s"
        return f"AdaptiveLimiter(limit={self.limit}/{self._max}, in_flight={self._in_flight}, rate={rate})"

    @property
    def max_concurrency(self) -> int:
        """The ceiling of the window."""
        return self._max

    @property
    def limit(self) -> int:
        """The current concurrency window."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._in_flight

    @property
    def rate(self) -> float | None:
        """The current pacing rate in requests per second, or ``None`` when not pacing."""
        return self._rate

    def try_acquire(self) -> float | None:
        """Take a slot at once if one is free and no pacing wait is due.

        Returns the send stamp, or ``None``: then await :meth:`acquire`. This is the common case, without
        creating a coroutine (it runs once per request).
        """
        if self._in_flight < self.limit and not self._slot_waiters:
            if self._rate is not None:
                now = self._clock()
                if self._next_slot > now:
                    return None
                self._next_slot = now + self._interval
                self._in_flight += 1
                return now
            self._in_flight += 1
            return self._clock()
        return None

    async def acquire(self) -> float:
        """Wait for a slot (and, when pacing, for this request's turn); returns the send time stamp.

        Pass the stamp to :meth:`on_throttled` so that only responses to requests sent after a cut can cut
        again. Always pair with :meth:`release`.
        """
        if self._in_flight < self.limit and not self._slot_waiters:
            self._in_flight += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release()  # the slot was handed to us as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):  # release() may have dropped it already
                        self._slot_waiters.remove(waiter)
                raise
        if self._rate is not None:
            try:
                await self._pace()
            except asyncio.CancelledError:
                self.release()
                raise
        return self._clock()

    async def _pace(self) -> None:
        while self._rate is not None:
            generation = self._pace_generation
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
            if slot <= now:
                return
            await self._sleep(slot - now)
            if generation == self._pace_generation:
                return
            # The rate was cut while this request waited: take a new turn at the new pace.

    def release(self) -> None:
        """Give a slot back, handing it to the next waiter while the window allows."""
        while self._slot_waiters and self._in_flight <= self.limit:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self._in_flight -= 1

    def _wake(self) -> None:
        while self._slot_waiters and self._in_flight < self.limit:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    def measured_rate(self, now: float) -> float | None:
        """Successes per second over the last second, or ``None`` with too few samples."""
        successes = self._successes
        while successes and successes[0] < now - _RATE_WINDOW:
            successes.popleft()
        if len(successes) < _MIN_SAMPLES:
            return None
        span = max(now - successes[0], 1e-3)
        return (len(successes) - 1) / span

    def on_success(self) -> None:
        """Record a response that was not throttled: grow the window and the rate."""
        if not self.adaptive:
            return
        now = self._clock()
        successes = self._successes
        successes.append(now)
        if len(successes) > _MAX_SAMPLES:
            successes.popleft()
        if self._limit < self._max:
            growth = 1.0 if self._rate is None and self.throttle_events == 0 else 1.0 / self._limit
            self._limit = min(float(self._max), self._limit + growth)
            self._wake()
        self._episode_successes += 1
        if self._rate is not None:
            self._grow_rate(now)

    def _grow_rate(self, now: float) -> None:
        elapsed = now - self._cut_at
        # W(t) = W_max * (1 + (1 - beta) * ((t - K) / K)^3): at t = 0 it is beta * W_max, at t = K it is
        # W_max, then it rises ever faster to find a higher limit.
        x = (elapsed - self._recovery) / self._recovery
        target = self._rate_max * (1.0 + (1.0 - self._cut_beta) * x * x * x)
        if target <= self._rate:  # type: ignore[operator]  # checked by the caller
            return
        # Grow only a rate that is being used: while the client sends less (its requests sleep on a
        # Retry-After, or it has little to do), the curve must not run ahead of reality. As the AWS SDKs'
        # adaptive mode does, cap it at twice the measured rate.
        if len(self._successes) >= _MIN_SAMPLES and now - self._successes[0] >= _RATE_WINDOW / 2:
            measured = self.measured_rate(now)
            if measured is not None:
                target = min(target, 2.0 * measured)
        if target > self._rate:  # type: ignore[operator]  # checked by the caller
            self._set_rate(target, reset=False)

    def _set_rate(self, rate: float, *, reset: bool) -> None:
        self._rate = max(self._min_rate, rate)
        self._interval = 1.0 / self._rate
        if reset:
            self._pace_generation += 1
            self._next_slot = self._clock() + self._interval

    def on_throttled(self, sent_at: float) -> None:
        """Record a throttled response to a request sent at ``sent_at`` (the stamp :meth:`acquire` gave).

        The throttled request waits out the server's Retry-After itself, in its retry loop; the client as a
        whole slows by rate, not by pausing.
        """
        if not self.adaptive or sent_at < self._cut_at:
            return  # sent before the last cut: already accounted for
        now = self._clock()
        self.throttle_events += 1
        in_episode = now - self._cut_at < self._recovery
        if not in_episode:
            self._episode_start = now
            self._episode_successes = 0
        estimate, exact = self._estimate(now)
        current = self._rate
        if estimate is None and current is None:
            # Too little traffic to know a rate: narrow the window only.
            self._cut_at = now
            self._limit = max(1.0, self._limit / 2.0)
            return
        if estimate is None:
            base = current
        elif current is None:
            base = estimate
        else:
            base = min(current, estimate)
        assert base is not None  # noqa: S101 (both None returned above)
        # Until the service's rate is known, the measurement may hold the opening burst: cut steeply.
        beta = self._beta if exact or not self._startup else self._startup_beta
        if exact:
            self._startup = False
        self._rate_max = base
        self._cut_beta = beta
        self._cut_at = now
        self._set_rate(base * beta, reset=True)
        self._limit = max(1.0, self._limit / 2.0)

    def _estimate(self, now: float) -> tuple[float | None, bool]:
        """The service's rate: exact when measured across a congestion episode, else the last second's.

        While throttled, the service's bucket is empty and every success spent a token it had just refilled,
        so successes per second since the episode's first throttle *are* its rate. Outside an episode, the
        success rate of the last second is the best guess (early on it includes the opening burst).
        """
        span = now - self._episode_start
        if span >= _EPISODE_MIN_SPAN and self._episode_successes >= _MIN_SAMPLES:
            return self._episode_successes / span, True
        return self.measured_rate(now), False
