"""The circuit breaker: when the service fails everything, hold requests and send single probes.

Closed, every request goes. After ``open_after`` failures in a row (5xx that are not throttling, connection
errors, timeouts) with no answer from a live service between them, it opens: requests wait instead of being
sent, and one probe at a time goes out, the first after ``first_probe`` seconds, then at intervals doubling up to
``max_probe``. Any answer that shows the service alive (a success, a 4xx, even a throttle) closes it, and every
request waiting goes at once; so does every retry sleeping out a backoff. Requests that wait use up no attempt.
When no request waits at the gate (every one failed and its retry sleeps), one sleeping retry is woken at the
probe time to be the probe.

Once it has been open ``give_up`` seconds the service is down: the waiting requests, and any that would wait,
fail with :class:`~.._errors.ServiceDownError` (probes still go out now and then, so the breaker still closes
when the service comes back).

One timer task runs while it is open; waiters are futures, so a thousand held requests cost no CPU.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Final

from .._errors import ServiceDownError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Breaker"]

_log = logging.getLogger("batch_dealloc_async.traffic")

OPEN_AFTER: Final = 8
FIRST_PROBE: Final = 0.25
MAX_PROBE: Final = 1.0
GIVE_UP: Final = 30.0
_PROBE_LOST: Final = 5.0  # seconds after which an unanswered probe no longer holds the next one back


class Breaker:
    """Closed or open, with probes while open.

    Args:
        clock: Monotonic seconds.
        sleep: Awaitable sleep.
        open_after: Failures in a row that open it.
        first_probe: Seconds from opening to the first probe.
        max_probe: The longest interval between probes.
        give_up: Seconds open after which waiting calls fail with ``ServiceDownError``.
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_first_probe",
        "_gate",
        "_give_up",
        "_interval",
        "_max_probe",
        "_next_probe",
        "_open_after",
        "_opened_at",
        "_probe_at",
        "_sleep",
        "_sleepers",
        "_summoned",
        "_timer",
        "last_error",
        "opened",
        "probes",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        *,
        open_after: int = OPEN_AFTER,
        first_probe: float = FIRST_PROBE,
        max_probe: float = MAX_PROBE,
        give_up: float = GIVE_UP,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._open_after = open_after
        self._first_probe = first_probe
        self._max_probe = max_probe
        self._give_up = give_up
        self._failures = 0
        self._opened_at: float | None = None
        self._next_probe = 0.0
        self._interval = first_probe
        self._probe_at: float | None = None  # when the probe out now was let go
        self._gate: collections.deque[asyncio.Future[bool]] = collections.deque()  # requests held
        self._sleepers: list[asyncio.Future[None]] = []  # retries sleeping out a backoff while open
        self._summoned: float | None = None  # when a sleeping retry was woken to be the probe (none was held)
        self._timer: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        self.opened = 0  # times it opened
        self.probes = 0  # probes sent

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"Breaker({state}, failures in a row={self._failures}, waiting={len(self._gate)})"

    @property
    def is_open(self) -> bool:
        """Whether requests are being held."""
        return self._opened_at is not None

    def open_for(self) -> float:
        """Seconds it has been open (0 when closed)."""
        return 0.0 if self._opened_at is None else self._clock() - self._opened_at

    # ----------------------------------------------------------------------------------------------- feedback

    def failure(self, error: BaseException | None, sent_at: float) -> None:
        """The service failed a request sent at ``sent_at`` (a 5xx that is not throttling, or no answer)."""
        self.last_error = error
        self._failures += 1
        now = self._clock()
        if self._opened_at is None:
            if self._failures >= self._open_after:
                self._open(now, error)
            return
        if sent_at < self._opened_at:
            return  # sent before it opened: not a probe, and already counted in the decision to open
        self._probe_at = None
        self._interval = min(self._interval * 2.0, self._max_probe)
        self._next_probe = now + self._interval
        self._rearm()

    def alive(self) -> None:
        """The service answered (a success, a 4xx, a throttle): it is up."""
        self._failures = 0
        if self._opened_at is None:
            return
        _log.warning("the service answers again after %.1f s; resuming", self._clock() - self._opened_at)
        self._opened_at = None
        self._probe_at = None
        self._summoned = None
        self._release(None)

    def _open(self, now: float, error: BaseException | None) -> None:
        self._opened_at = now
        self.opened += 1
        self._interval = self._first_probe
        self._next_probe = now + self._interval
        self._probe_at = None
        self._summoned = None
        _log.warning(
            "the service failed %d requests in a row (last: %s); holding requests and probing",
            self._failures,
            error,
        )
        self._arm()

    def _release(self, error: BaseException | None) -> None:
        """Let every waiting request and sleeping retry go (``error``: fail them with it instead)."""
        gate, self._gate = self._gate, collections.deque()
        sleepers, self._sleepers = self._sleepers, []
        for waiter in gate:
            if not waiter.done():
                waiter.set_result(False) if error is None else waiter.set_exception(error)
        for sleeper in sleepers:
            if not sleeper.done():
                sleeper.set_result(None) if error is None else sleeper.set_exception(error)
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    # ------------------------------------------------------------------------------------------------ waiting

    def _down(self, now: float) -> ServiceDownError | None:
        if self._opened_at is None or now - self._opened_at < self._give_up:
            return None
        return ServiceDownError(
            f"the service failed every request for {now - self._opened_at:.0f} s", last_error=self.last_error
        )

    def _probe_due(self, now: float) -> bool:
        if self._probe_at is not None and now - self._probe_at > _PROBE_LOST:
            self._probe_at = None  # cancelled before it was answered, or very slow: let another go
        return self._probe_at is None and now >= self._next_probe

    async def gate(self) -> bool:
        """Return when this request may go: closed (False), or as the next probe (True).

        Raises:
            ServiceDownError: the breaker has been open ``give_up`` seconds.
        """
        if self._opened_at is None:
            return False
        now = self._clock()
        if self._probe_due(now):
            self._probe_at = now
            self._summoned = None
            self.probes += 1
            return True
        down = self._down(now)
        if down is not None:
            raise down
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gate.append(waiter)
        self._arm()
        try:
            return await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self._gate:
                self._gate.remove(waiter)

    async def backoff(self, seconds: float) -> None:
        """A retry's backoff. While open, instead: until the service answers again (or is given up on)."""
        if self._opened_at is None:
            await self._sleep(seconds)
            return
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        self._arm()
        try:
            await sleeper
        except ServiceDownError:
            return  # the retry then meets the gate, which says so
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def _rearm(self) -> None:
        """The next probe time moved: restart the timer so that it wakes for it (and not for an older time)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._opened_at is not None and (self._gate or self._sleepers):
            self._timer = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """While open: let one held request go at each probe time; at the give-up time, fail them all."""
        try:
            while self._opened_at is not None and (self._gate or self._sleepers):
                now = self._clock()
                down = self._down(now)
                if down is not None:
                    self._release(down)
                    return
                if self._probe_due(now) and self._let_probe_go(now):
                    continue
                give_up_at = self._opened_at + self._give_up
                wake = give_up_at if self._probe_at is not None else min(self._next_probe, give_up_at)
                if self._probe_at is not None:
                    wake = min(wake, self._probe_at + _PROBE_LOST)
                elif self._summoned is not None:
                    wake = min(give_up_at, self._summoned + _PROBE_LOST)  # the woken retry takes the probe itself
                await self._sleep(max(wake - now, 0.001))
        finally:
            if self._timer is asyncio.current_task():
                self._timer = None

    def _let_probe_go(self, now: float) -> bool:
        """A probe is due: let the first held request go as the probe; True when something was woken."""
        if self._gate:
            waiter = self._gate.popleft()
            if not waiter.done():
                self._probe_at = now
                self.probes += 1
                waiter.set_result(True)
            return True
        if self._summoned is None or now - self._summoned > _PROBE_LOST:
            # Nothing is held, only retries sleep (every node failed its first attempt): wake one, which comes to the
            # gate and goes as the probe. Else nobody would probe until the give-up time.
            sleeper = self._sleepers.pop(0)
            if not sleeper.done():
                self._summoned = now
                sleeper.set_result(None)
            return True
        return False

    async def close(self) -> None:
        """Stop the timer (the client is closing)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.wait([timer])
