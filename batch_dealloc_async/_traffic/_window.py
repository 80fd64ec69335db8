"""The concurrency window: at most ``limit`` requests in flight, waiters served first come, first served."""

from __future__ import annotations

import asyncio
import collections
import contextlib

__all__ = ["Window"]


class Window:
    """Slots for requests in flight; ``limit`` may move between 1 and ``ceiling`` at any time.

    Args:
        ceiling: The most slots ever (the client's ``max_concurrency``).
        limit: The slots at first.
    """

    __slots__ = ("_limit", "_waiters", "ceiling", "in_flight")

    def __init__(self, ceiling: int, limit: int) -> None:
        self.ceiling = ceiling
        self._limit = min(max(1, limit), ceiling)
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __repr__(self) -> str:
        return f"Window(limit={self._limit}/{self.ceiling}, in_flight={self.in_flight}, waiting={len(self._waiters)})"

    @property
    def limit(self) -> int:
        """The slots now."""
        return self._limit

    @limit.setter
    def limit(self, value: float) -> None:
        self._limit = min(max(1, int(value)), self.ceiling)
        self._wake()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    def try_take(self) -> bool:
        """Take a slot at once if one is free and nobody waits (the common case, without a coroutine)."""
        if self.in_flight < self._limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (first come, first served)."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # the slot was handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # give() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back, handing it to the next waiter while the limit allows."""
        while self._waiters and self.in_flight <= self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self.in_flight -= 1

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
