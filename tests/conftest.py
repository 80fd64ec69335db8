"""Fixtures shared by every test: a fake clock, the reference account, planted secrets."""

from __future__ import annotations

import asyncio
import random
from typing import Final

import pytest

from batch_dealloc_async import BatchDeallocClient, RetryPolicy, SharedKeyCredential

REFERENCE_ACCOUNT: Final = "myaccount"
REFERENCE_KEY: Final = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
REFERENCE_DATE: Final = "Sun, 01 Jun 2025 12:00:00 GMT"
REFERENCE_EPOCH: Final = 1748779200.0  # REFERENCE_DATE as epoch seconds
ENDPOINT: Final = "https://myaccount.westus.batch.azure.com"


class FakeClock:
    """Monotonic and wall clocks that only move when the code under test sleeps (or a test advances them)."""

    def __init__(self, start: float = REFERENCE_EPOCH) -> None:
        self.now = 1000.0
        self.wall = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shared_key() -> SharedKeyCredential:
    return SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)


@pytest.fixture
def make_client(clock: FakeClock, shared_key: SharedKeyCredential):
    """Build a client on the fake clock (seeded jitter); extra keyword arguments override the defaults."""

    def make(**kwargs: object) -> BatchDeallocClient:
        options: dict[str, object] = {
            "clock": clock.monotonic,
            "sleep": clock.sleep,
            "wall_clock": clock.time,
            "rng": random.Random(1),
            "retry": RetryPolicy(),
        }
        options.update(kwargs)
        endpoint = options.pop("endpoint", ENDPOINT)
        credential = options.pop("credential", shared_key)
        return BatchDeallocClient(endpoint, credential, **options)  # type: ignore[arg-type]

    return make
