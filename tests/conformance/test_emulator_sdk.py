"""The official azure-batch 15.1.0 SDK works against the emulator: paging, Get Node, deallocate LRO, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from batch_dealloc_async.emulator import INVALID_STATE_CODE, BatchEmulator

azure_batch = pytest.importorskip("azure.batch", reason="the official SDK comes with the 'test' extra")

from azure.batch.aio import BatchClient  # noqa: E402
from azure.batch.models import _models as sdk_models  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError  # noqa: E402

POOL = "sdk-pool"
MIX = {"idle": 0.6, "running": 0.2, "offline": 0.2}


@pytest.fixture
async def emu() -> AsyncIterator[BatchEmulator]:
    async with BatchEmulator(pools={POOL: 50}, seed=5, state_mix=MIX, deallocate_delay=0.3) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: BatchEmulator) -> AsyncIterator[BatchClient]:
    credential = AzureNamedKeyCredential(emu.account_name, emu.account_key)
    async with BatchClient(emu.endpoint, credential) as sdk:
        yield sdk


def body_code(error: HttpResponseError) -> str:
    """The BatchError code the emulator sent, as the SDK parsed it (and as in the raw body it kept)."""
    assert error.response is not None
    code = json.loads(error.response.text())["code"]
    assert error.error is not None
    assert error.error.code == code
    assert f"RequestId:{error.response.headers['request-id']}" in error.message
    return code


async def test_sdk_lists_nodes_across_pages_with_a_filter(emu, client):
    """list_nodes(filter, max_results) follows every next link and yields exactly the matching nodes."""
    idle = emu.node_ids(POOL, {"idle"})
    assert len(idle) > 14  # at least three pages of 7
    pages = client.list_nodes(POOL, filter="state eq 'idle'", max_results=7).by_page()
    seen: list[str] = []
    sizes: list[int] = []
    async for page in pages:
        batch = [node async for node in page]
        sizes.append(len(batch))
        seen.extend(node.id for node in batch)
        assert all(node.state == "idle" for node in batch)
    assert seen == idle
    assert len(sizes) >= 3
    assert max(sizes) <= 7
    assert emu.stats.count("list", 200) == len(sizes)
    assert emu.stats.auth_failures == 0


async def test_sdk_lists_with_select(emu, client):
    """list_nodes(select=[id, state]) returns models with only those properties set."""
    nodes = [node async for node in client.list_nodes(POOL, select=["id", "state"])]
    assert [n.id for n in nodes] == emu.node_ids(POOL)
    assert all(n.vm_size is None and n.state is not None for n in nodes)


async def test_sdk_gets_a_node(emu, client):
    """get_node deserialises the emulator's full BatchNode."""
    node_id = emu.node_ids(POOL, {"running"})[0]
    node = await client.get_node(POOL, node_id)
    assert node.id == node_id
    assert node.state == "running"
    assert node.url == f"{emu.endpoint}/pools/{POOL}/nodes/{node_id}"
    assert node.state_transition_time is not None
    assert node.state_transition_time.tzinfo is not None
    assert node.node_agent_info is not None
    assert node.running_tasks_count == 1


async def test_sdk_gets_a_node_with_select_and_timeout(emu, client):
    """get_node with select and service_timeout (the SDK's timeOut signature) is accepted."""
    node_id = emu.node_ids(POOL, {"idle"})[0]
    node = await client.get_node(POOL, node_id, select=["id", "state"], service_timeout=30)
    assert (node.id, node.state, node.vm_size) == (node_id, "idle", None)
    assert emu.stats.auth_failures == 0


@pytest.mark.parametrize("option", ["terminate", "requeue", "taskcompletion", "retaineddata"])
async def test_sdk_deallocate_poller_finishes(emu, client, option):
    """begin_deallocate_node's poller finishes once the emulator shows the node deallocated."""
    node_id = emu.node_ids(POOL, {"idle"})[0]
    options = sdk_models.BatchNodeDeallocateOptions(node_deallocate_option=option)
    poller = await client.begin_deallocate_node(POOL, node_id, options, polling_interval=0.05)
    assert emu.node(POOL, node_id).state == "deallocating"
    await poller.result()
    assert poller.done()
    assert emu.node(POOL, node_id).state == "deallocated"
    assert emu.stats.deallocate_calls() == {(POOL, node_id): 1}
    assert emu.stats.count("deallocate", 202) == 1
    assert emu.stats.count("get", 200) >= 1


async def test_sdk_unknown_node_is_resource_not_found(emu, client):
    """An unknown node is a ResourceNotFoundError carrying the emulator's NodeNotFound code."""
    with pytest.raises(ResourceNotFoundError) as caught:
        await client.get_node(POOL, "tvm-0000000000_1-20250101t000000z")
    assert caught.value.status_code == 404
    assert body_code(caught.value) == "NodeNotFound"


async def test_sdk_unknown_pool_is_resource_not_found(client):
    """An unknown pool is a ResourceNotFoundError carrying PoolNotFound."""
    with pytest.raises(ResourceNotFoundError) as caught:
        [node async for node in client.list_nodes("no-such-pool")]
    assert body_code(caught.value) == "PoolNotFound"


async def test_sdk_wrong_state_is_resource_exists(emu, client):
    """Deallocating an offline node is a ResourceExistsError (409) carrying the invalid-state code."""
    node_id = emu.node_ids(POOL, {"offline"})[0]
    options = sdk_models.BatchNodeDeallocateOptions(node_deallocate_option="terminate")
    with pytest.raises(ResourceExistsError) as caught:
        await client.begin_deallocate_node(POOL, node_id, options, polling_interval=0.05)
    assert caught.value.status_code == 409
    assert body_code(caught.value) == INVALID_STATE_CODE
    assert emu.node(POOL, node_id).state == "offline"
