"""Fault soak: 10,000 nodes across pools through every fault at once; nothing is lost, nothing falsely failed."""

from __future__ import annotations

from batch_dealloc_async import BatchDeallocClient, OutcomeStatus, RetryPolicy
from batch_dealloc_async.emulator import BatchEmulator, FaultConfig

POOLS = {"soak-a": 4000, "soak-b": 3000, "soak-c": 2000, "soak-d": 1000}


async def test_fault_soak_10000_nodes() -> None:
    """Every node has one outcome under 5% 500/503, 3%/2% resets before/after, 1% slow answers and throttling.

    Every eligible node ends deallocated, no deallocated node is reported failed, and no node got more
    deallocate calls than the client's attempts for it.
    """
    faults = FaultConfig(
        error_500=0.03, error_503=0.02, reset_before=0.03, reset_after=0.02, slow=0.01, slow_seconds=3.0
    )
    policy = RetryPolicy(timeout_margin=0.5, backoff_base=0.05, backoff_cap=1.0, max_retry_after=1.0, deadline=60)
    async with BatchEmulator(
        pools=POOLS, seed=99, deallocate_delay=1.0, faults=faults, throttle_rps=1000, throttle_burst=40
    ) as emu:
        eligible = {(p, n) for p in POOLS for n in emu.node_ids(p, {"idle", "running"})}
        async with BatchDeallocClient(emu.endpoint, emu.credential(), retry=policy) as client:
            report = await client.deallocate_pools(list(POOLS), wait=True, deadline=90, timeout=1)
        outcomes = {(o.pool_id, o.node_id): o for o in report.outcomes}
        assert len(report.outcomes) == sum(POOLS.values()) == len(outcomes)  # zero unaccounted, none twice
        assert report.pool_errors == {}
        deallocated = {key for key, o in outcomes.items() if o.status is OutcomeStatus.DEALLOCATED}
        assert deallocated == eligible
        for pool, node in eligible:
            assert emu.node(pool, node).state == "deallocated"
        false_failures = [
            o for o in report.outcomes if not o.ok and emu.node(o.pool_id, o.node_id).state == "deallocated"
        ]
        assert false_failures == []
        assert report.ok
        calls = emu.stats.deallocate_calls()
        assert all(calls[key] <= outcomes[key].attempts for key in eligible)
        faults_seen = emu.stats.faults
        assert all(faults_seen[kind] > 0 for kind in ("error_500", "error_503", "reset_before", "reset_after", "slow"))
        assert emu.stats.throttled > 0
        assert any(o.result is not None and o.result.reconciled for o in report.outcomes)
