"""Throttling (one token bucket for the account) and the injected faults, drawn from a seeded RNG."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import FaultConfig

__all__ = ["AFTER_FAULTS", "BEFORE_FAULTS", "FaultPicker", "TokenBucket"]

#: Faults answered instead of processing, and faults after processing, in the order they are drawn.
BEFORE_FAULTS: Final = ("error_500", "error_503", "reset_before", "html_502", "truncated_json")
AFTER_FAULTS: Final = ("reset_after", "slow")


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
