"""The client against the emulator over real sockets: every answer the service gives, and every fault."""

from __future__ import annotations

import pytest

from batch_dealloc_async import (
    AuthenticationError,
    BatchDeallocClient,
    BatchNodeDeallocateOption,
    BatchTransportError,
    ConflictError,
    NotFoundError,
    RetryPolicy,
    ServerError,
    SharedKeyCredential,
    ThrottledError,
)
from batch_dealloc_async.emulator import INVALID_STATE_CODE, BatchEmulator, FaultConfig

FAST_RETRY = RetryPolicy(backoff_base=0.01, backoff_cap=0.05, max_retry_after=0.2)


@pytest.fixture
async def emu():
    async with BatchEmulator(pools={"pool-a": 40}, seed=11, deallocate_delay=0.2, start_delay=0.1) as emulator:
        yield emulator


def client_for(emu: BatchEmulator, **kwargs) -> BatchDeallocClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return BatchDeallocClient(emu.endpoint, emu.credential(), **kwargs)


@pytest.mark.parametrize("option", [None, "requeue", "terminate", BatchNodeDeallocateOption.TASK_COMPLETION])
@pytest.mark.parametrize("timeout", [None, 5])
async def test_deallocate_idle_node(emu, option, timeout) -> None:
    """A deallocation is accepted with every header filled and the node goes deallocating."""
    node_id = emu.node_ids("pool-a", {"idle"})[0]
    async with client_for(emu) as client:
        result = await client.deallocate_node("pool-a", node_id, option=option, timeout=timeout)
        assert client.stats.accepted == 1
    assert result.attempts == 1
    assert result.request_id
    assert result.etag
    assert result.last_modified is not None
    assert result.data_service_id == f"{emu.endpoint}/pools/pool-a/nodes/{node_id}"
    assert emu.node("pool-a", node_id).state == "deallocating"
    assert emu.stats.sdk_timeout_signatures == 0  # our signature is the documented one


async def test_error_mappings(emu) -> None:
    """404 pool and node, 409 wrong state, 403 bad key: each is the class its meaning names, never retried."""
    wrong_state = emu.node_ids("pool-a", {"starting", "unusable", "offline", "starttaskfailed", "deallocated"})[0]
    async with client_for(emu) as client:
        with pytest.raises(NotFoundError) as pool_missing:
            await client.deallocate_node("no-such-pool", "n")
        with pytest.raises(NotFoundError) as node_missing:
            await client.deallocate_node("pool-a", "no-such-node")
        with pytest.raises(ConflictError) as conflict:
            await client.deallocate_node("pool-a", wrong_state)
        assert client.stats.accepted == 0  # refusals are not acceptances
    assert pool_missing.value.code == "PoolNotFound"
    assert node_missing.value.code == "NodeNotFound"
    assert conflict.value.code == INVALID_STATE_CODE
    assert conflict.value.attempts == 1
    assert str(conflict.value).startswith(f"409 {INVALID_STATE_CODE}: ")
    other_key = SharedKeyCredential(emu.account_name, "AAAA" + emu.account_key[4:])
    async with BatchDeallocClient(emu.endpoint, other_key, retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError) as denied:
            await client.deallocate_node("pool-a", "n")
    assert denied.value.status == 403
    assert denied.value.code == "AuthenticationFailed"


async def test_bearer_token_accepted_and_refreshed_after_401(emu) -> None:
    """A token the service stops accepting is refreshed once; the next one works."""

    class Rotating:
        def __init__(self) -> None:
            self.calls = 0

        async def get_token(self, *scopes: str):
            from batch_dealloc_async import AccessToken  # noqa: PLC0415

            self.calls += 1
            return AccessToken(f"token-{self.calls}", 2_000_000_000)

    emu.update(bearer_tokens={"token-2"})
    credential = Rotating()
    node_id = emu.node_ids("pool-a", {"idle"})[0]
    async with BatchDeallocClient(emu.endpoint, credential, retry=FAST_RETRY) as client:
        result = await client.deallocate_node("pool-a", node_id)
    assert result.attempts == 2
    assert credential.calls == 2


