"""The adaptive limiter, driven without the network on a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from batch_dealloc_async import AdaptiveLimiter
from tests.conftest import FakeClock


def make(clock: FakeClock, max_concurrency: int = 8, **kwargs) -> AdaptiveLimiter:
    return AdaptiveLimiter(max_concurrency, clock=clock.monotonic, sleep=clock.sleep, **kwargs)


async def test_concurrency_never_exceeds_the_window(clock: FakeClock) -> None:
    """No more than max_concurrency hold a slot; waiters get slots in FIFO order."""
    limiter = make(clock, 3)
    peak = 0
    order: list[int] = []

    async def work(i: int) -> None:
        nonlocal peak
        await limiter.acquire()
        peak = max(peak, limiter.in_flight)
        order.append(i)
        await asyncio.sleep(0)
        limiter.release()

    async with asyncio.TaskGroup() as tg:
        for i in range(20):
            tg.create_task(work(i))
    assert peak == 3
    assert order == list(range(20))
    assert limiter.in_flight == 0


def feed_successes(limiter: AdaptiveLimiter, clock: FakeClock, rate: float, seconds: float) -> None:
    for _ in range(int(rate * seconds)):
        clock.advance(1.0 / rate)
        limiter.on_success()


async def test_throttle_shrinks_window_and_starts_pacing_then_recovers(clock: FakeClock) -> None:
    """A throttle halves the window and paces at beta x the measured rate; successes climb back and beyond."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=300, seconds=1.0)
    sent = clock.monotonic()
    limiter.on_throttled(sent, retry_after=1.0)
    assert limiter.limit == 32
    assert limiter.rate == pytest.approx(0.9 * 300, rel=0.02)
    # Throttles for requests sent before the cut do not cut again.
    limiter.on_throttled(sent - 0.001)
    assert limiter.rate == pytest.approx(0.9 * 300, rel=0.02)
    # The cubic climbs back to the throttled rate after `recovery` seconds, then beyond it.
    feed_successes(limiter, clock, rate=270, seconds=1.0)
    assert limiter.rate == pytest.approx(300, rel=0.03)
    feed_successes(limiter, clock, rate=300, seconds=1.0)
    assert limiter.rate is not None
    assert limiter.rate > 320
    # The window grows back additively (+1/limit per success), up to max_concurrency.
    assert 32 < limiter.limit < 64
    feed_successes(limiter, clock, rate=1000, seconds=3.0)
    assert limiter.limit == 64


async def test_startup_cuts_steeply_until_a_cut_holds(clock: FakeClock) -> None:
    """Back-to-back throttles right after the first cut use the steeper startup beta."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=2000, seconds=0.02)
    limiter.on_throttled(clock.monotonic())
    first = limiter.rate
    assert first is not None
    clock.advance(0.002)
    limiter.on_throttled(clock.monotonic())
    assert limiter.rate == pytest.approx(first * 0.5, rel=0.01)


async def test_pacing_spaces_requests(clock: FakeClock) -> None:
    """Once pacing, acquisitions are spaced 1/rate apart."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=100, seconds=1.0)
    limiter.on_throttled(clock.monotonic())
    rate = limiter.rate
    assert rate is not None
    stamps = []
    for _ in range(10):
        stamps.append(await limiter.acquire())
        limiter.release()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(g == pytest.approx(1.0 / rate, rel=1e-6) for g in gaps)


async def test_throttle_with_little_traffic_only_narrows_the_window(clock: FakeClock) -> None:
    """Without enough successes to measure a rate, a throttle narrows the window but does not pace."""
    limiter = make(clock, 8)
    limiter.on_throttled(clock.monotonic())
    assert limiter.rate is None
    assert limiter.limit == 4


async def test_fixed_limit_ignores_throttling(clock: FakeClock) -> None:
    """adaptive=False keeps the window and never paces."""
    limiter = make(clock, 8, adaptive=False)
    feed_successes(limiter, clock, rate=100, seconds=1.0)
    limiter.on_throttled(clock.monotonic())
    assert limiter.limit == 8
    assert limiter.rate is None


async def test_cancelled_waiter_gives_its_slot_on(clock: FakeClock) -> None:
    """A waiter cancelled while queued never leaks a slot."""
    limiter = make(clock, 1)
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release()
    assert limiter.in_flight == 0
    await limiter.acquire()
    assert limiter.in_flight == 1


def test_bad_arguments() -> None:
    """Nonsense limits are refused."""
    with pytest.raises(ValueError, match="max_concurrency"):
        AdaptiveLimiter(0)
    with pytest.raises(ValueError, match="beta"):
        AdaptiveLimiter(4, beta=1.5)
