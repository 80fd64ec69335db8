"""Throttling (one token bucket for the account, its rate on an optional schedule) and the injected faults.

Every random choice is drawn from a seeded RNG.
"""

from __future__ import annotations

import bisect
import collections
import math
import random
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import FaultConfig

__all__ = ["AFTER_FAULTS", "BEFORE_FAULTS", "THROTTLE_FAULTS", "FaultPicker", "TokenBucket", "scheduled_rate"]

#: Faults answered instead of processing, and faults after processing, in the order they are drawn. New kinds
#: go last, so a seed replays the same faults as before when they are off.
BEFORE_FAULTS: Final = (
    "error_500",
    "error_503",
    "reset_before",
    "html_502",
    "truncated_json",
    "server_busy",
    "too_many_requests",
)
AFTER_FAULTS: Final = ("reset_after", "slow")
#: The faults that are throttling (429/503 the client should slow down for), counted as throttled.
THROTTLE_FAULTS: Final = frozenset({"server_busy", "too_many_requests"})


def scheduled_rate(
    schedule: tuple[tuple[float, float | None], ...], run_time: float
) -> tuple[float | None, float | None]:
    """The rate of the step in force at ``run_time`` (``None``: unlimited) and the run time that step began.

    Before the first step there is no limit (and no step: ``(None, None)``).
    """
    index = bisect.bisect_right(schedule, run_time, key=lambda step: step[0]) - 1
    if index < 0:
        return None, None
    at, rate = schedule[index]
    return rate, at


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; every request takes one or is throttled.

    Args:
        rate: Tokens added per second.
        burst: The bucket's size (it starts full).
        clock: Monotonic seconds.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def set_rate(self, rate: float, since: float) -> None:
        """Fill at ``rate`` from monotonic time ``since`` on (tokens up to then accrue at the old rate).

        The tokens in the bucket are kept (the burst does not change); ``since`` is clamped between the last
        take and now, so a change is never applied to time already accounted for.
        """
        now = self._clock()
        since = min(max(since, self._last), now)
        self._tokens = min(self.burst, self._tokens + (since - self._last) * self.rate)
        self._last = since
        self.rate = rate

    def take(self) -> float | None:
        """Take a token: ``None`` when one was there, else the seconds until one will be."""
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return None
        self._tokens = tokens
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """The Retry-After header for a wait: whole seconds, at least one."""
        return str(max(1, math.ceil(wait)))


class WindowLimiter:
    """At most ``rate x window`` requests granted per window of ``window`` seconds; the rest are throttled.

    Fixed windows are counted afresh when each begins (the first begins when the limiter is made); a sliding window
    grants a request when fewer than the quota were granted in the ``window`` seconds before it. Either way the
    quota is a burst as fast as it is asked for, then nothing until the window turns (fixed) or the grants of a
    window ago expire (sliding). It has :class:`TokenBucket`'s interface.

    Args:
        rate: Requests per second on average (the quota is this times ``window``, at least one).
        window: The window's length in seconds.
        sliding: A sliding window rather than fixed ones.
        clock: Monotonic seconds.
    """

    __slots__ = ("_clock", "_count", "_granted", "_index", "_origin", "rate", "sliding", "window")

    def __init__(self, rate: float, window: float, clock: Callable[[], float], *, sliding: bool = False) -> None:
        self.rate = rate
        self.window = window
        self.sliding = sliding
        self._clock = clock
        self._origin = clock()
        self._index = 0
        self._count = 0
        self._granted: collections.deque[float] = collections.deque()

    def set_rate(self, rate: float, since: float) -> None:
        """A new rate (quota) from now on; what the window granted so far still counts."""
        del since
        self.rate = rate

    def take(self) -> float | None:
        """Grant a request: ``None`` when the window has room, else the seconds until it will."""
        now = self._clock()
        quota = max(1.0, self.rate * self.window)
        if self.sliding:
            granted = self._granted
            while granted and granted[0] <= now - self.window:
                granted.popleft()
            if len(granted) < quota:
                granted.append(now)
                return None
            return granted[0] + self.window - now
        index = int((now - self._origin) / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        if self._count < quota:
            self._count += 1
            return None
        return self._origin + (index + 1) * self.window - now


class FaultPicker:
    """Draws at most one fault per request from a seeded RNG, for the operations faults apply to."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"faults-{seed}")  # noqa: S311 (simulation, not cryptography)

    def pick(self, faults: FaultConfig, kinds: tuple[str, ...]) -> str | None:
        """One of ``kinds`` by its probability, or ``None``."""
        draw = self._rng.random()
        for kind in kinds:
            chance: float = getattr(faults, kind)
            if draw < chance:
                return kind
            draw -= chance
        return None

    def jitter(self, up_to: float) -> float:
        """A uniform delay in [0, up_to]."""
        return self._rng.uniform(0.0, up_to) if up_to > 0 else 0.0
