"""The rate meter: what the answers to each phase of sending said, the recent send rate, and the round trip.

A phase is a stretch of time the client sent at one setting (a round trip of startup, a cruise, a probe step).
Every answer is counted in the phase its request was *sent* in, so a phase's figures describe the rate it was
sent at, however long the answers take.
"""

from __future__ import annotations

import bisect
import collections
from typing import Final

__all__ = ["Meter", "Phase", "RoundTrip"]

_PHASES_KEPT: Final = 32
_MIN_SPAN: Final = 0.002  # seconds: a phase younger than this has no meaningful send rate
_SENDS_KEPT: Final = 4096  # send times kept for the recent send rate


class Phase:
    """Counts of the requests sent in one phase, and of their answers.

    Attributes:
        kind: What the client was doing (``startup``, ``cruise``, ``probe``).
        start: When the phase began (clock seconds).
        end: When the next phase began (``None`` while it is the current one).
        sent: Requests sent.
        answered: Of those, answered in a way that says something about the rate (a success or a throttle).
        ok: Answered and not throttled.
        throttled: Answered ``429``/``503 ServerBusy``.
        first_throttled: When its first throttled answer arrived, and the controller's counts of successes and
            throttles then.
    """

    __slots__ = (
        "answered",
        "end",
        "first_send",
        "first_throttled",
        "kind",
        "last_send",
        "ok",
        "sent",
        "start",
        "throttled",
    )

    def __init__(self, kind: str, start: float) -> None:
        self.kind = kind
        self.start = start
        self.end: float | None = None
        self.sent = 0
        self.answered = 0
        self.ok = 0
        self.throttled = 0
        self.first_send: float | None = None
        self.last_send = start
        self.first_throttled: tuple[float, int, int] | None = None  # set by the controller

    def __repr__(self) -> str:
        return f"Phase({self.kind}, start={self.start:.3f}, sent={self.sent}, ok={self.ok}, throttled={self.throttled})"

    def send_rate(self, now: float) -> float | None:
        """Requests per second the phase sent (``None`` before it has a meaningful span)."""
        if self.sent < 2 or self.first_send is None:  # noqa: PLR2004 (two sends make one interval)
            return None
        span = max(self.end if self.end is not None else now, self.last_send) - self.first_send
        if span < _MIN_SPAN:
            return None
        return (self.sent - 1) / span

    def delivered(self, now: float) -> float | None:
        """Successes per second the phase's sending earned (``None`` without answers or a send rate)."""
        rate = self.send_rate(now)
        if rate is None or self.answered == 0:
            return None
        return rate * self.ok / self.answered

    def share(self) -> float:
        """The share of answers that were throttling."""
        return self.throttled / self.answered if self.answered else 0.0


class RoundTrip:
    """Smoothed round trip and its variation (TCP's SRTT and RTTVAR, RFC 6298), the minimum seen, and the last."""

    __slots__ = ("last", "min", "smoothed", "variation")

    def __init__(self) -> None:
        self.smoothed: float | None = None
        self.variation = 0.0
        self.min: float | None = None
        self.last = 0.0

    def add(self, sample: float) -> None:
        """One request's round trip."""
        sample = self.last = max(sample, 0.0)
        if self.smoothed is None:
            self.smoothed = sample
            self.variation = sample / 2
        else:
            self.variation += (abs(sample - self.smoothed) - self.variation) / 4
            self.smoothed += (sample - self.smoothed) / 8
        self.min = sample if self.min is None else min(self.min, sample)


class Meter:
    """The phases (newest last), the recent send times, and the round trip."""

    __slots__ = ("_mark", "_phases", "_sends", "awaited", "rtt", "unanswered")

    def __init__(self, now: float) -> None:
        self.unanswered = 0  # requests sent and not answered yet (in any way)
        self.awaited = 0  # of those, the ones sent before the mark (see :meth:`mark`)
        self._mark = now
        self._phases: collections.deque[Phase] = collections.deque([Phase("startup", now)], maxlen=_PHASES_KEPT)
        self._sends: list[float] = []  # ascending (the clock is monotonic): bisected, trimmed in halves
        self.rtt = RoundTrip()

    @property
    def current(self) -> Phase:
        """The phase requests are sent in now (or from the end of its settling)."""
        return self._phases[-1]

    def begin(self, kind: str, now: float, *, settle: float = 0.0) -> Phase:
        """End the current phase and begin another, ``settle`` seconds from now.

        Requests sent while it settles still count in the old phase: after a cut, they reach a service that is
        still busy with the old phase's last requests, so they say nothing yet about the new rate.
        """
        start = now + settle
        self._phases[-1].end = start
        phase = Phase(kind, start)
        self._phases.append(phase)
        return phase

    def sent(self, now: float) -> None:
        """A request left now."""
        self.unanswered += 1
        sends = self._sends
        sends.append(now)
        if len(sends) > 2 * _SENDS_KEPT:
            del sends[:_SENDS_KEPT]
        phase = self._phases[-1]
        if now < phase.start and len(self._phases) > 1:
            phase = self._phases[-2]
        phase.sent += 1
        if phase.first_send is None:
            phase.first_send = now
        phase.last_send = now

    def recent_send_rate(self, now: float, span: float) -> float:
        """Requests sent per second over the last ``span`` seconds."""
        return self.sent_between(now - span, now) / span

    def sent_between(self, start: float, end: float) -> int:
        """Requests sent from ``start`` to ``end`` (among the last few thousand)."""
        return bisect.bisect_right(self._sends, end) - bisect.bisect_left(self._sends, start)

    def phase_of(self, sent_at: float) -> Phase | None:
        """The phase a request sent at ``sent_at`` belongs to (``None`` when it is older than every phase kept)."""
        for phase in reversed(self._phases):
            if sent_at >= phase.start:
                return phase
        return None

    def mark(self, now: float) -> None:
        """From now, count down in :attr:`awaited` the requests in flight now as they are answered."""
        self._mark = now
        self.awaited = self.unanswered

    def done(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` was answered, in whatever way (a failure or no answer included)."""
        self.unanswered -= 1
        if sent_at < self._mark and self.awaited > 0:
            self.awaited -= 1

    def answered(self, sent_at: float, now: float, *, throttled: bool) -> Phase | None:
        """Count an answer (a success or a throttle) in its request's phase; returns that phase."""
        self.rtt.add(now - sent_at)
        phase = self.phase_of(sent_at)
        if phase is not None:
            phase.answered += 1
            if throttled:
                phase.throttled += 1
            else:
                phase.ok += 1
        return phase
