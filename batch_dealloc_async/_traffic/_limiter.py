"""The limiter: every request a client sends passes its breaker, window and pacer, and reports back.

One per client, so the client meets the service as one body (whatever runs share it). The parts, each small
and testable alone: :class:`~._window.Window` (requests in flight), :class:`~._pacer.Pacer` (requests per
second), :class:`~._meter.Meter` (what each phase of sending delivered), :class:`~._control.RateControl`
(startup, cruise, probe; cuts on congestion, ignores noise), :class:`~._breaker.Breaker` (outages) and
:class:`~._budget.RetryBudget` (retries after failures).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from typing import TYPE_CHECKING, Protocol

from ._breaker import Breaker
from ._budget import RetryBudget
from ._control import RateControl
from ._meter import Meter
from ._pacer import BURST_TIME, Pacer
from ._window import Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .._outcomes import ClientStats

__all__ = ["AdaptiveLimiter", "Feedback", "TrafficObserver"]

_log = logging.getLogger("batch_dealloc_async.traffic")


class Feedback(enum.Enum):
    """What an answer says about the service."""

    OK = "ok"
    """Processed (2xx)."""
    THROTTLED = "throttled"
    """429, or 503 ServerBusy: too many requests."""
    FAILED = "failed"
    """The service failed it: a 5xx that is not throttling, no connection, no answer."""
    OTHER = "other"
    """Answered, but not a success (a 4xx such as 404 or 409): the service is up and did the work of answering."""


class TrafficObserver(Protocol):
    """Told of the limiter's changes (the client's telemetry). Both run on the loop, inside a request's feedback."""

    def traffic_event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        """A state change: ``traffic.state``, ``traffic.rate_cut``, ``traffic.breaker_open`` or ``_closed``."""

    def traffic_limits(self, limit: int, rate: float | None) -> None:
        """The window or the rate moved (or may have)."""


