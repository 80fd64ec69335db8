"""Retry-After parsing and the retry policy's arithmetic."""

from __future__ import annotations

import random

import pytest
from multidict import CIMultiDict

from batch_dealloc_async import RetryPolicy
from batch_dealloc_async._retry import parse_retry_after
from tests.conftest import REFERENCE_EPOCH


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2 "}, 2.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "99999999999"}, 365 * 24 * 3600.0),
        ({"Retry-After": "Sun, 01 Jun 2025 12:00:10 GMT"}, 10.0),
        ({"Retry-After": "Sun, 01 Jun 2025 11:00:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "1" * 100}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, fractions, HTTP dates and ms headers parse; negative is 0; garbage is None."""
    assert parse_retry_after(CIMultiDict(headers), now=REFERENCE_EPOCH) == expected


def test_backoff_is_full_jitter_capped() -> None:
    """Backoff is uniform in [0, min(cap, base * 2**(n-1))]."""
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=5.0)
    rng = random.Random(3)
    for retry in range(1, 70):
        ceiling = min(5.0, 2.0 ** (retry - 1))
        assert 0.0 <= policy.backoff(retry, rng) <= ceiling


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"max_attempts": 1.5}, {"backoff_base": 0}, {"deadline": -1}, {"backoff_cap": float("inf")}],
)
def test_policy_validates(kwargs: dict[str, object]) -> None:
    """Nonsense policies are refused at construction."""
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen_and_readable() -> None:
    """The policy is an immutable value with a readable repr."""
    policy = RetryPolicy()
    assert "max_attempts=10" in repr(policy)
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[misc]
