"""Bulk runs against the emulator over real sockets: nothing lost, nothing sent twice without cause."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

from batch_dealloc_async import (
    BatchDeallocClient,
    NodeOutcome,
    OutcomeStatus,
    RetryPolicy,
    SharedKeyCredential,
)
from batch_dealloc_async.emulator import BatchEmulator, FaultConfig

FAST_RETRY = RetryPolicy(backoff_base=0.01, backoff_cap=0.2, max_retry_after=1.0)
ELIGIBLE = {"idle", "running"}


def client_for(emu: BatchEmulator, **kwargs) -> BatchDeallocClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return BatchDeallocClient(emu.endpoint, emu.credential(), **kwargs)


def our_tasks() -> list[asyncio.Task[object]]:
    """Tasks the library started (all are named batch-dealloc-*) that are still running."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("batch-dealloc") and not t.done()]


async def test_5000_node_pool_with_faults_and_throttling_loses_nothing() -> None:
    """Mixed states, 5xx, resets before and after, throttling: every node has one outcome.

    Every eligible node ends deallocated, and no node got more deallocate calls than the client's attempts for it.
    """
    faults = FaultConfig(error_500=0.03, error_503=0.02, reset_before=0.02, reset_after=0.02, html_502=0.01)
    async with BatchEmulator(
        pools={"big": 5000}, seed=5, deallocate_delay=0.5, throttle_rps=3000, throttle_burst=100, faults=faults
    ) as emu:
        eligible = set(emu.node_ids("big", ELIGIBLE))
        others = {n.id: n.state for n in emu.nodes("big") if n.id not in eligible}
        async with client_for(emu) as client:
            report = await client.deallocate_pool("big", wait=True, deadline=120)
        outcomes = {o.node_id: o for o in report.outcomes}
        assert len(report.outcomes) == 5000 == len(outcomes)
        assert {o.node_id for o in report.outcomes if o.status is OutcomeStatus.DEALLOCATED} == eligible
        assert {n: o.state for n, o in outcomes.items() if o.status is OutcomeStatus.SKIPPED} == others
        assert report.ok
        assert all(emu.node("big", n).state == "deallocated" for n in eligible)
        calls = emu.stats.deallocate_calls()
        assert all(calls[("big", n)] <= outcomes[n].attempts for n in eligible)
        assert sum(emu.stats.faults.values()) > 100  # the faults really happened
        # Every deallocate request the emulator saw is one the client counted (aiohttp itself may resend an
        # idempotent GET once on a dropped keep-alive connection, so only deallocations are compared exactly).
        assert sum(o.attempts for o in report.outcomes) == emu.stats.count("deallocate")


async def test_wait_polls_the_pool_with_a_few_requests_per_round() -> None:
    """wait=True lists the pool (filtered, paged) each round: at most ceil(nodes/1000) + 1 requests a round."""
    async with BatchEmulator(pools={"big": 5000}, seed=6, deallocate_delay=1.5) as emu:
        async with client_for(emu) as client:
            report = await client.deallocate_pool("big", wait=True, deadline=60)
        assert report.poll_rounds >= 1
        assert report.poll_requests <= report.poll_rounds * (math.ceil(5000 / 1000) + 1)
        assert report.counts["deallocated"] == len(emu.node_ids("big", {"deallocated"})) - sum(
            1 for o in report.outcomes if o.status is OutcomeStatus.SKIPPED and o.state == "deallocated"
        )
        assert emu.stats.count("get") == 0  # never one Get Node per node


async def test_node_list_outcomes_skipped_with_state_and_invalid_ids() -> None:
    """A node in another state is skipped with its state; an unknown one fails NodeNotFound; all are reported."""
    async with BatchEmulator(pools={"p": 30}, seed=2, deallocate_delay=0.1) as emu:
        idle = emu.node_ids("p", {"idle"})[:3]
        busy = emu.node_ids("p", {"starting", "unusable", "offline", "starttaskfailed", "deallocated"})[:2]
        ids = [*idle, *busy, "no-such-node"]
        async with client_for(emu) as client:
            report = await client.deallocate_nodes("p", ids)
        by_id = {o.node_id: o for o in report.outcomes}
        assert [by_id[n].status for n in idle] == [OutcomeStatus.ACCEPTED] * 3
        assert all(by_id[n].status is OutcomeStatus.SKIPPED for n in busy)
        assert [by_id[n].state for n in busy] == [emu.node("p", n).state for n in busy]
        assert by_id["no-such-node"].status is OutcomeStatus.FAILED
        assert by_id["no-such-node"].error_code == "NodeNotFound"
        assert report.failures_by_code == {"NodeNotFound": 1}
        assert not report.ok


async def test_bad_id_in_a_list_is_refused_before_any_request() -> None:
    """A list with an impossible id raises ValueError and sends nothing."""
    async with BatchEmulator(pools={"p": 5}, seed=2) as emu:
        async with client_for(emu) as client:
            with pytest.raises(ValueError, match="node_id"):
                await client.deallocate_nodes("p", ["ok-id", "bad/id"])
        assert emu.stats.total == 0


async def test_streams_sync_and_async_with_a_bad_id_inside() -> None:
    """Generators and async generators are pulled lazily; a bad id in a stream fails alone, unsent."""
    async with BatchEmulator(pools={"p": 20}, seed=3) as emu:
        idle = emu.node_ids("p", {"idle"})[:4]

        async def agen():
            for node_id in idle[:2]:
                yield node_id
            yield "bad id"

        async with client_for(emu) as client:
            first = await client.deallocate_nodes("p", (n for n in idle[2:]))
            second = await client.deallocate_nodes("p", agen())
        assert first.counts["accepted"] == 2
        assert second.counts["accepted"] == 2
        (bad,) = second.by_status("failed")
        assert bad.node_id == "bad id"
        assert bad.error_code == "ValueError"