@pytest.mark.parametrize(
    "faults",
    [
        FaultConfig(error_500=1.0),
        FaultConfig(html_502=1.0),
        FaultConfig(truncated_json=1.0),
        FaultConfig(error_503=1.0),
        FaultConfig(reset_before=1.0),
    ],
)
async def test_faults_before_processing_are_retried_then_succeed(emu, faults) -> None:
    """Server errors, bad bodies and resets are retried; once the fault clears the call succeeds."""
    node_id = emu.node_ids("pool-a", {"idle"})[0]
    emu.update(faults=faults)
    async with client_for(emu, retry=RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.02)) as client:
        with pytest.raises((ServerError, BatchTransportError)) as info:
            await client.deallocate_node("pool-a", node_id)
        assert info.value.attempts == 3
        assert emu.node("pool-a", node_id).state == "idle"
        emu.update(faults=FaultConfig())
        result = await client.deallocate_node("pool-a", node_id)
    assert result.attempts == 1
    assert emu.node("pool-a", node_id).deallocate_calls == 1


async def test_throttling_honours_retry_after(emu) -> None:
    """429 with Retry-After is waited out and retried; the limiter counts it."""
    emu.update(throttle_rps=2.0, throttle_burst=1)
    ids = emu.node_ids("pool-a", {"idle"})[:2]
    async with client_for(emu, retry=RetryPolicy(max_retry_after=1.5, backoff_base=0.01)) as client:
        first = await client.deallocate_node("pool-a", ids[0])
        second = await client.deallocate_node("pool-a", ids[1])
        assert client.stats.throttled >= 1
    assert first.attempts == 1
    assert second.attempts >= 2
    assert emu.stats.throttled >= 1


async def test_throttling_503_server_busy(emu) -> None:
    """503 ServerBusy with Retry-After is throttling too, and gives up as ThrottledError."""
    emu.update(throttle_rps=0.01, throttle_burst=1, throttle_status=503)
    ids = emu.node_ids("pool-a", {"idle"})[:2]
    policy = RetryPolicy(max_attempts=2, max_retry_after=0.05, backoff_base=0.01)
    async with client_for(emu, retry=policy) as client:
        await client.deallocate_node("pool-a", ids[0])
        with pytest.raises(ThrottledError) as info:
            await client.deallocate_node("pool-a", ids[1])
    assert info.value.status == 503
    assert info.value.code == "ServerBusy"
    assert info.value.retry_after is not None
    assert info.value.retry_after >= 1


async def test_reset_after_processing_is_reconciled(emu) -> None:
    """The ambiguous case: the deallocation happened, the answer was lost; the retry's 409 is confirmed by Get Node."""
    node_id = emu.node_ids("pool-a", {"idle"})[0]
    emu.update(faults=FaultConfig(reset_after=1.0, operations={"deallocate"}))
    async with client_for(emu) as client:
        result = await client.deallocate_node("pool-a", node_id)
        assert client.stats.accepted == 1  # a confirmed deallocation counts as accepted, once
    assert result.reconciled is True
    assert result.attempts == 2
    assert emu.node("pool-a", node_id).deallocate_calls == 2
    assert emu.node("pool-a", node_id).state == "deallocating"


async def test_slow_answer_times_out_then_reconciles(emu) -> None:
    """An answer slower than the client's timeout is a timeout (ambiguous), then reconciled."""
    node_id = emu.node_ids("pool-a", {"idle"})[0]
    emu.update(faults=FaultConfig(slow=1.0, slow_seconds=5.0, operations={"deallocate"}))
    policy = RetryPolicy(timeout_margin=0.3, backoff_base=0.01, deadline=10)
    async with client_for(emu, retry=policy) as client:
        result = await client.deallocate_node("pool-a", node_id, timeout=1)
    assert result.reconciled is True
    assert emu.node("pool-a", node_id).deallocate_calls == 2


async def test_get_and_list_nodes_against_the_emulator(emu) -> None:
    """get_node and list_nodes (filtered, paged) return what the emulator holds."""
    async with client_for(emu) as client:
        idle = [n async for n in client.list_nodes("pool-a", states=["idle"], max_results=3)]
        every = [n async for n in client.list_nodes("pool-a", max_results=7)]
        full = await client.get_node("pool-a", every[0].id, select=None)
    assert [n.id for n in idle] == emu.node_ids("pool-a", {"idle"})
    assert [n.id for n in every] == emu.node_ids("pool-a")
    assert full.url is not None
    assert full.state_transition_time is not None
    assert full.state_transition_time.tzinfo is not None
