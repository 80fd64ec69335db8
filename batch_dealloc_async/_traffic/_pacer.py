"""The pacer: requests leave at most ``rate`` per second, evenly spaced, first come first served.

Evenly, give or take ``burst`` seconds: a request that finds its turn due goes at once, and turns not taken in
the last ``burst`` seconds (one turn at least) may be taken together. Answers come back in bursts (many in one
socket read) and so do the requests they free; while the rate is only a ceiling far above what is sent (a
startup that has met no throttling), spreading each burst out would be a timer wake-up per request for
nothing: the limiter then gives a few milliseconds of slack (``BURST_TIME``), and none once it paces at a
measured rate.

Waiting requests queue as futures and one timer releases the head when its turn comes (as aiolimiter does), so
a new rate applies at once to the whole queue: a cut spaces the waiting requests further apart, a rise lets
them out sooner. ``rate`` ``None`` is unpaced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["BURST_TIME", "Pacer"]

BURST_TIME: Final = 0.004  # the slack the limiter gives while the rate is a ceiling, not a measured pace


class Pacer:
    """Spaces requests ``1/rate`` apart.

    Args:
        clock: Monotonic seconds.
        sleep: Awaitable sleep (the timer waits with it).
    """

    __slots__ = ("_clock", "_interval", "_last", "_slack", "_sleep", "_timer", "_waiters", "rate")

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self._clock = clock
        self._sleep = sleep
        self.rate: float | None = None
        self._interval = 0.0
        self._slack = 0.0  # how far behind the clock the schedule may fall: the turns a burst may take
        self._last = float("-inf")  # when the last request was let out
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        rate = "unpaced" if self.rate is None else f"{self.rate:.1f}/s"
        return f"Pacer({rate}, waiting={len(self._waiters)})"

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._waiters)

    def set_rate(self, rate: float | None, *, burst: float = 0.0) -> None:
        """Pace at ``rate`` from now on (the queue too), letting turns of the last ``burst`` seconds go together."""
        interval = 0.0 if rate is None else 1.0 / rate
        slack = 0.0 if rate is None else max(1.0, rate * burst) * interval
        if rate == self.rate and slack == self._slack:
            return
        self.rate = rate
        self._interval = interval
        self._slack = slack
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._arm()

    def _due(self, now: float) -> float:
        # The schedule lags the clock by the slack at most: a pause is saved up as a burst that long, no more.
        return max(self._last + self._interval, now - self._slack) if self._interval else now

    def try_slot(self, now: float) -> bool:
        """Take a turn at once if one is due and nobody waits (no coroutine: the common case)."""
        if self.rate is None:
            return True
        if self._waiters:
            return False
        due = self._due(now)
        if due > now:
            return False
        self._last = due
        return True

    async def slot(self) -> None:
        """Wait for this request's turn."""
        if self.try_slot(self._clock()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                pass  # let out as it was cancelled: the turn is spent, as if it had been sent
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if not self._waiters and self._timer is not None:
                self._timer.cancel()  # nobody left to let out: no timer outlives the queue
                self._timer = None
            raise

    def _arm(self) -> None:
        """Start the timer for the head of the queue, unless it runs or nobody waits."""
        if self._timer is None and self._waiters:
            self._timer = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._waiters:
                now = self._clock()
                due = self._due(now) if self.rate is not None else now
                if due > now:
                    await self._sleep(due - now)
                    continue  # the rate may have changed while sleeping: recompute
                waiter = self._waiters.popleft()
                if waiter.done():
                    continue
                self._last = due
                waiter.set_result(None)
        finally:
            if self._timer is asyncio.current_task():
                self._timer = None

    async def close(self) -> None:
        """Stop the timer (the client is closing)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.wait([timer])
