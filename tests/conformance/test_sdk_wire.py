"""Our Deallocate Node request matches the official azure-batch 15.1.0 SDK's byte for byte where it should.

Both clients send to one small capture server over a real socket. The SDK cannot send a body-less
deallocate (it fails on the client with ``options=None``), so for ``option=None`` the reference is its
requeue request minus the body and Content-Type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential
from tests.conformance.capture import Captured, capture_server
from tests.conftest import REFERENCE_ACCOUNT, REFERENCE_KEY

azure_batch = pytest.importorskip("azure.batch", reason="the official SDK comes with the 'test' extra")

from azure.batch import models as sdk_models  # noqa: E402
from azure.batch.aio import BatchClient  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402

DATE = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[Captured]]]:
    async for served in capture_server("deallocate", "deallocated"):
        yield served


async def sdk_deallocate(endpoint: str, pool: str, node: str, option: str, timeout: int | None) -> None:
    credential = AzureNamedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
    # azure-core's HeadersPolicy adds base headers to every request (per-call headers break the poller).
    async with BatchClient(endpoint, credential, headers={"return-client-request-id": "true"}) as client:
        options = sdk_models._models.BatchNodeDeallocateOptions(node_deallocate_option=option)
        kwargs = {"service_timeout": timeout} if timeout is not None else {}
        poller = await client.begin_deallocate_node(pool, node, options, ocp_date=DATE, polling_interval=0, **kwargs)
        await poller.result()


async def ours(endpoint: str, pool: str, node: str, option: str | None, timeout: int | None) -> None:
    async with BatchDeallocClient(endpoint, SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)) as client:
        await client.deallocate_node(pool, node, option=option, timeout=timeout, ocp_date=DATE)


# Ids needing encoding. Sub-delimiters (& = + ; ...) are left out on purpose: the SDK encodes them, then yarl
# decodes them again on the wire (while the SDK signs the encoded form); we send and sign the encoded form.
IDS = [("pool1", "tvm-1695681911_1-20161122t193202z"), ("pool-ü%", "node%3F#x?.ü")]


@pytest.mark.parametrize(("pool", "node"), IDS)
@pytest.mark.parametrize("option", ["requeue", "terminate", "taskcompletion"])
@pytest.mark.parametrize("timeout", [None, 10])
async def test_same_request_as_the_sdk(capture, pool, node, option, timeout) -> None:
    """Method, path, query, body, Content-Type and protocol header set equal the SDK's; so does the signature."""
    endpoint, seen = capture
    await sdk_deallocate(endpoint, pool, node, option, timeout)
    sdk = seen[0]
    assert sdk.method == "POST"
    seen.clear()
    await ours(endpoint, pool, node, option, timeout)
    (mine,) = seen
    assert mine.method == sdk.method
    assert mine.raw_path == sdk.raw_path
    assert mine.body == sdk.body
    assert mine.headers["content-type"] == sdk.headers["content-type"]
    assert mine.headers["content-length"] == sdk.headers["content-length"]
    assert mine.protocol_headers == sdk.protocol_headers
    assert mine.headers["ocp-date"] == sdk.headers["ocp-date"]
    if timeout is None:
        # Without timeOut both sign the same string; with it the docs' lower-casing (ours) differs from the SDK.
        assert mine.headers["authorization"] == sdk.headers["authorization"]


@pytest.mark.parametrize("timeout", [None, 30])
async def test_no_option_is_the_sdk_requeue_request_minus_body(capture, timeout) -> None:
    """option=None sends the SDK's requeue request without body and Content-Type (Content-Length 0)."""
    endpoint, seen = capture
    await sdk_deallocate(endpoint, "pool1", "node1", "requeue", timeout)
    sdk = seen[0]
    seen.clear()
    await ours(endpoint, "pool1", "node1", None, timeout)
    (mine,) = seen
    assert mine.raw_path == sdk.raw_path
    assert mine.body == b""
    assert "content-type" not in mine.headers
    assert mine.headers["content-length"] == "0"
    assert mine.protocol_headers == sdk.protocol_headers - {"content-type"}


async def test_sdk_cannot_send_a_bodiless_deallocate(capture) -> None:
    """The reason for the reference above: azure-batch 15.1.0 fails on the client with options=None."""
    endpoint, seen = capture
    async with BatchClient(endpoint, AzureNamedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)) as client:
        with pytest.raises(ValueError, match="No value for given attribute"):
            await client.begin_deallocate_node("pool1", "node1", None)
    assert seen == []