async def test_deadline_ends_every_node() -> None:
    """With slow answers, the deadline turns queued nodes not_attempted and in-flight ones timed_out."""
    faults = FaultConfig(latency=0.3, operations={"deallocate"})
    async with BatchEmulator(pools={"p": 300}, seed=4, faults=faults) as emu:
        ids = emu.node_ids("p")
        async with client_for(emu, max_concurrency=8) as client:
            report = await client.deallocate_nodes("p", ids, deadline=0.5)
        assert len(report.outcomes) == 300
        assert {o.node_id for o in report.outcomes} == set(ids)
        counts = report.counts
        assert counts["not_attempted"] > 0
        assert counts["timed_out"] > 0
        assert sum(counts.values()) == 300
        assert report.elapsed < 5
        await asyncio.sleep(0)
        assert our_tasks() == []


async def test_wait_deadline_reports_timed_out_with_last_state() -> None:
    """Nodes that are still deallocating at the deadline end timed_out with state deallocating."""
    async with BatchEmulator(pools={"p": 20}, seed=4, deallocate_delay=30) as emu:
        ids = emu.node_ids("p", {"idle"})[:3]
        async with client_for(emu) as client:
            report = await client.deallocate_nodes("p", ids, wait=True, deadline=1.5)
        assert [o.status for o in report.outcomes] == [OutcomeStatus.TIMED_OUT] * 3
        assert {o.state for o in report.outcomes} == {"deallocating"}
        assert report.poll_rounds >= 1


async def test_cancelling_the_caller_leaves_nothing_running() -> None:
    """Cancelling a bulk run mid-way: outcomes so far reached on_outcome; no task or session is left behind."""
    faults = FaultConfig(latency=0.05, operations={"deallocate"})
    async with BatchEmulator(pools={"p": 400}, seed=8, faults=faults) as emu:
        seen: list[NodeOutcome] = []
        async with client_for(emu, max_concurrency=4) as client:
            ten = asyncio.Event()

            def record(outcome: NodeOutcome) -> None:
                seen.append(outcome)
                if len(seen) >= 10:
                    ten.set()

            task = asyncio.create_task(client.deallocate_nodes("p", emu.node_ids("p"), on_outcome=record))
            await ten.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.limiter.in_flight == 0
        await asyncio.sleep(0)
        assert 10 <= len(seen) < 400
        assert our_tasks() == []


async def test_iter_yields_outcomes_as_they_complete_and_closes_cleanly() -> None:
    """iter_deallocate_nodes streams outcomes; leaving early stops the run with nothing left running."""
    async with BatchEmulator(pools={"p": 200}, seed=9) as emu:
        ids = emu.node_ids("p")
        async with client_for(emu) as client:
            streamed = [o async for o in client.iter_deallocate_nodes("p", iter(ids))]
            assert sorted(o.node_id for o in streamed) == sorted(ids)
            async with contextlib.aclosing(client.iter_deallocate_nodes("p", ids)) as outcomes:
                async for _ in outcomes:
                    break
            await asyncio.sleep(0)
            assert our_tasks() == []


async def test_authentication_failure_stops_the_run() -> None:
    """A refused key fails the first node and stops: the rest are not_attempted, not hammered."""
    async with BatchEmulator(pools={"p": 100}, seed=1) as emu:
        wrong = SharedKeyCredential(emu.account_name, "AAAA" + emu.account_key[4:])
        async with BatchDeallocClient(emu.endpoint, wrong, retry=FAST_RETRY, max_concurrency=4) as client:
            report = await client.deallocate_nodes("p", emu.node_ids("p"))
        assert len(report.outcomes) == 100
        assert report.counts["failed"] <= 16  # only what was in flight when the first refusal came back
        assert report.counts["not_attempted"] >= 84
        assert set(report.failures_by_code) == {"AuthenticationFailed"}
        assert emu.stats.auth_failures <= 16


async def test_pools_run_together_and_a_missing_pool_does_not_stop_the_others() -> None:
    """deallocate_pools shares one limiter; an unknown pool is reported in pool_errors, the others complete."""
    async with BatchEmulator(pools={"a": 50, "b": 50}, seed=12) as emu:
        async with client_for(emu) as client:
            report = await client.deallocate_pools(["a", "missing", "b"])
        assert set(report.pool_errors) == {"missing"}
        assert not report.ok
        assert len(report.outcomes) == 100
        assert report.counts["accepted"] == len(emu.node_ids("a", {"deallocating"})) + len(
            emu.node_ids("b", {"deallocating"})
        )


async def test_adaptive_limit_slows_down_under_throttling() -> None:
    """Against a throttled account the client paces itself near the limit: few 429s, no failures."""
    async with BatchEmulator(pools={"p": 800}, seed=13, throttle_rps=400, throttle_burst=20, auth=False) as emu:
        async with client_for(emu, retry=RetryPolicy(backoff_base=0.05)) as client:
            report = await client.deallocate_nodes("p", emu.node_ids("p", ELIGIBLE))
            rate = client.limiter.rate
        assert report.ok
        assert rate is not None  # pacing switched on
        assert rate < 800
        assert report.throttled < 0.15 * report.requests


async def test_fixed_limit_never_paces() -> None:
    """adaptive=False keeps max_concurrency and just retries the 429s."""
    async with BatchEmulator(pools={"p": 200}, seed=13, throttle_rps=400, throttle_burst=20) as emu:
        async with client_for(emu, adaptive=False, max_concurrency=16) as client:
            report = await client.deallocate_nodes("p", emu.node_ids("p", ELIGIBLE))
            assert client.limiter.rate is None
            assert client.limiter.limit == 16
        assert report.ok
