"""The rate controller: it finds the service's rate, holds just under it, and probes for more.

The sending rate is the control; the rate successes arrive at while the service throttles is the measurement
(:class:`Episode`: the bucket is dry then, so successes come exactly at its refill rate, whatever burst it had).
Modes:

* ``startup``: the opening window (32 requests) is paced over a tenth of a second, then the rate doubles every
  round trip (never faster than every ``_GROWTH_TIME``) until the service throttles more than noise explains.
* ``drain``: startup's first congestion stops the sending until the requests already in flight are answered.
  They were sent at up to several times the service's rate (a burst hides the limit until it runs dry), so they
  keep the service busy for a round trip whatever the client does next, and their answers measure its rate:
  sending on meanwhile would only add throttled requests. Then cruise at the measured rate (or, when the answers
  did not measure it, at half the startup's rate).
* ``cruise``: paced at ``CRUISE_GAIN`` x the measured rate, for a second or so (drawn, so that clients sharing
  an account do not probe in step), and for at least a hundred requests. When bulk runs say the work left
  ends within ``_ENDGAME`` seconds, cruise lasts to the end: a probe's throttled requests would wait out their
  ``Retry-After`` (a second or more) after everything else was done. For the same reason each second or so of
  that last cruise that was throttled beyond the noise floor lowers it by the excess.
* ``paused``: a cut to a guess (after heavy throttling that measured nothing) was throttled whole as well: the
  service grants nothing at any rate now (a window limiter whose quota is spent refuses everything until the
  window turns; an account blocked for a while). Halving again and again would leave the rate far under the
  service's when it grants again: one request per round trip (0.1 s at least, doubling with each throttled one
  up to a second) goes until one is granted, then the cruise resumes at the rate it paused at.
* ``probe``: a staircase: each step a round trip long (0.15 s at least), the first 5% above the
  measured rate, each further step twice the one before (5%, 10%, 20%, 40%...). At an unchanged limit the
  second step meets throttling and the overshoot is a few percent for a round trip; a limit that went up four
  times is found in five or six steps. A step that meets throttling before it measures the service steps back to
  the last clean step at once, a guess that the measure under way replaces (a guess's own probe holds its step).
  A step climbs only when its answers were no more throttled than noise explains: one that heard a little
  throttling, not yet clearly congestion, holds until its answers decide, and after three steps' time undecided
  the probe ends at the last clean step (a step of a few answers hears a dry bucket as one or two throttles).

Whatever the mode, a phase whose throttled answers exceed the noise floor by more than chance explains, and by
a clear share, is congestion: the rate is cut to ``CRUISE_GAIN`` x the measured rate (or hard, by half,
when the throttling is heavy and nothing is measured yet). Only the phase being sent now can cut: the answers
to requests sent before a cut say nothing about the new rate; except when the service's rate, measured from the
throttling under way, is far below the rate (``_DROPPED``): the limit fell, and waiting a round trip for the new
phase to show it would only send more requests into it. Throttling that does not rise with the rate (a
``503 ServerBusy`` at random) is learned while cruising as the noise floor and then ignored: the rate never
collapses to 1/(p x recovery), as it did when every throttle cut it.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import random

    from ._meter import Meter, Phase

__all__ = ["CRUISE_GAIN", "Episode", "RateControl"]

_log = logging.getLogger("batch_dealloc_async.traffic")

CRUISE_GAIN: Final = 0.98
_FIRST_STEP: Final = 0.05  # the probe's first step above the measured rate; each further step doubles it
_MIN_STEP_TIME: Final = 0.15  # seconds a probe step lasts, at least (else a round trip and a tenth of a second)
_HOLD: Final = (0.75, 1.25)  # seconds of cruise between probes, drawn
_GUESS_HOLD: Final = 0.5  # seconds of cruise at a guessed rate (after a hard cut) before probing, not drawn
_HOLD_REQUESTS: Final = 100  # and at least the time to send this many...
_MAX_HOLD: Final = 2.0  # ...up to this many seconds
_HARD_CUT: Final = 0.5  # heavy throttling with nothing measured yet cuts the rate to this share (at least)
_NOISE_EWMA: Final = 0.3
_LEARN_ANSWERS: Final = 20  # answers in a cruise phase before its throttled share teaches the noise floor
_TRUSTED_ANSWERS: Final = 12  # successes between two throttled answers before their rate is trusted for a cut
_MIN_EPISODE: Final = 0.05  # seconds of them, at least
_QUIET: Final = 0.2  # seconds without throttling that end an episode (or two round trips, if longer)
_ASSUMED_NOISE: Final = 0.05  # the random throttling startup and cruising allow for before the floor is learned
_SURPRISE: Final = 6.9  # ln(1/0.001): how unlikely, under that noise, throttling must be to count as congestion
_TESTED: Final = 10  # startup phases tested at that bar; after them it rises by ln(phases / this) (see congested())
_HEAVY: Final = 0.5  # a phase throttled this much is cut hard at once, measured or not...
_HEAVY_ANSWERS: Final = 8  # ...once it has this many answers
_SETTLE: Final = 0.005  # seconds (plus a quarter round trip) after a cut before the new phase counts
_START_WINDOW: Final = 32
_GROWTH: Final = 2.0  # startup multiplies the rate by this per round trip...
_GROWTH_TIME: Final = 0.2  # ...but never faster than once per this many seconds
_OPENING_TIME: Final = 0.1  # before the first answer, the opening window is paced over this many seconds
_RUNAWAY: Final = 4.0  # a growing rate never runs ahead of four times what the client actually sends
_DROPPED: Final = 0.6  # a service rate measured under this share of the rate is a fallen limit: cut at once
_ENDGAME: Final = 2.0  # seconds of known work left (plus two round trips) under which no probe starts
_ENDGAME_GAIN: Final = 0.93  # ...and the cruise there holds at this share of the service's rate
_PROBE_FLOOR: Final = 0.9  # a probe's congestion never measures the service under this share of its cruise
_STALL_ANSWERS: Final = 5  # no answer for as long as this many take at the rate (or _STALL_TIME) is a stall
_STALL_TIME: Final = 0.03  # (a busy loop delivers answers in batches 10-25 ms apart: not a stall)
_STALL_VARIATIONS: Final = 4.0  # ...plus this many round-trip variations (answers' travel times vary)
_PAUSE_PERIOD: Final = 0.1  # seconds between the requests of a pause, at first (or a round trip, if longer)...
_PAUSE_MAX: Final = 1.0  # ...doubling with each throttled one up to this
_GRANTED_SPAN: Final = 1.0  # seconds of successes counted for the floor under a measure taken after a cut:
_MISREAD: Final = 0.25  # a measure under this share of them is not the service's rate...
_GRANTED_FLOOR: Final = 0.5  # ...and this share of them is taken instead
_UNDECIDED: Final = 3.0  # a probe step throttled a little, neither clean nor congested, holds this many steps' time
_DRAIN_ANSWERS: Final = 3  # successes between throttled answers that measure the rate once a drain is over
_OUTPACED: Final = 1.2  # ...if the client sent this much faster meanwhile, or they measure more than the guess


class Episode:
    """Throttling that goes on: the service's rate is the rate successes arrive at while it lasts.

    While the service throttles, its bucket is dry, and every success it grants spends a token it has just
    refilled: successes *answered* between two throttled answers arrive at exactly its rate, whatever burst it
    had before and however the client sends (as long as it sends faster). Answer times, not send times: the
    service grants tokens in arrival order.

    Random throttling (a ``503 ServerBusy`` now and then) keeps an episode going while the bucket is not dry at
    all: its successes then come at the client's own rate. A measure taken for a congested phase therefore never
    reaches back before that phase's first throttled answer (:meth:`rate`'s ``since``).
    """

    __slots__ = (
        "_base",
        "_first",
        "_last",
        "_oks_at_last",
        "_quiet",
        "_start",
        "_throttles_base",
        "oks",
        "spanned",
        "throttles",
    )

    def __init__(self) -> None:
        self._first: float | None = None
        self._start = 0.0
        self._last = 0.0
        self._base: int | None = None  # successes counted when the episode's counting began
        self._oks_at_last = 0
        self._throttles_base = 0
        self._quiet = 0.0
        self.oks = 0  # successes ever
        self.throttles = 0  # throttled answers ever
        self.spanned = (0.0, 0.0)  # the answer times the last measure spanned

    def throttled(self, now: float, *, quiet: float, guard: float) -> None:
        """A throttled answer arrived; after ``quiet`` seconds without one, a new episode begins.

        Counting starts ``guard`` seconds after the first throttled answer: successes granted just before the
        bucket ran dry can still be arriving for as long as answers' travel times vary.
        """
        if self._first is None or now - self._last > quiet:
            self._first = now
            self._start = now + guard
            self._base = None
        if self._base is None and now >= self._start:
            self._base, self._throttles_base = self.oks, self.throttles
        self.throttles += 1
        self._quiet = quiet
        self._last = now
        self._oks_at_last = self.oks

    def stalled(self, start: float) -> None:
        """No answer came for a while (the client's loop or the service paused): count afresh from ``start``.

        The answers held meanwhile arrive at once, so the successes counted up to a throttle among them are a part
        of those the service granted over the pause, and the pause would read as a dry bucket (a 0.1 s stall read
        118/s from a 1,000/s account). ``start``: after the held answers.
        """
        if self._first is not None:
            self._start = max(self._start, start)
            self._base = None

    def reset(self) -> None:
        """Forget the episode (after a cut: what follows measures the service from here)."""
        self._first = None

    def ok(self, now: float) -> None:
        """A success arrived."""
        if self._base is None and self._first is not None and now >= self._start:
            self._base, self._throttles_base = self.oks, self.throttles
        self.oks += 1

    def rate(
        self,
        *,
        trusted: int = _TRUSTED_ANSWERS,
        span: float = _MIN_EPISODE,
        since: tuple[float, int, int] | None = None,
        noise: float = 0.0,
    ) -> float | None:
        """The service's rate, once ``trusted`` successes came between throttled answers ``span`` seconds apart.

        ``since``: a time and the successes and throttles counted then (a phase's first throttled answer): when
        the episode's answers before it were throttled no more than random throttling explains (``noise``, 10% at
        least), the measure starts there (or, without enough answers since, the whole episode, if what came
        before is too short to be noise alone).
        """
        if self._first is None or self._base is None:
            return None
        start, base = self._start, self._base
        if since is not None and since[0] > start:
            throttles = since[2] - self._throttles_base
            if throttles <= max(0.1, 2.0 * noise) * (since[1] - base + throttles):
                # Before the phase's first throttle the throttling was no more than noise: if it went on for
                # longer than two episodes' quiet, it was noise alone (a dry bucket throttles densely), and the
                # successes then came at the client's own rate, not the service's.
                measured = self._measure(since[0], since[1], trusted, span)
                if measured is not None or since[0] - start > 2.0 * self._quiet:
                    return measured
        return self._measure(start, base, trusted, span)

    def _measure(self, start: float, base: int, trusted: int, span: float) -> float | None:
        seconds = self._last - start
        ok = self._oks_at_last - base
        if seconds < span or ok < trusted:
            return None
        self.spanned = (start, self._last)
        return ok / seconds


def _unlikely(k: int, n: int, p: float, surprise: float = _SURPRISE) -> bool:
    """Whether ``k`` throttles in ``n`` answers are too many for a throttling chance ``p``.

    Chernoff's bound: the chance of as many is below exp(-n KL(k/n || p)); it must be under exp(-``surprise``).
    """
    share = k / n
    if share <= p:
        return False
    divergence = share * math.log(share / p)
    if share < 1.0:
        divergence += (1.0 - share) * math.log((1.0 - share) / (1.0 - p))
    return n * divergence > surprise


class RateControl:
    """Decides the pacing rate and the window from the meter.

    Args:
        meter: The rate meter (phases are begun here).
        ceiling: The client's ``max_concurrency``.
        max_rate: A ceiling on the rate (requests/s), or ``None``.
        min_rate: The rate is never cut below this.
        rng: Draws the cruise hold times.
        now: The clock now.
    """

    __slots__ = (
        "_accepted",
        "_cut_at",
        "_drain_until",
        "_episode",
        "_first_step",
        "_granted",
        "_growing",
        "_guessing",
        "_hold_until",
        "_last_answer",
        "_last_growth",
        "_meter",
        "_min_rate",
        "_nudged",
        "_paused",
        "_phases",
        "_rng",
        "_since",
        "_step",
        "_step_since",
        "_variation",
        "backlog",
        "btl",
        "ceiling",
        "cuts",
        "max_rate",
        "mode",
        "noise",
        "rate",
        "window",
    )

    def __init__(
        self,
        meter: Meter,
        *,
        ceiling: int,
        max_rate: float | None,
        min_rate: float,
        rng: random.Random,
        now: float,
    ) -> None:
        self._meter = meter
        self.ceiling = ceiling
        self.max_rate = max_rate
        self._min_rate = min_rate
        self._rng = rng
        self.mode = "startup"
        # Until the first answer tells the round trip, the opening window is paced over _OPENING_TIME, not sent at
        # once: against a bucket of a few tokens (or one others have spent) it was throttled whole, 27 of 32
        # requests against a burst of 5, and clients of one account that started together split it by who came
        # first (the first took the burst and grew; the others guessed low, and every later move kept the split).
        self.rate = self._opening_rate(_OPENING_TIME)  # requests/s: always paced (at least min_rate)
        if max_rate is not None:
            self.rate = min(max_rate, self.rate)
        self.window = float(min(_START_WINDOW, ceiling))
        self.noise = 0.0
        self.cuts = 0
        self.btl = 0.0  # the service's rate, as last measured
        self._episode = Episode()
        self._hold_until = now
        self._last_growth = now
        self._last_answer = now
        self._variation = 0.0
        self._step = 0
        self._first_step = 0
        self._guessing = False
        self._growing = False  # startup has set its first paced rate
        self._cut_at = now
        self._accepted = 0.0
        self._step_since = now
        self._nudged: float | None = None  # the throttled share of a cruise that was nudged down
        self._drain_until = now
        self._since: tuple[float, int, int] | None = None  # the congested phase's first throttle, when draining
        self.backlog = 0  # nodes bulk runs still have to do (0: unknown, or none)
        self._paused = 0.0  # the rate a pause resumes at
        self._phases = 0  # startup's phases so far (see congested())
        self._granted: collections.deque[float] = collections.deque()  # when the last second's successes came

    @property
    def guessing(self) -> bool:
        """Whether the rate is a guess (a hard cut, or a probe's step back) that the next measure replaces."""
        return self._guessing

    def __repr__(self) -> str:
        return f"RateControl({self.mode}, rate={self.rate:.1f}/s, window={int(self.window)}, noise={self.noise:.3f})"

    # ------------------------------------------------------------------------------------------------ signals

    def congested(self, phase: Phase) -> bool:
        """More throttled answers in ``phase`` than the noise floor and chance explain.

        A probe step is judged against the floor just learned while cruising. Startup and cruising judge against
        at least ``_ASSUMED_NOISE`` (random throttling of a few percent looks like a small overshoot until the
        floor has learned it), with a binomial tail bound: heavy throttling shows in a dozen answers, random
        throttling of 5% almost never passes. A startup that goes on (a client held back by its own window never
        meets the service's limit) is tested phase after phase: after ``_TESTED`` phases the bar rises by the log
        of how many, as in a multiple-comparison correction (5% random throttling over 20 s of startup was taken
        for congestion in one run in 12 to 20: a drain, then a second or two at 0.6-0.8x the rate).
        """
        expected = self.noise * phase.answered
        excess = phase.throttled - expected
        if excess < 2.0 + 2.0 * math.sqrt(expected):
            return False
        if phase.kind == "probe":
            return True
        surprise = _SURPRISE + math.log(max(1.0, self._phases / _TESTED)) if phase.kind == "startup" else _SURPRISE
        return _unlikely(phase.throttled, phase.answered, max(self.noise, _ASSUMED_NOISE), surprise)

    def on_throttled(self, phase: Phase | None, now: float) -> bool:
        """A throttled answer (to a request sent in ``phase``) arrived now; True when it made a cut."""
        rtt = self._meter.rtt
        if phase is not None and phase.first_throttled is None:
            phase.first_throttled = (now, self._episode.oks, self._episode.throttles)
        self._answer(now)
        self._episode.throttled(now, quiet=max(_QUIET, 2.0 * (rtt.smoothed or 0.0)), guard=2.0 * rtt.variation)
        if self.mode == "drain":
            return self._drained(now)
        if self.mode == "paused":
            return self._still_paused(phase, now)
        if self._guessing and self.mode == "cruise":
            # After a hard cut the rate is a guess: as soon as the throttling still coming in measures the service's
            # rate, go to it (the new phase would take a round trip to show what the old one already says).
            measured = self._episode.rate()
            if measured is not None and phase is not None:
                self._cut(phase, measured, now)
                return True
        if phase is not None and (fallen := self._fallen_limit(phase, now)) is not None:
            # The limit fell far below the rate: cut now, without waiting for a phase sent after the last cut to
            # show it (a round trip more of requests at the old rate, nearly all throttled).
            self._cut(phase, fallen, now)
            return True
        if phase is None or phase.start < self._cut_at or not self.congested(phase):
            return False  # sent before the last cut: it says nothing about the rate now
        return self._on_congestion(phase, now)

    def _still_paused(self, phase: Phase | None, now: float) -> bool:
        """A throttle while paused: what a pause waits for is a success; True when it slowed the pause down.

        A throttled pause request doubles the time to the next, up to ``_PAUSE_MAX``: an account that stays
        blocked gets a request a second, not ten.
        """
        if phase is None or phase.kind != "paused" or self.rate <= 1.0 / _PAUSE_MAX:
            return False
        self._set_rate(max(self._min_rate, self.rate / 2.0, 1.0 / _PAUSE_MAX), now)
        return True

    def _answer(self, now: float) -> None:
        """Any answer: after a stall, start afresh.

        A stall: no answer for as long as ``_STALL_ANSWERS`` take at the rate (``_STALL_TIME`` at least) plus four
        round-trip variations, and this answer was held for as long (its round trip is that much above the
        fastest). Not a stall: answers that come far apart because the client sends little, or a round trip after
        a drain.

        The episode counts from after the answers held by the stall, and a probe step is judged unthrottled only
        after a full step's answers since: a step that heard nothing heard no throttling either.
        """
        rtt = self._meter.rtt
        last, self._last_answer = self._last_answer, now
        variation, self._variation = self._variation, rtt.variation  # (before this answer's sample moved it)
        gap = max(_STALL_TIME, _STALL_ANSWERS / self.rate) + _STALL_VARIATIONS * variation
        if now - last <= gap or (late := rtt.last - (rtt.min or 0.0)) <= gap:
            return
        _log.debug("no answer for %.3f s, then one %.3f s late: the answers stalled", now - last, late)
        # Count from a round trip after the held answers: with them, every request in flight may have been answered
        # at once, and the client's window was full, so no answer comes until the requests sent now come back.
        self._episode.stalled(now + (rtt.min or 0.0) + gap)
        self._step_since = max(self._step_since, now)

    def _fallen_limit(self, phase: Phase, now: float) -> float | None:
        """Cruising or probing: the service's rate measured now, when it is far below the rate (the limit fell).

        "The rate" is the one the throttled request's phase was sent at, when lower than the rate now: a probe's
        staircase runs a step or two ahead of its answers, and what a step earned says nothing about two steps on.
        """
        if self.mode not in {"cruise", "probe"} or phase.kind not in {"cruise", "probe"}:
            return None  # (startup's and the drain's answers: a start, or a pause, not a steady rate)
        measured = self._episode.rate(since=phase.first_throttled, noise=self.noise)
        if measured is None:
            return None
        sent = phase.send_rate(now)
        rate = self.rate if sent is None else min(sent, self.rate)
        if self._service_rate(measured) >= _DROPPED * rate:
            return None
        return measured

    def _service_rate(self, measured: float) -> float:
        """The service's rate behind the successes measured: those the noise floor took at random added back."""
        return measured / max(1.0 - self.noise, 0.5)

    def _on_congestion(self, phase: Phase, now: float) -> bool:
        measured = self._episode.rate(since=phase.first_throttled, noise=self.noise)
        if measured is not None and self.mode == "probe":
            # The probe started from a cruise the service took with no more than noise: a measure far below it
            # is a stall in the answers (the client's or the service's), not the service's rate. A limit that
            # fell meanwhile shows in the cruise that follows (or the falling-limit check) and is cut there.
            measured = max(measured, _PROBE_FLOOR * self.btl * CRUISE_GAIN)
        if measured is not None:
            self._cut(phase, measured, now)
        elif self.mode == "startup":
            self._drain(phase, now)
        elif phase.answered >= _HEAVY_ANSWERS and phase.share() >= _HEAVY:
            if self.mode == "cruise" and self._guessing and phase.ok == 0:
                self._pause(now)
            else:
                self._cut_hard(phase, now)
        else:
            # A few more answers will measure the service's rate: cut once, to the right rate. Meanwhile a probe
            # from a measured cruise steps back to its last clean step, as a guess the measure replaces: holding
            # the step that met the limit sent a third to a half of its requests into throttling until the measure
            # came (at 50/s a dozen successes take a quarter of a second). A guess's probe holds its step instead:
            # its steps are large (265 -> 690/s), and the step before may be far under the limit, so its cut is
            # capped at this step. Neither climbs on: the next step would only send further past a limit already
            # met (690 to 2,440/s against 541/s).
            if self.mode == "probe":
                if self._first_step == 0:
                    _log.debug("probe congested (%r): back to %.1f requests/s until measured", phase, self._accepted)
                    self.cuts += 1
                    self.btl = self._accepted / CRUISE_GAIN
                    self._cruise(now, self._accepted, measured=False)
                    return True
                self._step_since = max(self._step_since, now)
                self._accepted = max(self._accepted, self.rate)
            return False
        return True

    def on_ok(self, now: float) -> None:
        """A success: grow in startup; move between cruise and the probe's steps on time."""
        self._answer(now)
        self._episode.ok(now)
        granted = self._granted
        granted.append(now)
        if granted[0] < now - _GRANTED_SPAN:
            self._granted_since(now)
        if self.mode == "startup":
            self._grow(now)
        elif self.mode == "drain":
            self._drained(now)
        elif self.mode == "paused":
            _log.debug("granted again: resuming at %.1f requests/s", self._paused)
            self._cruise(now, self._paused, measured=False)
        elif self.mode == "cruise":
            if now >= self._hold_until:
                self._end_cruise(now)
        elif now - self._step_since >= (step_time := max(_MIN_STEP_TIME, (self._meter.rtt.smoothed or 0.0) + 0.1)):
            step = self._meter.current
            if not self._clean(step):
                # Throttled more than noise explains, if not clearly yet: a step of a few answers sees a dry
                # bucket's throttling as two or three. Climbing on would double the step into the limit (a client
                # at 46/s sharing an account climbed so to 1,440/s). Hold until the answers decide; undecided
                # after three steps' time, the limit is about here: cruise at the last clean step.
                if now - step.start < _UNDECIDED * step_time:
                    self._step_since = now
                else:
                    _log.debug("probe step %r undecided: cruising at %.1f requests/s", step, self._accepted)
                    self.btl = self._accepted / CRUISE_GAIN
                    self._cruise(now, self._accepted)
                return
            self._step += 1  # the step went unthrottled for a round trip: the service has room
            self._accepted = self.rate
            self._climb(now)

    def _clean(self, phase: Phase, *, floor: float = 0.5 * _ASSUMED_NOISE) -> bool:
        """No more throttled answers in ``phase`` than noise explains, give or take one and a deviation.

        Noise: the floor learned, or ``floor`` if higher (by default half the noise assumed before the floor is
        learned: random throttling of a few percent shows in every probe step long before a cruise has learned it).
        """
        expected = max(self.noise, floor) * phase.answered
        return phase.throttled <= expected + 1.0 + math.sqrt(expected)

    # -------------------------------------------------------------------------------------------------- moves

    def _grow(self, now: float) -> None:
        """Startup: twice the rate every round trip (paced once the first answer tells the round trip)."""
        rtt = self._meter.rtt.smoothed
        if rtt is None:
            return
        if now - self._meter.current.start >= max(rtt, _GROWTH_TIME):
            # A phase per round trip: the congestion test then weighs what the last round trip met, not the
            # whole start with all its early successes.
            self._meter.begin("startup", now)
            self._phases += 1
        rtt = max(rtt, _GROWTH_TIME)
        if not self._growing:
            self._growing, self._last_growth = True, now
            self._set_rate(self._opening_rate(), now)
            return
        last, self._last_growth = self._last_growth, now
        self._set_rate(self.rate * _GROWTH ** (min(now - last, rtt) / rtt), now)

    def _opening_rate(self, floor: float = _GROWTH_TIME) -> float:
        """The rate startup paces at from its first answer: the opening window over the round trip (``floor`` at least).

        Before the first answer the round trip is unknown, and the floor is ``_OPENING_TIME``.
        """
        rtt = max(self._meter.rtt.smoothed or 0.0, floor)
        return max(self._min_rate, min(_START_WINDOW, self.ceiling) / rtt)

    def _cut(self, phase: Phase, measured: float, now: float) -> None:
        current = self.rate
        btl = self._service_rate(measured)
        if self.mode == "probe":
            # A probe that met throttling gains nothing over its last unthrottled step. What it measured may hold
            # a share it took from other clients of the account while it probed: keeping that would ratchet it
            # up at their expense, round after round.
            btl = min(btl, self._accepted / CRUISE_GAIN)
        cap = current * 0.95
        if self._guessing:
            # The rate is a guess (a hard cut): the measure replaces it, up to what the service last took unthrottled.
            cap = max(cap, self._accepted)
            btl = self._floored(btl, now)
        target = min(btl * CRUISE_GAIN, cap)
        _log.debug("cut in %s (%r): service rate %.1f; rate %.1f -> %.1f", self.mode, phase, measured, current, target)
        self.cuts += 1
        self.btl = btl
        self._episode.reset()
        self._cruise(now, target)

    def _drain(self, phase: Phase, now: float) -> None:
        """Startup met congestion: hold new requests until those in flight are answered (or measure the rate)."""
        self._meter.mark(now)
        awaited = self._meter.awaited
        _log.debug("startup congested at %.1f requests/s: draining %d requests in flight", self.rate, awaited)
        # The rate startup reached: the fallback's reference. Not growing yet (every answer so far was throttled: the
        # account's bucket was already spent by others), the opening window's rate over the round trip seen.
        self._accepted = self.rate if self._growing else self._opening_rate()
        self._since = phase.first_throttled
        self.cuts += 1
        self.mode = "drain"
        rtt = self._meter.rtt
        self._drain_until = now + (rtt.smoothed or 0.0) + 4.0 * rtt.variation + _SETTLE
        self._set_rate(self._min_rate, now)
        self._meter.begin("drain", now)
        self._drained(now)

    def _drained(self, now: float) -> bool:
        """While draining: once the rate is measured, or every request in flight is answered, go cruising."""
        measured = self._episode.rate(since=self._since, noise=self.noise)
        if measured is None and (self._meter.awaited > 0 and now < self._drain_until):
            return False
        if measured is None:
            measured = self._episode.rate(trusted=_DRAIN_ANSWERS, span=_SETTLE, since=self._since, noise=self.noise)
            if measured is not None and measured < self._accepted * _HARD_CUT and not self._outpaced(measured):
                measured = None  # a few successes over a time the client sent little: its own rate, not the service's
        if measured is None:
            target = self._accepted * _HARD_CUT
            _log.debug("drained without a measure: %.1f requests/s, measuring", target)
            self.btl = target / CRUISE_GAIN
            self._cruise(now, target, measured=False)
            return True
        self.btl = self._floored(self._service_rate(measured), now)
        _log.debug("drained: service rate %.1f", measured)
        self._episode.reset()
        self._cruise(now, self.btl * CRUISE_GAIN)
        return True

    def _outpaced(self, measured: float) -> bool:
        """Whether the client sent faster than ``measured`` in each half of the time the measure's requests were sent.

        Successes between throttles come at the service's rate only while the client sends faster: over a time it
        sent less (an opening paced over a tenth of a second, then nothing until its first answer a round trip
        later), they come at the client's own rate. At 150 ms three successes spanning that wait read 17/s against
        a bucket of 50/s, under the guess (half the startup's rate), and a 3-second run took 2.3x.
        """
        start, end = self._episode.spanned
        back, half = self._meter.rtt.min or 0.0, (end - start) / 2.0
        return all(
            self._meter.sent_between(begin, begin + half) >= _OUTPACED * measured * half
            for begin in (start - back, start - back + half)
        )

    def _cut_hard(self, phase: Phase, now: float) -> None:
        """Heavy throttling with nothing measured yet (the limit fell): half the rate, or what the phase delivered."""
        current = self.rate
        target = current * _HARD_CUT
        delivered = phase.delivered(now)
        if delivered is not None:
            target = min(max(target, delivered * CRUISE_GAIN), current * 0.95)
        _log.debug("cutting hard in %s (%r): rate %.1f -> %.1f, measuring", self.mode, phase, current, target)
        self.cuts += 1
        self.btl = target / CRUISE_GAIN
        self._cruise(now, target, measured=False)

    def _granted_since(self, now: float) -> int:
        """Successes answered in the last ``_GRANTED_SPAN`` seconds."""
        granted = self._granted
        while granted and granted[0] < now - _GRANTED_SPAN:
            granted.popleft()
        return len(granted)

    def _floored(self, service_rate: float, now: float) -> float:
        """A service rate measured after a drain or a hard cut, or half the last second's successes if far under.

        Such a measure counts the few successes that come between throttles while the service grants little. A
        token bucket grants its rate then, but a window limiter whose quota is spent grants nothing until the
        window turns: after a startup that the service had granted 1,000 requests in the second before, the
        drain read 12.7 requests/s, and the client cruised there. A measure under a quarter of the last second's
        successes is taken as such a misreading (a bucket whose limit fell to a quarter still reads true; one
        that fell further is cut in two steps).
        """
        granted = self._granted_since(now)
        if service_rate >= _MISREAD * granted:
            return service_rate
        _log.debug(
            "measured %.1f requests/s after %d successes in a second: taking %.1f",
            service_rate,
            granted,
            _GRANTED_FLOOR * granted,
        )
        return _GRANTED_FLOOR * granted

    def _pause(self, now: float) -> None:
        """A cut to a guess was throttled whole as well: the service grants nothing now, at any rate.

        One request per round trip (``_PAUSE_PERIOD`` at least) until one is granted, then cruise at the rate
        paused at (a guess, so the next heavy throttling halves it or pauses again).
        """
        self._paused = self.rate
        _log.debug("nothing granted at %.1f requests/s either: pausing", self._paused)
        self.mode = "paused"
        self.cuts += 1
        self._set_rate(max(self._min_rate, 1.0 / max(_PAUSE_PERIOD, self._meter.rtt.smoothed or 0.0)), now)
        self._meter.begin("paused", now)

    def _cruise(self, now: float, rate: float, *, measured: bool = True) -> None:
        self.mode = "cruise"
        self._cut_at = now
        self._set_rate(rate, now)
        # At a measured rate: a second or so, and long enough to send a hundred requests (up to two seconds), as
        # each probe costs a few throttled answers. At a guess (a hard cut), probe again soon, with bigger steps.
        if measured:
            hold = max(self._rng.uniform(*_HOLD), min(_HOLD_REQUESTS / max(rate, self._min_rate), _MAX_HOLD))
        else:
            # Not drawn: clients of one account that started together, and all met the first congestion, probe
            # in step from their guesses (at random times the first to probe takes the room, and keeps it).
            hold = _GUESS_HOLD
        self._first_step = 0 if measured else 2
        self._guessing = not measured
        self._hold_until = now + hold
        settle = _SETTLE + 0.25 * (self._meter.rtt.smoothed or 0.0)
        self._meter.begin("cruise", now, settle=settle)

    def _probe(self, now: float) -> None:
        self.mode = "probe"
        self._accepted = self.rate
        self.btl = max(self.btl, self.rate / CRUISE_GAIN)
        self._step = self._first_step
        self._climb(now)

    def _climb(self, now: float) -> None:
        """Step ``_step`` of the staircase: 5%, then 10%, 20%, 40%... more than the step before.

        Each step is a phase of its own, so a step's throttling is not diluted by the quiet steps before it.
        """
        factor = 1.0
        for step in range(self._first_step, self._step + 1):
            factor *= 1.0 + _FIRST_STEP * 2.0**step
        self._step_since = now
        self._meter.begin("probe", now)
        self._set_rate(self.btl * factor, now)

    def _end_cruise(self, now: float) -> None:
        """Learn from the cruise, then probe; or, if it was throttled a little, cruise a little slower first.

        A little throttling while cruising is either a rate measured a few percent high, or noise. A nudge down
        by the excess tells them apart: after an overshoot the throttling stops; noise stays as it was, and
        becomes the floor.
        """
        phase = self._meter.current
        if 0 < self.backlog < self.rate * (_ENDGAME + 2.0 * (self._meter.rtt.smoothed or 0.0)):
            # The work ends within a probe's cost: a probe's throttled requests would wait out a Retry-After after
            # the rest is done. Cruise on, a little lower: any throttled answer now lengthens the run by a second.
            if self.btl > 0:
                if phase.answered >= _LEARN_ANSWERS and not self._clean(phase, floor=0.0):
                    # Still throttled beyond the noise learned (a measure a few percent high, or a limit a little
                    # lower now): each throttle costs its node a Retry-After at the end of the run, more than a few
                    # percent of the rate does. Down by the excess.
                    self.btl *= 1.0 - max(0.0, phase.share() - self.noise)
                    _log.debug("endgame cruise throttled %.1f%%: %.1f requests/s", 100 * phase.share(), self.btl)
                self._set_rate(min(self.rate, self.btl * _ENDGAME_GAIN), now)
            self._hold_until = now + self._rng.uniform(*_HOLD)
            self._meter.begin("cruise", now)  # each stretch of the endgame is judged on its own answers
            return
        if phase.kind != "cruise" or phase.answered < _LEARN_ANSWERS:
            self._probe(now)
            return
        share = phase.share()
        excess = phase.throttled - self.noise * phase.answered
        significant = excess >= 2.0 + 2.0 * math.sqrt(self.noise * phase.answered)
        if significant and self._nudged is None:
            self._nudged = share
            self.btl *= 1.0 - (share - self.noise)
            _log.debug("cruise throttled %.1f%% above the floor: %.1f requests/s", 100 * (share - self.noise), self.btl)
            self._cruise(now, self.btl * CRUISE_GAIN)
            return
        if self._nudged is not None and share >= 0.5 * self._nudged:
            self.noise = share  # the nudge changed nothing: this much throttling is noise
        elif not significant:
            self.noise += (share - self.noise) * _NOISE_EWMA
        self._nudged = None
        self._probe(now)

    def _set_rate(self, rate: float, now: float) -> None:
        if self.mode in {"startup", "probe"}:
            # Growing a rate the client does not use (little work, or held elsewhere) would only run ahead.
            span = max(self._meter.rtt.smoothed or 0.0, _GROWTH_TIME)
            sending = self._meter.recent_send_rate(now, span)
            if sending > 0:
                rate = min(rate, max(_RUNAWAY * sending, self.rate))
        rate = max(self._min_rate, rate)
        if self.max_rate is not None:
            rate = min(rate, self.max_rate)
        self.rate = rate
        rtt = self._meter.rtt.smoothed or 0.0
        # Enough slots for the rate at the round trip seen, twice over (latency moves), and never fewer than 8.
        self.window = float(min(self.ceiling, max(8, math.ceil(2.0 * rate * rtt) + 8)))
