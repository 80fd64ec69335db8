"""A virtual-time asyncio event loop: simulations that take hours of loop time run in no wall time.

The technique is the one of aiotools' ``VirtualClock``. An asyncio loop never waits except in one place: each
turn it asks its selector for I/O with a timeout, the time left until the earliest scheduled callback (``None``
when nothing is scheduled). :class:`VirtualTimeLoop` keeps its own clock, read by ``loop.time()``, and its
selector polls the real I/O without blocking (timeout 0). When nothing is ready it does not wait for the timeout:
it moves the virtual clock forward by it, so the earliest timer is due at once. Everything that schedules with
``loop.time()`` and ``loop.call_at``/``call_later`` (``asyncio.sleep``, ``asyncio.timeout``, ``wait_for``,
tenacity's sleeps through ``asyncio.sleep``) then runs on virtual time, exactly and deterministically.

Real I/O still works (it is polled every turn), and when nothing at all is scheduled the selector does a short
real wait, so a thread or an executor that wakes the loop (``call_soon_threadsafe``) is still seen.

Use :func:`run_virtual` from a plain synchronous test::

    def test_hour() -> None:
        async def main() -> float:
            await asyncio.sleep(3600)
            return asyncio.get_running_loop().time()

        assert run_virtual(main()) == 3600.0
"""

from __future__ import annotations

import asyncio
import selectors
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")

_IDLE_WAIT: Final = 0.01  # real seconds to wait for a thread's wake-up when no timer is scheduled


class _VirtualSelector(selectors.DefaultSelector):
    """The platform's selector, polling without blocking and advancing virtual time instead of waiting."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # nothing scheduled: only another thread (or real I/O) can wake the loop
            return super().select(_IDLE_WAIT)
        events = super().select(0)
        if not events and timeout > 0:
            self._advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a virtual clock that jumps to the next timer when idle.

    Args:
        start: The virtual clock's first reading.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        super().__init__(selector=_VirtualSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def time(self) -> float:
        """The virtual clock, in seconds."""
        return self._virtual_now


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop`, then close the loop cleanly.

    Like :func:`asyncio.run`: tasks left over are cancelled, async generators and the default executor are
    shut down, and the loop is closed.

    Args:
        main: The coroutine to run.
        start: The virtual clock's first reading.

    Returns:
        What ``main`` returned.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
