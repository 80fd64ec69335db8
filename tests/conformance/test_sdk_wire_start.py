"""Our Start Node request matches the official azure-batch 15.1.0 SDK's (``begin_start_node``) on the wire.

Both clients send to one small capture server over a real socket. Start has no body: neither client sends one,
nor a Content-Type. Each Shared Key signature is also recomputed here, independently, from the reference
sheet's rules (section 6): the SDK keeps ``timeOut``'s case in the canonical query, we lower-case it as the docs do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest

from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential, StartResult
from tests.conformance.capture import Captured, capture_server
from tests.conftest import REFERENCE_ACCOUNT, REFERENCE_KEY

azure_batch = pytest.importorskip("azure.batch", reason="the official SDK comes with the 'test' extra")

from azure.batch.aio import BatchClient  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402

START_HEADERS = {  # no body, so no Content-Type
    "authorization",
    "client-request-id",
    "content-length",
    "ocp-date",
    "return-client-request-id",
}
DATE = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
# Ids needing encoding (sub-delimiters left out, as in test_sdk_wire.py: yarl decodes them again on the wire).
IDS = [("pool1", "tvmps_abc_d"), ("pool1", "tvm-1695681911_1-20161122t193202z"), ("pool-ü%", "node%3F#x?.ü")]


def signature(captured: Captured, *, lowercase: bool) -> str:
    """The Shared Key header, recomputed from the docs' rules (the SDK's form with ``lowercase=False``)."""
    path, _, query = captured.raw_path.partition("?")
    pairs = [part.split("=", 1) for part in query.split("&") if part]
    names = sorted((unquote(k).lower() if lowercase else unquote(k), unquote(v)) for k, v in pairs)
    canonical_query = "".join(f"\n{name}:{value}" for name, value in names)
    headers = captured.headers
    ocp = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("ocp-"))
    # Content-Encoding, -Language, -Length, -MD5, -Type, Date (empty: ocp-date is sent), If-*, Range.
    slots = ["", "", headers.get("content-length", ""), "", headers.get("content-type", ""), "", "", "", "", "", ""]
    string = (
        f"{captured.method}\n"
        + "".join(f"{slot}\n" for slot in slots)
        + f"{ocp}/{REFERENCE_ACCOUNT}{path}{canonical_query}"
    )
    digest = hmac.new(base64.b64decode(REFERENCE_KEY), string.encode(), hashlib.sha256).digest()
    return f"SharedKey {REFERENCE_ACCOUNT}:{base64.b64encode(digest).decode()}"


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[Captured]]]:
    async for served in capture_server("start", "idle"):
        yield served


async def sdk_start(endpoint: str, pool: str, node: str, timeout: int | None) -> None:
    credential = AzureNamedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
    async with BatchClient(endpoint, credential, headers={"return-client-request-id": "true"}) as client:
        kwargs = {"service_timeout": timeout} if timeout is not None else {}
        poller = await client.begin_start_node(pool, node, ocp_date=DATE, polling_interval=0, **kwargs)
        await poller.result()


async def ours(endpoint: str, pool: str, node: str, timeout: int | None, **kwargs) -> StartResult:
    async with BatchDeallocClient(endpoint, SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)) as client:
        return await client.start_node(pool, node, timeout=timeout, ocp_date=kwargs.pop("ocp_date", DATE), **kwargs)


@pytest.mark.parametrize(("pool", "node"), IDS)
@pytest.mark.parametrize(
    ("timeout", "query"), [(None, "api-version=2025-06-01"), (10, "api-version=2025-06-01&timeOut=10")]
)
async def test_same_request_as_the_sdk(capture, pool, node, timeout, query) -> None:
    """Method, path, query, empty body, no Content-Type, header set and ocp-date equal begin_start_node's."""
    endpoint, seen = capture
    await sdk_start(endpoint, pool, node, timeout)
    sdk = seen[0]
    seen.clear()
    await ours(endpoint, pool, node, timeout)
    (mine,) = seen
    assert (mine.method, sdk.method) == ("POST", "POST")
    assert mine.raw_path == sdk.raw_path
    assert mine.raw_path.endswith(f"/start?{query}")
    assert mine.raw_path.startswith("/pools/")
    assert mine.body == sdk.body == b""
    assert "content-type" not in mine.headers
    assert "content-type" not in sdk.headers
    assert mine.headers["content-length"] == sdk.headers["content-length"] == "0"
    assert mine.protocol_headers == sdk.protocol_headers == START_HEADERS
    assert mine.headers["ocp-date"] == sdk.headers["ocp-date"] == "Sun, 01 Jun 2025 12:00:00 GMT"
    assert mine.headers["return-client-request-id"] == sdk.headers["return-client-request-id"] == "true"


@pytest.mark.parametrize(("pool", "node"), IDS)
@pytest.mark.parametrize("timeout", [None, 10, 30])
async def test_signatures_are_valid_shared_key(capture, pool, node, timeout) -> None:
    """Both signatures recompute from the docs' rules; without timeOut they are the same string, signed alike."""
    endpoint, seen = capture
    await sdk_start(endpoint, pool, node, timeout)
    sdk = seen[0]
    seen.clear()
    await ours(endpoint, pool, node, timeout)
    (mine,) = seen
    assert sdk.headers["authorization"] == signature(sdk, lowercase=False)
    assert mine.headers["authorization"] == signature(mine, lowercase=True)
    if timeout is None:
        assert mine.headers["authorization"] == sdk.headers["authorization"]


async def test_reference_vector_2(capture) -> None:
    """The reference sheet's start vector: pool1/tvmps_abc_d at its ocp-date signs to its published signature."""
    endpoint, seen = capture
    await ours(endpoint, "pool1", "tvmps_abc_d", None)
    (mine,) = seen
    assert mine.raw_path == "/pools/pool1/nodes/tvmps_abc_d/start?api-version=2025-06-01"
    published = "SharedKey myaccount:JhIDQWDnWygsj74SrJGThz3Rh2pqn2lJc13UZs9g/Rg="
    assert mine.headers["authorization"] == published
    assert signature(mine, lowercase=True) == signature(mine, lowercase=False) == published  # the checker, checked


async def test_official_example_node_start(capture) -> None:
    """The spec's Node_StartNode example's parameters give its request; its 202 (no body) is a StartResult."""
    endpoint, seen = capture
    crid = "00000000-0000-0000-0000-000000000000"
    example_date = datetime(2017, 2, 17, tzinfo=UTC)  # "Fri, 17 Feb 2017 00:00:00 GMT"
    result = await ours(
        endpoint, "poolId", "tvm-1695681911_1-20161122t193202z", None, ocp_date=example_date, client_request_id=crid
    )
    (mine,) = seen
    assert mine.method == "POST"
    assert mine.raw_path == "/pools/poolId/nodes/tvm-1695681911_1-20161122t193202z/start?api-version=2025-06-01"
    assert mine.headers["client-request-id"] == crid
    assert mine.headers["ocp-date"] == "Fri, 17 Feb 2017 00:00:00 GMT"
    assert mine.body == b""
    assert mine.headers["authorization"] == signature(mine, lowercase=True)
    assert result == StartResult(
        pool_id="poolId", node_id="tvm-1695681911_1-20161122t193202z", request_id="r", client_request_id=crid
    )
