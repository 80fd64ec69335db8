"""The official azure-batch 15.1.0 SDK starts nodes on the emulator: begin_start_node to the end of its poller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from batch_dealloc_async.emulator import INVALID_STATE_CODE, BatchEmulator

azure_batch = pytest.importorskip("azure.batch", reason="the official SDK comes with the 'test' extra")

from azure.batch.aio import BatchClient  # noqa: E402
from azure.batch.models import _models as sdk_models  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402
from azure.core.exceptions import ResourceExistsError  # noqa: E402

POOL = "sdk-pool"
MIX = {"idle": 0.7, "offline": 0.3}


@pytest.fixture
async def emu() -> AsyncIterator[BatchEmulator]:
    async with BatchEmulator(
        pools={POOL: 20}, seed=5, state_mix=MIX, deallocate_delay=0.1, start_delay=0.5
    ) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: BatchEmulator) -> AsyncIterator[BatchClient]:
    credential = AzureNamedKeyCredential(emu.account_name, emu.account_key)
    async with BatchClient(emu.endpoint, credential) as sdk:
        yield sdk


async def deallocated_node(emu: BatchEmulator, client: BatchClient) -> str:
    """An idle node, deallocated with the SDK's own poller first."""
    node_id = emu.node_ids(POOL, {"idle"})[0]
    options = sdk_models.BatchNodeDeallocateOptions(node_deallocate_option="terminate")
    poller = await client.begin_deallocate_node(POOL, node_id, options, polling_interval=0.05)
    await poller.result()
    assert emu.node(POOL, node_id).state == "deallocated"
    return node_id


@pytest.mark.parametrize("service_timeout", [None, 30])
async def test_sdk_start_poller_finishes(emu, client, service_timeout):
    """begin_start_node on a deallocated node: starting at once, and idle when the poller is done."""
    node_id = await deallocated_node(emu, client)
    kwargs = {"service_timeout": service_timeout} if service_timeout is not None else {}
    poller = await client.begin_start_node(POOL, node_id, polling_interval=0.05, **kwargs)
    assert emu.node(POOL, node_id).state == "starting"
    await poller.result()
    assert poller.done()
    assert poller.status() == "Succeeded"
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.count("start", 202) == 1
    assert emu.stats.count("get", 200) >= 2  # the poller saw it starting at least once, then idle
    assert emu.stats.auth_failures == 0


async def test_sdk_start_poller_stops_at_the_first_state_not_starting(emu, client):
    """The SDK's poller calls waitingforstarttask done: why our wait ends only on idle/running (see test_start.py)."""
    emu.update(start_task_failure=1.0, start_delay=0.4)
    node_id = await deallocated_node(emu, client)
    poller = await client.begin_start_node(POOL, node_id, polling_interval=0.05)
    await poller.result()
    assert poller.status() == "Succeeded"
    assert emu.node(POOL, node_id).state in {"waitingforstarttask", "starttaskfailed"}


async def test_sdk_start_of_a_node_not_deallocated_is_resource_exists(emu, client):
    """Starting an idle node is a 409 the SDK maps to ResourceExistsError, with the invalid-state code."""
    node_id = emu.node_ids(POOL, {"idle"})[0]
    with pytest.raises(ResourceExistsError) as caught:
        await client.begin_start_node(POOL, node_id, polling_interval=0.05)
    assert caught.value.status_code == 409
    assert caught.value.error is not None
    assert caught.value.error.code == INVALID_STATE_CODE
    assert emu.node(POOL, node_id).state == "idle"
