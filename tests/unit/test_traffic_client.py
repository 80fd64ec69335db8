"""Traffic control end to end: a BatchDeallocClient over an injected exchange, through an outage, on virtual time."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Final

import pytest
from multidict import CIMultiDict

from batch_dealloc_async import (
    AccessToken,
    BatchDeallocClient,
    BatchServiceError,
    BulkReport,
    ClientStats,
    OutcomeStatus,
    Reply,
    RetryPolicy,
    ServiceDownError,
)
from batch_dealloc_async._traffic._breaker import Breaker
from tests.virtual_time import run_virtual

ENDPOINT: Final = "https://myaccount.westus.batch.azure.com"
EPOCH: Final = 1_750_000_000.0
NODES: Final = [f"tvm-{i:03d}" for i in range(200)]


class StaticToken:
    """A token credential that never expires."""

    async def get_token(self, *scopes: str) -> AccessToken:
        del scopes
        return AccessToken("token", int(EPOCH + 10**7))


class FailingService:
    """An Exchange that answers ``500 InternalError`` to everything until ``recovers`` (seconds; None: never), then 202.

    Each request is logged with when it was sent and whether the client's breaker was open then.
    """

    def __init__(self, recovers: float | None, latency: float = 0.02) -> None:
        self.recovers = recovers
        self.latency = latency
        self.breaker: Breaker | None = None
        self.sent: list[tuple[float, bool]] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        del method, url, headers, body, timeout, expected, read_body
        assert self.breaker is not None
        self.sent.append((asyncio.get_running_loop().time(), self.breaker.is_open))
        await asyncio.sleep(self.latency)
        if self.recovers is None or asyncio.get_running_loop().time() < self.recovers:
            error = {"code": "InternalError", "message": {"lang": "en-US", "value": "Server encountered an error."}}
            return Reply(500, CIMultiDict({"Content-Type": "application/json"}), json.dumps(error).encode())
        return Reply(202, CIMultiDict({"request-id": "r"}), b"")


def deallocate(service: FailingService) -> tuple[BulkReport, ClientStats, float]:
    """Deallocate every node of NODES through a fresh client over ``service``; the report, stats and elapsed time."""

    async def main() -> tuple[BulkReport, ClientStats, float]:
        loop = asyncio.get_running_loop()
        client = BatchDeallocClient(
            ENDPOINT,
            StaticToken(),
            exchange=service,
            clock=loop.time,
            sleep=asyncio.sleep,
            wall_clock=lambda: EPOCH + loop.time(),
            rng=random.Random(1),
            retry=RetryPolicy(),
        )
        service.breaker = client.limiter.breaker
        async with client:
            report = await client.deallocate_nodes("pool", NODES)
        return report, client.stats, loop.time()

    return run_virtual(main())


@pytest.mark.parametrize("recovers", [3.0, 10.0])
def test_an_outage_is_probed_then_every_node_is_accepted(recovers: float) -> None:
    """500s for a while: one outage, a few probes, nothing but probes sent while open, every node accepted after."""
    service = FailingService(recovers)
    report, stats, _ = deallocate(service)
    assert report.counts[OutcomeStatus.ACCEPTED] == len(NODES)
    assert stats.outages == 1
    assert 1 <= stats.probes <= 12
    assert sum(is_open for _, is_open in service.sent) == stats.probes
    assert stats.traffic != "failing"


def test_a_service_that_never_recovers_ends_the_run_with_service_down_errors() -> None:
    """500s for ever: the run ends soon after 30 s; every node failed or not attempted, quoting the 500."""
    service = FailingService(None)
    report, stats, elapsed = deallocate(service)
    assert 30.0 <= elapsed <= 35.0
    assert report.counts[OutcomeStatus.FAILED] + report.counts[OutcomeStatus.NOT_ATTEMPTED] == len(NODES)
    assert stats.outages == 1
    for outcome in report.outcomes:
        assert isinstance(outcome.error, ServiceDownError)
        last = outcome.error.last_error
        assert isinstance(last, BatchServiceError)
        assert last.status == 500