class AdaptiveLimiter:
    """The client's traffic control: a breaker, a concurrency window, a pacer, and the controller that sets them.

    Args:
        max_concurrency: The most requests in flight, ever.
        adaptive: False for a fixed window of ``max_concurrency``, unpaced (``max_rate`` still holds), with the
            breaker and the retry budget still on.
        max_rate: A ceiling in requests per second, or ``None``.
        clock: Monotonic seconds.
        sleep: Awaitable sleep.
        rng: Draws the cruise hold times (seed it to replay a run).
        min_rate: The rate is never cut below this many requests per second.
        breaker_give_up: Seconds the service may fail everything before waiting calls fail (``ServiceDownError``).
        stats: Counters to keep current: ``traffic`` (the state), ``outages`` and ``probes``.

    Attributes:
        observer: Told of every change of state, window and rate (the client sets it when it records telemetry;
            ``None``: nobody is told, and it costs nothing).
    """

    __slots__ = (
        "_clock",
        "_cuts",
        "_last_mode",
        "_meter",
        "_pacer",
        "_window",
        "adaptive",
        "breaker",
        "budget",
        "control",
        "observer",
        "stats",
        "throttle_events",
    )

    def __init__(
        self,
        max_concurrency: int,
        *,
        adaptive: bool = True,
        max_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        min_rate: float = 1.0,
        breaker_give_up: float = 30.0,
        stats: ClientStats | None = None,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if max_rate is not None and (
            isinstance(max_rate, bool) or not isinstance(max_rate, int | float) or not max_rate > 0
        ):
            raise ValueError(f"max_rate must be a positive number of requests per second, got {max_rate!r}")
        self.adaptive = adaptive
        self._clock = clock
        now = clock()
        self._meter = Meter(now)
        self.control = RateControl(
            self._meter,
            ceiling=max_concurrency,
            max_rate=None if max_rate is None else float(max_rate),
            min_rate=min(min_rate, float(max_rate)) if max_rate is not None else min_rate,
            rng=rng if rng is not None else random.Random(),  # noqa: S311 (hold times, not cryptography)
            now=now,
        )
        self._window = Window(max_concurrency, int(self.control.window) if adaptive else max_concurrency)
        self._pacer = Pacer(clock, sleep)
        if adaptive:  # the opening's pace (see RateControl)
            self._pacer.set_rate(self.control.rate, burst=BURST_TIME)
        else:
            self._pacer.set_rate(self.control.max_rate)
        self.breaker = Breaker(clock, sleep, give_up=breaker_give_up)
        self.budget = RetryBudget(clock, sleep)
        self.throttle_events = 0
        self._last_mode = self.control.mode
        self._cuts = 0
        self.observer: TrafficObserver | None = None
        self.stats = stats
        if stats is not None:
            stats.traffic = self.state

    def __repr__(self) -> str:
        rate = "unpaced" if self.rate is None else f"{self.rate:.1f}/s"
        return (
            f"AdaptiveLimiter(limit={self.limit}/{self.max_concurrency}, in_flight={self.in_flight}, rate={rate}, "
            f"state={self.state})"
        )

    # ----------------------------------------------------------------------------------------------- readings

    @property
    def max_concurrency(self) -> int:
        """The ceiling of the window."""
        return self._window.ceiling

    @property
    def limit(self) -> int:
        """The current concurrency window."""
        return self._window.limit

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._window.in_flight

    @property
    def rate(self) -> float | None:
        """The current pacing rate in requests per second, or ``None`` when not pacing."""
        return self._pacer.rate

    @property
    def max_rate(self) -> float | None:
        """The ceiling on the rate, if any."""
        return self.control.max_rate

    @property
    def state(self) -> str:
        """What traffic control is doing: ``failing`` (the breaker holds requests), or a mode of the controller.

        The modes are ``startup``, ``drain``, ``cruise``, ``probe`` and ``paused`` (the service grants nothing at any
        rate: one request per round trip until one is granted); ``fixed`` when not adaptive.
        """
        if self.breaker.is_open:
            return "failing"
        return self.control.mode if self.adaptive else "fixed"

    # --------------------------------------------------------------------------------------------------- slots

    def try_acquire(self) -> float | None:
        """Take a slot at once if nothing holds it back; the send stamp, or ``None`` (then await :meth:`acquire`).

        The common case, without creating a coroutine (it runs once per request).
        """
        if self.breaker.is_open or not self._window.try_take():
            return None
        now = self._clock()
        if not self._pacer.try_slot(now):
            self._window.give()
            return None
        self._meter.sent(now)
        return now

    async def acquire(self, *, retry: bool = False) -> float:
        """Wait for the breaker, the retry budget (``retry``: a retry after a failure), a slot and a turn.

        Returns the send stamp: pass it to :meth:`feedback`. Always pair with :meth:`release`.

        Raises:
            ServiceDownError: the service has failed everything for ``breaker_give_up`` seconds.
        """
        if retry:
            await self.budget.spend()
        while True:
            probe = await self.breaker.gate()
            await self._window.take()  # the slot first: while unpaced, the window alone holds requests back
            try:
                await self._pacer.slot()
            except asyncio.CancelledError:
                self._window.give()
                raise
            if probe or not self.breaker.is_open:
                break
            self._window.give()  # the service began failing while this request waited: it waits for the breaker
        now = self._clock()
        self._meter.sent(now)
        return now

    def expect(self, nodes: int) -> None:
        """Bulk runs add the nodes they have to do (positive) and remove those done (negative).

        Near the end of the known work traffic control stops probing for more rate: a probe's throttled requests
        wait out their ``Retry-After`` (a second or more) after everything else is done, and lengthen the run.
        """
        self.control.backlog += nodes

    def release(self) -> None:
        """Give a slot back."""
        self._window.give()

    async def close(self) -> None:
        """Stop the pacer's and the breaker's timers (the client is closing)."""
        await self._pacer.close()
        await self.breaker.close()

    def backoff(self, seconds: float) -> Awaitable[None]:
        """A retry's backoff sleep; while the breaker is open it ends as soon as the service answers again."""
        return self.breaker.backoff(seconds)

    # ------------------------------------------------------------------------------------------------ feedback

    def feedback(self, sent_at: float, kind: Feedback, error: BaseException | None = None) -> None:
        """What the answer to a request sent at ``sent_at`` (its :meth:`acquire` stamp) said."""
        observer = self.observer
        if observer is None:
            self._record(sent_at, kind, error)
        else:
            breaker = self.breaker
            was_open, down_for = breaker.is_open, breaker.open_for()
            self._record(sent_at, kind, error)
            if breaker.is_open and not was_open:
                failed = "none" if error is None else type(error).__name__
                observer.traffic_event("traffic.breaker_open", {"traffic.last_error": failed})
            elif was_open and not breaker.is_open:
                observer.traffic_event("traffic.breaker_closed", {"traffic.outage_seconds": round(down_for, 3)})
        stats = self.stats
        if stats is not None:
            breaker = self.breaker
            stats.outages = breaker.opened
            stats.probes = breaker.probes
            stats.traffic = self.state

    def _record(self, sent_at: float, kind: Feedback, error: BaseException | None) -> None:
        self._meter.done(sent_at)
        if kind is Feedback.FAILED:
            self.breaker.failure(error, sent_at)
            return
        self.breaker.alive()
        now = self._clock()
        if kind is Feedback.THROTTLED:
            self.throttle_events += 1
            phase = self._meter.answered(sent_at, now, throttled=True)
            if self.adaptive and self.control.on_throttled(phase, now):
                self._apply()
            return
        self.budget.success()
        self._meter.answered(sent_at, now, throttled=False)
        if self.adaptive:
            before = (self.control.rate, self.control.window, self.control.mode)
            self.control.on_ok(now)
            if (self.control.rate, self.control.window, self.control.mode) != before:
                self._apply()

    def _apply(self) -> None:
        control = self.control
        before = self._pacer.rate
        self._pacer.set_rate(control.rate, burst=BURST_TIME if control.mode == "startup" else 0.0)
        self._window.limit = control.window
        mode, last = control.mode, self._last_mode
        # A cut: the controller saw congestion, or a cruise was nudged down (throttled a little above the noise).
        cut = control.cuts != self._cuts or (mode == last == "cruise" and before is not None and control.rate < before)
        if mode != last or cut:
            self._last_mode, self._cuts = mode, control.cuts
            self._changed(last, before, cut=cut)
        observer = self.observer
        if observer is not None:
            observer.traffic_limits(self._window.limit, self._pacer.rate)

    def _changed(self, last: str, before: float | None, *, cut: bool) -> None:
        """A change of mode, or a rate cut: logged at INFO, and told to the observer."""
        mode, rate = self.control.mode, self.control.rate
        extra = {"state_before": last, "state": mode, "rate": round(rate, 3), "window": self._window.limit}
        if cut:
            extra["rate_before"] = round(before or 0.0, 3)
            _log.info(
                "traffic: %s -> %s; rate cut %.1f -> %.1f requests/s", last, mode, before or 0.0, rate, extra=extra
            )
        else:
            _log.info("traffic: %s -> %s at %.1f requests/s", last, mode, rate, extra=extra)
        observer = self.observer
        if observer is not None:
            attributes: dict[str, str | int | float] = {
                "traffic.state.before": last,
                "traffic.state": mode,
                "traffic.rate": round(rate, 3),
                "traffic.window": self._window.limit,
            }
            if cut:
                attributes["traffic.rate.before"] = round(before or 0.0, 3)
            observer.traffic_event("traffic.rate_cut" if cut else "traffic.state", attributes)
