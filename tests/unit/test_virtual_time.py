from __future__ import annotations

import asyncio

import pytest

from tests.virtual_time import VirtualTimeLoop, run_virtual


@pytest.mark.parametrize(
    ("start", "delays"),
    [(0.0, [1.0]), (0.0, [0.5, 1.5, 2.25]), (1000.0, [3.0, 0.0, 7.75])],
)
def test_sleeps_advance_the_clock_exactly(start: float, delays: list[float]) -> None:
    """Each asyncio.sleep moves the virtual clock by exactly its delay, from the given start."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        seen = [loop.time()]
        for delay in delays:
            await asyncio.sleep(delay)
            seen.append(loop.time())
        return seen

    expected = [start]
    for delay in delays:
        expected.append(expected[-1] + delay)
    assert run_virtual(main(), start=start) == expected


@pytest.mark.parametrize("limit", [0.25, 2.0, 90.0])
def test_timeout_fires_at_the_virtual_deadline(limit: float) -> None:
    """asyncio.timeout cancels a longer sleep exactly when the virtual clock reaches its deadline."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.sleep(limit * 10)
        return loop.time()

    assert run_virtual(main()) == limit


def test_an_hour_passes_on_the_virtual_clock() -> None:
    """A one-hour sleep, and a call_later an hour away, both complete with the virtual clock moved by 3600 s."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        loop.call_later(3600, fired.set_result, None)
        start = loop.time()
        await asyncio.sleep(3600)
        await fired
        return start, loop.time()

    assert run_virtual(main(), start=50.0) == (50.0, 3650.0)
