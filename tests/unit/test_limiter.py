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


async def test_first_throttle_cuts_steeply_then_an_exact_estimate_cuts_gently(clock: FakeClock) -> None:
    """The opening cut halves the measured rate; once an episode measures the service's rate, cuts are beta x it."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=2000, seconds=0.02)  # the opening burst
    limiter.on_throttled(clock.monotonic())
    first = limiter.rate
    assert first is not None
    assert first == pytest.approx(0.5 * 2000, rel=0.05)
    # Throttles for requests sent before the cut do not cut again.
    limiter.on_throttled(clock.monotonic() - 0.001)
    assert limiter.rate == first
    # Still throttled while the service grants 300/s: the episode's success rate is exact.
    feed_successes(limiter, clock, rate=300, seconds=0.05)
    limiter.on_throttled(clock.monotonic())
    assert limiter.rate == pytest.approx(0.9 * 300, rel=0.05)


async def test_rate_recovers_along_the_cubic_and_window_grows_back(clock: FakeClock) -> None:
    """After a cut the rate climbs back to the throttled rate in `recovery` seconds, then beyond it."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=2000, seconds=0.02)
    limiter.on_throttled(clock.monotonic())
    feed_successes(limiter, clock, rate=300, seconds=0.05)
    limiter.on_throttled(clock.monotonic())
    cut = limiter.rate
    assert cut is not None
    window = limiter.limit
    feed_successes(limiter, clock, rate=cut, seconds=1.0)
    assert limiter.rate == pytest.approx(cut / 0.9, rel=0.05)
    feed_successes(limiter, clock, rate=300, seconds=1.0)
    assert limiter.rate is not None
    assert limiter.rate > 320
    # The window grows back additively (+1/limit per success), up to max_concurrency.
    assert limiter.limit > window
    feed_successes(limiter, clock, rate=1000, seconds=3.0)
    assert limiter.limit == 64


async def test_rate_never_outgrows_twice_what_is_achieved(clock: FakeClock) -> None:
    """While little is sent (requests asleep on Retry-After), the rate does not run ahead: at most 2x measured."""
    limiter = make(clock, 64)
    feed_successes(limiter, clock, rate=2000, seconds=0.02)
    limiter.on_throttled(clock.monotonic())
    feed_successes(limiter, clock, rate=300, seconds=0.05)
    limiter.on_throttled(clock.monotonic())
    cut = limiter.rate
    feed_successes(limiter, clock, rate=20, seconds=5.0)  # a trickle, long after the curve would explode
    assert cut is not None
    assert limiter.rate is not None
    # Uncapped, the cubic would be at 300 x (1 + 0.1 x 4^3) = 2,220/s by now.
    assert limiter.rate <= 1.1 * cut / 0.9
    feed_successes(limiter, clock, rate=250, seconds=1.0)
    assert limiter.rate is not None
    assert limiter.rate <= 2 * 250 * 1.05


async def test_slow_start_then_additive_growth(clock: FakeClock) -> None:
    """The window starts small, grows by one per success until the first throttle, then by 1/limit."""
    limiter = make(clock, 64)
    assert limiter.limit == 8
    for _ in range(10):
        limiter.on_success()
    assert limiter.limit == 18
    limiter.on_throttled(clock.monotonic())
    assert limiter.limit == 9
    for _ in range(10):
        limiter.on_success()
    assert limiter.limit == 10


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
    limiter = make(clock, 8, initial_limit=8)
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
