"""The retry budget: retries after failures may use a fifth of the successes, plus a small steady allowance.

A service that fails many requests without failing all of them (the breaker stays closed) must not get a
storm of retries on top (gRPC's retry throttling, Finagle's retry budgets). Each success deposits
``ratio`` of a retry; a steady ``floor`` per second is always allowed, up to ``cap`` saved. A retry after a
failure takes one; with none left it waits for a deposit. Throttled requests are not retries in this sense:
the pacer already spaces them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["RetryBudget"]

RATIO: Final = 0.2
FLOOR: Final = 10.0
CAP: Final = 100.0


class RetryBudget:
    """Retry credits, deposited by successes and by time, spent by retries after failures.

    Args:
        clock: Monotonic seconds.
        sleep: Awaitable sleep.
        ratio: Credit deposited per success.
        floor: Credit deposited per second regardless.
        cap: The most credit saved.
    """

    __slots__ = ("_balance", "_cap", "_clock", "_floor", "_last", "_ratio", "_sleep", "waited")

    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        *,
        ratio: float = RATIO,
        floor: float = FLOOR,
        cap: float = CAP,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._ratio = ratio
        self._floor = floor
        self._cap = cap
        self._balance = cap / 10
        self._last = clock()
        self.waited = 0  # retries that had to wait for credit

    def __repr__(self) -> str:
        return f"RetryBudget(balance={self.balance:.1f})"

    @property
    def balance(self) -> float:
        """Credit now (the steady allowance accrued since the last change included)."""
        return min(self._cap, self._balance + (self._clock() - self._last) * self._floor)

    def _settle(self) -> None:
        self._balance = self.balance
        self._last = self._clock()

    def success(self) -> None:
        """A success deposits ``ratio``."""
        if self._balance >= self._cap:
            return  # full: time and deposits add nothing (the common case, a healthy run; no clock read)
        self._settle()
        self._balance = min(self._cap, self._balance + self._ratio)

    async def spend(self) -> None:
        """Take one credit for a retry, waiting for it when there is none."""
        self._settle()
        if self._balance >= 1.0:
            self._balance -= 1.0
            return
        self.waited += 1
        while True:
            await self._sleep(max((1.0 - self._balance) / self._floor, 0.001))
            self._settle()
            if self._balance >= 1.0:
                self._balance -= 1.0
                return
