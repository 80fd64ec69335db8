"""The emulator over real sockets: headers, errors, queries, paging, authentication, throttling and faults."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from batch_dealloc_async import SharedKeyCredential
from batch_dealloc_async._auth import string_to_sign
from batch_dealloc_async.emulator import INVALID_STATE_CODE, BatchEmulator, FaultConfig
from batch_dealloc_async.emulator._state import EMITTED_PROPERTIES
from tests.conftest import REFERENCE_KEY, FakeClock

API_VERSION = "2025-06-01"
API = (("api-version", API_VERSION),)
JSON_TYPE = "application/json;odata=minimalmetadata"
SDK_JSON_TYPE = "application/json; odata=minimalmetadata"
POOL = "p"
MIX = {"idle": 0.5, "running": 0.25, "offline": 0.25}
CONNECTION_ERRORS = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def now_rfc7231(offset: float = 0.0) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


async def signed(
    session: aiohttp.ClientSession,
    emu: BatchEmulator,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = API,
    *,
    body: bytes | None = None,
    content_type: str = "",
    headers: dict[str, str] | None = None,
    credential: SharedKeyCredential | None = None,
    lowercase: bool = True,
    ocp_date: str | None = "now",
    authorization: str | None = "sign",
    timeout: aiohttp.ClientTimeout | None = None,
) -> Reply:
    """Send one request signed with Shared Key (or with the given Authorization, or none)."""
    pairs = list(query)
    sent: dict[str, str] = dict(headers or {})
    if ocp_date is not None:
        sent["ocp-date"] = now_rfc7231() if ocp_date == "now" else ocp_date
    if content_type:
        sent["Content-Type"] = content_type
    if body is not None:
        length = str(len(body))
    elif method == "POST":
        length = "0"
    else:
        length = ""
    if length:
        sent["Content-Length"] = length
    if authorization == "sign":
        credential = credential or emu.credential()
        ocp = [(k, v) for k, v in sent.items() if k.lower().startswith("ocp-")]
        string = string_to_sign(
            method,
            credential.account_name,
            path,
            pairs,
            ocp_headers=ocp,
            content_length=length,
            content_type=content_type,
            lowercase_query_names=lowercase,
        )
        sent["Authorization"] = credential.authorization(string)
    elif authorization is not None:
        sent["Authorization"] = authorization
    url = URL(emu.endpoint + path).with_query(pairs)
    data: bytes | io.BytesIO | None = body
    if body is not None and len(body) > 2**20:
        data = io.BytesIO(body)  # aiohttp warns about large raw bytes
    skip = () if content_type else ("Content-Type",)  # aiohttp would add application/octet-stream to a POST
    async with session.request(
        method, url, data=data, headers=sent, timeout=timeout, skip_auto_headers=skip
    ) as response:
        return Reply(response.status, response.headers, await response.read())


async def follow(session: aiohttp.ClientSession, emu: BatchEmulator, link: str) -> Reply:
    """GET an odata.nextLink, signed."""
    url = URL(link)
    return await signed(session, emu, "GET", url.raw_path, list(url.query.items()))


def node_path(node_id: str, pool: str = POOL) -> str:
    return f"/pools/{pool}/nodes/{node_id}"


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The reply is the service's BatchError JSON with this status and code."""
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"] == JSON_TYPE
    body = reply.json()
    assert body["code"] == code
    assert body["odata.metadata"].endswith(
        "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
    )
    assert body["message"]["lang"] == "en-US"
    assert f"RequestId:{reply.headers['request-id']}" in body["message"]["value"]
    return body


def values_of(body: dict[str, Any]) -> dict[str, str]:
    return {item["key"]: item["value"] for item in body.get("values", [])}


@pytest.fixture
async def emu() -> AsyncIterator[BatchEmulator]:
    async with BatchEmulator(pools={POOL: 40, "q": 3}, seed=7, state_mix=MIX, deallocate_delay=30) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def some(emu: BatchEmulator, state: str, index: int = 0) -> str:
    return emu.node_ids(POOL, {state})[index]


async def test_fixture_pool_has_every_kind_of_node(emu):
    """The seeded pool used below has idle, running and offline nodes (the tests rely on it)."""
    for state in MIX:
        assert len(emu.node_ids(POOL, {state})) >= 3


# ------------------------------------------------------------------------------------------------ deallocate


@pytest.mark.parametrize("echo", [True, False])
async def test_deallocate_answers_202_with_the_services_headers(emu, session, echo):
    """Deallocate is a 202 with request-id, ETag, Last-Modified, DataServiceId; client-request-id echoed on ask."""
    node_id = some(emu, "idle")
    headers = {"client-request-id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    if echo:
        headers["return-client-request-id"] = "true"
    reply = await signed(session, emu, "POST", node_path(node_id) + "/deallocate", headers=headers)
    assert reply.status == 202, reply.text
    assert reply.body == b""
    assert len(reply.headers["request-id"]) == 36
    assert reply.headers["ETag"].startswith("0x")
    assert email.utils.parsedate_to_datetime(reply.headers["Last-Modified"]).tzinfo is not None
    assert reply.headers["DataServiceId"] == f"{emu.endpoint}{node_path(node_id)}"
    assert reply.headers["DataServiceVersion"] == "3.0"
    if echo:
        assert reply.headers["client-request-id"] == headers["client-request-id"]
    else:
        assert "client-request-id" not in reply.headers
    assert emu.node(POOL, node_id).state == "deallocating"
    assert emu.stats.deallocate_calls() == {(POOL, node_id): 1}
    assert emu.stats.requests[("deallocate", 202)] == 1


async def test_deallocate_changes_the_etag(emu, session):
    """The ETag of a node changes when it is deallocated, and Get Node reports the new one."""
    node_id = some(emu, "running")
    before = await signed(session, emu, "GET", node_path(node_id))
    after = await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
    got = await signed(session, emu, "GET", node_path(node_id))
    assert before.headers["ETag"] != after.headers["ETag"] == got.headers["ETag"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, "deallocated"),
        (b"", "deallocated"),
        (b"{}", "deallocated"),
        (b'{"nodeDeallocateOption": null}', "deallocated"),
        (b'{"nodeDeallocateOption": "requeue"}', "deallocated"),
        (b'{"nodeDeallocateOption": "terminate"}', "deallocated"),
        (b'{"nodeDeallocateOption": "taskcompletion"}', "deallocating"),
        (b'{"nodeDeallocateOption": "retaineddata"}', "deallocating"),
    ],
    ids=["bodiless", "empty", "empty-object", "null", "requeue", "terminate", "taskcompletion", "retaineddata"],
)
async def test_deallocate_body_options(session, body, expected):
    """Every option (and no body: requeue) is accepted; only waiting for tasks keeps a running node longer."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 20},
        seed=7,
        state_mix={"running": 1.0},
        deallocate_delay=1.0,
        taskcompletion_delay=10.0,
        clock=clock.monotonic,
    ) as emulator:
        node_id = some(emulator, "running")
        content_type = SDK_JSON_TYPE if body is not None else ""
        reply = await signed(
            session, emulator, "POST", node_path(node_id) + "/deallocate", body=body, content_type=content_type
        )
        assert reply.status == 202, reply.text
        assert emulator.node(POOL, node_id).state == "deallocating"
        clock.advance(5.0)
        assert emulator.node(POOL, node_id).state == expected


@pytest.mark.parametrize(
    ("body", "code", "values"),
    [
        (b"{not json", "InvalidRequestBody", {}),
        (b"[]", "InvalidRequestBody", {}),
        (b'"requeue"', "InvalidRequestBody", {}),
        (b'{"nodeDeallocateOption": "requeue", "extra": 1}', "InvalidRequestBody", {"PropertyName": "extra"}),
        (
            b'{"nodeDeallocateOption": "bogus"}',
            "InvalidPropertyValue",
            {"PropertyName": "nodeDeallocateOption", "PropertyValue": "bogus"},
        ),
        (
            b'{"nodeDeallocateOption": "Requeue"}',
            "InvalidPropertyValue",
            {"PropertyName": "nodeDeallocateOption", "PropertyValue": "Requeue"},
        ),
    ],
    ids=["not-json", "array", "string", "unknown-property", "unknown-option", "wrong-case"],
)
async def test_deallocate_bad_body_is_a_400(emu, session, body, code, values):
    """A body that is not a valid BatchNodeDeallocateOptions is a 400 and leaves the node alone."""
    node_id = some(emu, "idle")
    reply = await signed(
        session, emu, "POST", node_path(node_id) + "/deallocate", body=body, content_type=SDK_JSON_TYPE
    )
    error = assert_error(reply, 400, code)
    assert values_of(error) == values
    assert emu.node(POOL, node_id).state == "idle"


async def test_deallocate_in_a_wrong_state_is_a_409(emu, session):
    """Deallocating an offline node is a 409 with the invalid-state code and the node's state."""
    node_id = some(emu, "offline")
    reply = await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
    error = assert_error(reply, 409, INVALID_STATE_CODE)
    assert values_of(error) == {"NodeState": "offline"}
    assert emu.node(POOL, node_id).state == "offline"


async def test_second_deallocate_is_a_409(emu, session):
    """A second deallocate while the node is deallocating is a 409 naming that state."""
    node_id = some(emu, "idle")
    first = await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
    second = await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
    assert first.status == 202
    assert values_of(assert_error(second, 409, INVALID_STATE_CODE)) == {"NodeState": "deallocating"}
    assert emu.stats.deallocate_calls()[(POOL, node_id)] == 2


async def test_concurrent_deallocates_of_one_node_succeed_once(emu, session):
    """Of many simultaneous deallocates of one node exactly one is a 202; the others are 409s."""
    node_id = some(emu, "idle")
    replies = await asyncio.gather(*(deallocate(session, emu, node_id) for _ in range(8)))
    assert sorted(r.status for r in replies) == [202] + [409] * 7
    assert emu.stats.deallocate_calls() == {(POOL, node_id): 8}


async def test_oversized_body_is_a_batch_error(emu, session):
    """A body over the 1 MiB limit is a 413 RequestBodyTooLarge BatchError, counted under its status."""
    node_id = some(emu, "idle")
    body = b'{"nodeDeallocateOption": "' + b"x" * (1024 * 1024) + b'"}'
    reply = await deallocate(session, emu, node_id, body=body, content_type=SDK_JSON_TYPE)
    assert_error(reply, 413, "RequestBodyTooLarge")
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.requests == {("deallocate", 413): 1}


async def test_node_views(emu, session):
    """emu.nodes() and emu.node() show each node's state, change time and deallocate calls."""
    node_id = some(emu, "running")
    before = emu.node(POOL, node_id)
    await deallocate(session, emu, node_id)
    after = emu.node(POOL, node_id)
    assert (before.state, after.state) == ("running", "deallocating")
    assert (before.deallocate_calls, after.deallocate_calls) == (0, 1)
    assert after.state_transition_time > before.state_transition_time
    assert after.state_transition_time.tzinfo is not None
    assert [v.id for v in emu.nodes(POOL)] == emu.node_ids(POOL)
    assert {v.pool_id for v in emu.nodes("q")} == {"q"}
    with pytest.raises(KeyError):
        emu.node(POOL, "nope")


async def test_start_a_deallocated_node(session):
    """Start answers 202 for a deallocated node (then starting), and 409 for an idle one."""
    async with BatchEmulator(pools={POOL: 6}, seed=1, state_mix={"deallocated": 1.0}) as emulator:
        node_id = some(emulator, "deallocated")
        reply = await signed(session, emulator, "POST", node_path(node_id) + "/start")
        assert reply.status == 202, reply.text
        assert reply.headers["DataServiceId"] == f"{emulator.endpoint}{node_path(node_id)}"
        assert emulator.node(POOL, node_id).state == "starting"
        again = await signed(session, emulator, "POST", node_path(node_id) + "/start")
        assert values_of(assert_error(again, 409, INVALID_STATE_CODE)) == {"NodeState": "starting"}


# ------------------------------------------------------------------------------------------ query and errors


@pytest.mark.parametrize(
    ("query", "status", "code", "name"),
    [
        ((), 400, "MissingRequiredQueryParameter", "api-version"),
        ((("api-version", "2024-07-01.20.0"),), 400, "UnsupportedRequestVersion", "api-version"),
        ((("api-version", ""),), 400, "UnsupportedRequestVersion", "api-version"),
        ((*API, ("timeOut", "abc")), 400, "InvalidQueryParameterValue", "timeOut"),
        ((*API, ("timeOut", "0")), 400, "InvalidQueryParameterValue", "timeOut"),
        ((*API, ("timeOut", "-5")), 400, "InvalidQueryParameterValue", "timeOut"),
        ((*API, ("timeout", "x")), 400, "InvalidQueryParameterValue", "timeOut"),
    ],
    ids=["no-version", "other-version", "empty-version", "timeout-text", "timeout-zero", "timeout-negative", "lower"],
)
@pytest.mark.parametrize("operation", ["deallocate", "get", "list"])
async def test_bad_query_is_a_400(emu, session, query, status, code, name, operation):
    """A missing or other api-version, or a bad timeOut, is a 400 naming the parameter, and changes nothing."""
    node_id = some(emu, "idle")
    method, path = {
        "deallocate": ("POST", node_path(node_id) + "/deallocate"),
        "get": ("GET", node_path(node_id)),
        "list": ("GET", f"/pools/{POOL}/nodes"),
    }[operation]
    reply = await signed(session, emu, method, path, query)
    assert values_of(assert_error(reply, status, code))["QueryParameterName"] == name
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.deallocate_calls() == {}


@pytest.mark.parametrize("timeout", ["1", "30", "45"])
async def test_timeout_is_accepted(emu, session, timeout):
    """A positive timeOut is accepted, beyond 30 s too (the service treats it as 30)."""
    node_id = some(emu, "idle")
    reply = await signed(session, emu, "POST", node_path(node_id) + "/deallocate", (*API, ("timeOut", timeout)))
    assert reply.status == 202, reply.text


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("POST", "/pools/nope/nodes/{node}/deallocate", "PoolNotFound"),
        ("POST", "/pools/p/nodes/tvm-0000000000_1-20250101t000000z/deallocate", "NodeNotFound"),
        ("POST", "/pools/q/nodes/{node}/deallocate", "NodeNotFound"),  # a node of another pool
        ("POST", "/pools/nope/nodes/{node}/start", "PoolNotFound"),
        ("GET", "/pools/nope/nodes/{node}", "PoolNotFound"),
        ("GET", "/pools/p/nodes/nope", "NodeNotFound"),
        ("GET", "/pools/nope/nodes", "PoolNotFound"),
    ],
)
async def test_unknown_pool_or_node_is_a_404(emu, session, method, path, code):
    """An unknown pool or node is a 404 PoolNotFound or NodeNotFound."""
    reply = await signed(session, emu, method, path.format(node=some(emu, "idle")))
    assert_error(reply, 404, code)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/pools"), ("DELETE", "/pools/p/nodes/x"), ("PUT", "/pools/p/nodes"), ("GET", "/jobs/x")],
)
async def test_unknown_path_is_a_404(emu, session, method, path):
    """A path the emulator does not serve is a 404 ResourceNotFound BatchError, without authentication."""
    async with session.request(method, emu.endpoint + path) as response:
        reply = Reply(response.status, response.headers, await response.read())
    assert_error(reply, 404, "ResourceNotFound")


async def test_stats_route_needs_no_auth(emu, session):
    """GET /_emulator/stats is JSON without authentication and counts what happened."""
    node_id = some(emu, "idle")
    await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
    await signed(session, emu, "GET", node_path(node_id), authorization=None)
    async with session.get(emu.endpoint + "/_emulator/stats") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        stats = await response.json()
    assert stats == emu.stats.to_dict()
    assert stats["requests"] == {"deallocate": {"202": 1}, "get": {"401": 1}}
    assert stats["total"] == 2
    assert stats["auth_failures"] == 1
    assert stats["deallocate_calls"] == {
        "nodes": 1,
        "total": 1,
        "max_per_node": 1,
        "nodes_called_more_than_once": 0,
    }


async def test_health_route(emu, session):
    """GET /_emulator/health answers ok without authentication."""
    async with session.get(emu.endpoint + "/_emulator/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


# ---------------------------------------------------------------------------------------------- get and list


async def test_get_node_full(emu, session):
    """Get Node answers the whole BatchNode with odata.metadata, an ETag and the JSON content type."""
    node_id = some(emu, "running")
    reply = await signed(session, emu, "GET", node_path(node_id))
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"] == JSON_TYPE
    assert reply.headers["ETag"].startswith("0x")
    body = reply.json()
    assert body["odata.metadata"] == f"{emu.endpoint}/$metadata#nodes/@Element"
    assert set(body) == EMITTED_PROPERTIES | {"odata.metadata"}
    assert body["id"] == node_id
    assert body["state"] == "running"
    assert body["url"] == f"{emu.endpoint}{node_path(node_id)}"
    assert body["schedulingState"] == "enabled"


@pytest.mark.parametrize(
    ("select", "keys"),
    [
        ("id,state", {"id", "state"}),
        ("id", {"id"}),
        ("id, vmSize ,state", {"id", "vmSize", "state"}),
        ("stateTransitionTime", {"stateTransitionTime"}),
    ],
)
async def test_get_node_with_select(emu, session, select, keys):
    """$select limits Get Node to the named properties (plus odata.metadata)."""
    node_id = some(emu, "idle")
    reply = await signed(session, emu, "GET", node_path(node_id), (*API, ("$select", select)))
    assert reply.status == 200, reply.text
    assert set(reply.json()) == keys | {"odata.metadata"}


@pytest.mark.parametrize("select", ["", "nope", "id,nope", " , "])
async def test_bad_select_is_a_400(emu, session, select):
    """An empty $select or one naming an unknown property is a 400 InvalidQueryParameterValue."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("$select", select)))
    assert values_of(assert_error(reply, 400, "InvalidQueryParameterValue"))["QueryParameterName"] == "$select"


async def test_list_whole_pool_in_one_page(emu, session):
    """List Nodes without maxresults answers the whole small pool, in order, without a next link."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes")
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"] == JSON_TYPE
    body = reply.json()
    assert body["odata.metadata"] == f"{emu.endpoint}/$metadata#nodes"
    assert "odata.nextLink" not in body
    assert [n["id"] for n in body["value"]] == emu.node_ids(POOL)
    assert all(set(n) == EMITTED_PROPERTIES for n in body["value"])


@pytest.mark.parametrize(
    ("filter_text", "states"),
    [
        ("state eq 'idle'", {"idle"}),
        ("(state eq 'idle') or (state eq 'running')", {"idle", "running"}),
        ("state ne 'idle' and state ne 'running'", {"offline"}),
        ("state eq 'deallocated'", set()),
    ],
)
async def test_list_with_filter_and_select(emu, session, filter_text, states):
    """$filter keeps the nodes in the matching states and $select keeps only id and state."""
    query = (*API, ("$filter", filter_text), ("$select", "id,state"))
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", query)
    assert reply.status == 200, reply.text
    value = reply.json()["value"]
    assert [n["id"] for n in value] == emu.node_ids(POOL, states)
    assert all(set(n) == {"id", "state"} and n["state"] in states for n in value)


@pytest.mark.parametrize(
    ("filter_text", "states"),
    [(None, None), ("state eq 'idle'", {"idle"}), ("state eq 'running' or state eq 'offline'", {"running", "offline"})],
)
@pytest.mark.parametrize("size", [1, 3, 7, 40])
async def test_paging_through_next_links(emu, session, filter_text, states, size):
    """Following odata.nextLink until it is absent returns every matching node once, pages no larger than asked."""
    query = [*API, ("maxresults", str(size))]
    if filter_text is not None:
        query.append(("$filter", filter_text))
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", query)
    seen: list[str] = []
    pages = 0
    while True:
        assert reply.status == 200, reply.text
        body = reply.json()
        assert len(body["value"]) <= size
        seen.extend(n["id"] for n in body["value"])
        pages += 1
        link = body.get("odata.nextLink")
        if link is None:
            break
        assert link.startswith(f"{emu.endpoint}/pools/{POOL}/nodes?")
        assert URL(link).query["maxresults"] == str(size)
        assert URL(link).query.get("$filter") == filter_text
        reply = await follow(session, emu, link)
        assert pages < 100
    assert seen == emu.node_ids(POOL, states)
    assert emu.stats.requests[("list", 200)] == pages


async def test_paging_is_complete_while_nodes_change(emu, session):
    """Deallocating nodes between pages of an unfiltered listing neither skips nor repeats any node."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("maxresults", "5")))
    seen: list[str] = []
    while True:
        body = reply.json()
        seen.extend(n["id"] for n in body["value"])
        for node_id in emu.node_ids(POOL, {"idle"})[:2]:
            await signed(session, emu, "POST", node_path(node_id) + "/deallocate")
        if "odata.nextLink" not in body:
            break
        reply = await follow(session, emu, body["odata.nextLink"])
    assert seen == emu.node_ids(POOL)


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("maxresults", "0", "OutOfRangeQueryParameterValue"),
        ("maxresults", "1001", "OutOfRangeQueryParameterValue"),
        ("maxresults", "-1", "OutOfRangeQueryParameterValue"),
        ("maxresults", "ten", "InvalidQueryParameterValue"),
        ("$filter", "state eq idle", "InvalidQueryParameterValue"),
        ("$filter", "id eq 'x'", "InvalidQueryParameterValue"),
        ("$skiptoken", "garbage!", "InvalidQueryParameterValue"),
    ],
)
async def test_bad_list_parameter_is_a_400(emu, session, name, value, code):
    """An out-of-range maxresults, an unsupported $filter or a foreign $skiptoken is a 400 naming it."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, (name, value)))
    error = assert_error(reply, 400, code)
    assert values_of(error)["QueryParameterName"] == name
    assert values_of(error)["QueryParameterValue"] == value


@pytest.mark.parametrize("size", ["1", "1000"])
async def test_maxresults_bounds_are_accepted(emu, session, size):
    """The maxresults bounds 1 and 1000 are accepted."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("maxresults", size)))
    assert reply.status == 200, reply.text
    assert len(reply.json()["value"]) == min(int(size), 40)


# ---------------------------------------------------------------------------------------------- authentication


async def test_bad_signature_is_a_403(emu, session):
    """A Shared Key signature under another key is a 403 AuthenticationFailed, and nothing changes."""
    node_id = some(emu, "idle")
    wrong = SharedKeyCredential(emu.account_name, REFERENCE_KEY)
    reply = await signed(session, emu, "POST", node_path(node_id) + "/deallocate", credential=wrong)
    error = assert_error(reply, 403, "AuthenticationFailed")
    assert values_of(error) == {"AuthenticationErrorDetail": "signature mismatch"}
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.deallocate_calls() == {}
    assert emu.stats.auth_failures == 1


async def test_unknown_account_is_a_403(emu, session):
    """A Shared Key for another account name is a 403."""
    other = SharedKeyCredential("someoneelse", emu.account_key)
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", credential=other)
    assert values_of(assert_error(reply, 403, "AuthenticationFailed")) == {
        "AuthenticationErrorDetail": "unknown account"
    }


async def test_signature_covers_the_query(emu, session):
    """A signature computed over other query values is refused."""
    reply_ok = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("maxresults", "5")))
    assert reply_ok.status == 200
    credential = emu.credential()
    date = now_rfc7231()
    string = string_to_sign(
        "GET", emu.account_name, f"/pools/{POOL}/nodes", [*API, ("maxresults", "6")], ocp_headers=[("ocp-date", date)]
    )
    reply = await signed(
        session,
        emu,
        "GET",
        f"/pools/{POOL}/nodes",
        (*API, ("maxresults", "5")),
        ocp_date=date,
        authorization=credential.authorization(string),
    )
    assert_error(reply, 403, "AuthenticationFailed")


async def test_missing_date_is_a_403(emu, session):
    """A Shared Key request without ocp-date or Date is a 403."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", ocp_date=None)
    assert values_of(assert_error(reply, 403, "AuthenticationFailed")) == {
        "AuthenticationErrorDetail": "ocp-date or Date required"
    }


@pytest.mark.parametrize("date", [now_rfc7231(-20 * 60), now_rfc7231(20 * 60), "yesterday", "Sun, 01 Jun 2025"])
async def test_date_out_of_range_is_a_403(emu, session, date):
    """An ocp-date 20 minutes off (either way) or unparseable is a 403, though correctly signed."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", ocp_date=date)
    assert values_of(assert_error(reply, 403, "AuthenticationFailed")) == {
        "AuthenticationErrorDetail": "request date out of range"
    }


async def test_date_header_instead_of_ocp_date(emu, session):
    """A Date header signed in the Date slot (and no ocp-date) is accepted."""
    date = now_rfc7231()
    credential = emu.credential()
    path = f"/pools/{POOL}/nodes"
    string = f"GET\n\n\n\n\n\n{date}\n\n\n\n\n\n/{emu.account_name}{path}\napi-version:{API_VERSION}"
    reply = await signed(
        session,
        emu,
        "GET",
        path,
        ocp_date=None,
        headers={"Date": date},
        authorization=credential.authorization(string),
    )
    assert reply.status == 200, reply.text


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "SharedKeyLite emulator:abc"])
async def test_missing_authorization_is_a_401(emu, session, authorization):
    """No Authorization header, or one of an unknown scheme, is a 401 AuthenticationFailed."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", authorization=authorization)
    assert_error(reply, 401, "AuthenticationFailed")
    assert emu.stats.auth_failures == 1
    assert emu.stats.requests[("list", 401)] == 1


@pytest.mark.parametrize(("token", "status"), [("good-token", 200), ("other-token", 401), ("", 401)])
async def test_bearer_tokens(session, token, status):
    """A bearer token is accepted when configured in bearer_tokens, and refused with a 401 otherwise."""
    async with BatchEmulator(pools={POOL: 3}, bearer_tokens={"good-token"}) as emulator:
        reply = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes", authorization=f"Bearer {token}")
        if status == 200:
            assert reply.status == 200, reply.text
        else:
            assert_error(reply, 401, "AuthenticationFailed")


@pytest.mark.parametrize("authorization", [None, "Bearer anything", "SharedKey emulator:bad"])
async def test_auth_off_accepts_anything(session, authorization):
    """With auth=False any request is served, whatever its Authorization."""
    async with BatchEmulator(pools={POOL: 5}, seed=2, state_mix={"idle": 1.0}, auth=False) as emulator:
        node_id = some(emulator, "idle")
        reply = await signed(
            session, emulator, "POST", node_path(node_id) + "/deallocate", authorization=authorization, ocp_date=None
        )
        assert reply.status == 202, reply.text
        assert emulator.stats.auth_failures == 0


async def test_sdk_timeout_variant_is_accepted_and_counted(emu, session):
    """The Python SDK's signature (timeOut keeps its case) is accepted and counted; the documented one is not."""
    node_id = some(emu, "idle")
    query = (*API, ("timeOut", "30"))
    documented = await signed(session, emu, "GET", node_path(node_id), query)
    assert documented.status == 200, documented.text
    assert emu.stats.sdk_timeout_signatures == 0
    variant = await signed(session, emu, "POST", node_path(node_id) + "/deallocate", query, lowercase=False)
    assert variant.status == 202, variant.text
    assert emu.stats.sdk_timeout_signatures == 1
    assert emu.stats.auth_failures == 0


async def test_sdk_timeout_variant_refused_when_disabled(session):
    """With accept_sdk_timeout_variant=False the SDK's signature is a 403; the documented one still passes."""
    async with BatchEmulator(pools={POOL: 5}, accept_sdk_timeout_variant=False) as emulator:
        query = (*API, ("timeOut", "30"))
        variant = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes", query, lowercase=False)
        assert_error(variant, 403, "AuthenticationFailed")
        documented = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes", query)
        assert documented.status == 200, documented.text
        assert emulator.stats.sdk_timeout_signatures == 0


# ------------------------------------------------------------------------------------------------- throttling


@pytest.mark.parametrize(("status", "code"), [(429, "TooManyRequests"), (503, "ServerBusy")])
async def test_throttling(session, status, code):
    """Past the burst, a request is throttled with a whole-second Retry-After, and counted."""
    async with BatchEmulator(pools={POOL: 5}, throttle_rps=5, throttle_burst=2, throttle_status=status) as emulator:
        replies = [await signed(session, emulator, "GET", f"/pools/{POOL}/nodes") for _ in range(3)]
        assert [r.status for r in replies[:2]] == [200, 200]
        assert_error(replies[2], status, code)
        retry_after = replies[2].headers["Retry-After"]
        assert retry_after.isdigit()
        assert int(retry_after) >= 1
        assert emulator.stats.throttled == 1
        assert emulator.stats.requests[("list", status)] == 1


async def test_throttling_refills(session):
    """After waiting 1/rate seconds, one more request gets through."""
    async with BatchEmulator(pools={POOL: 5}, throttle_rps=20, throttle_burst=1) as emulator:
        first = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes")
        second = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes")
        assert (first.status, second.status) == (200, 429)
        await asyncio.sleep(0.06)
        third = await signed(session, emulator, "GET", f"/pools/{POOL}/nodes")
        assert third.status == 200, third.text


async def test_throttling_can_be_turned_on_and_off(emu, session):
    """update(throttle_rps=...) takes effect at once, and None turns throttling off."""
    emu.update(throttle_rps=1, throttle_burst=1)
    statuses = [(await signed(session, emu, "GET", f"/pools/{POOL}/nodes")).status for _ in range(2)]
    assert statuses == [200, 429]
    emu.update(throttle_rps=None)
    statuses = [(await signed(session, emu, "GET", f"/pools/{POOL}/nodes")).status for _ in range(3)]
    assert statuses == [200, 200, 200]


# ------------------------------------------------------------------------------------------------------ faults


async def deallocate(session, emu, node_id, **kwargs) -> Reply:
    return await signed(session, emu, "POST", node_path(node_id) + "/deallocate", **kwargs)


async def test_fault_reset_before(emu, session):
    """reset_before drops the connection before processing: the node is unchanged and the request never reached it."""
    emu.update(faults=FaultConfig(reset_before=1.0))
    node_id = some(emu, "idle")
    with pytest.raises(CONNECTION_ERRORS):
        await deallocate(session, emu, node_id)
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.deallocate_calls() == {}
    assert emu.stats.faults == {"reset_before": 1}
    assert emu.stats.requests[("deallocate", -1)] == 1


async def test_fault_reset_after(emu, session):
    """reset_after applies the deallocate and then drops the connection."""
    emu.update(faults=FaultConfig(reset_after=1.0))
    node_id = some(emu, "idle")
    with pytest.raises(CONNECTION_ERRORS):
        await deallocate(session, emu, node_id)
    assert emu.node(POOL, node_id).state == "deallocating"
    assert emu.stats.deallocate_calls() == {(POOL, node_id): 1}
    assert emu.stats.faults == {"reset_after": 1}
    assert emu.stats.requests[("deallocate", -1)] == 1


async def test_fault_html_502(emu, session):
    """html_502 answers a proxy's HTML 502 page without processing."""
    emu.update(faults=FaultConfig(html_502=1.0))
    node_id = some(emu, "idle")
    reply = await deallocate(session, emu, node_id)
    assert reply.status == 502
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b"502 Bad Gateway" in reply.body
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.faults == {"html_502": 1}


async def test_fault_truncated_json(emu, session):
    """truncated_json answers a 500 whose JSON body is cut short, without processing."""
    emu.update(faults=FaultConfig(truncated_json=1.0))
    node_id = some(emu, "idle")
    reply = await deallocate(session, emu, node_id)
    assert reply.status == 500
    assert reply.headers["Content-Type"] == JSON_TYPE
    assert reply.body.startswith(b"{")
    with pytest.raises(ValueError):
        json.loads(reply.body)
    assert emu.node(POOL, node_id).state == "idle"


@pytest.mark.parametrize(
    ("kind", "status", "code"), [("error_500", 500, "InternalError"), ("error_503", 503, "ServiceUnavailable")]
)
async def test_fault_server_errors(emu, session, kind, status, code):
    """error_500 and error_503 answer a BatchError without processing; the 503 carries no Retry-After."""
    emu.update(faults=FaultConfig(**{kind: 1.0}))
    node_id = some(emu, "idle")
    reply = await deallocate(session, emu, node_id)
    assert_error(reply, status, code)
    assert "Retry-After" not in reply.headers
    assert emu.node(POOL, node_id).state == "idle"
    assert emu.stats.deallocate_calls() == {}
    assert emu.stats.faults == {kind: 1}


async def test_fault_slow_answers_late(emu, session):
    """The slow fault applies the change and answers only after slow_seconds."""
    emu.update(faults=FaultConfig(slow=1.0, slow_seconds=0.3))
    node_id = some(emu, "idle")
    started = time.monotonic()
    reply = await deallocate(session, emu, node_id)
    assert reply.status == 202
    assert time.monotonic() - started >= 0.29
    assert emu.stats.faults == {"slow": 1}


async def test_fault_slow_trips_a_client_timeout(emu, session):
    """A client timeout shorter than slow_seconds fires, though the change was applied."""
    emu.update(faults=FaultConfig(slow=1.0, slow_seconds=0.3))
    node_id = some(emu, "idle")
    with pytest.raises(TimeoutError):
        await deallocate(session, emu, node_id, timeout=aiohttp.ClientTimeout(total=0.1))
    assert emu.node(POOL, node_id).state == "deallocating"


async def test_fault_latency(emu, session):
    """The latency fault delays every answer, errors included."""
    emu.update(faults=FaultConfig(latency=0.2))
    started = time.monotonic()
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes")
    assert reply.status == 200
    bad = await signed(session, emu, "GET", "/pools/nope/nodes")
    assert bad.status == 404
    assert time.monotonic() - started >= 0.39


async def test_faults_apply_only_to_their_operations(emu, session):
    """FaultConfig(operations={'list'}) faults List Nodes and leaves deallocate untouched."""
    emu.update(faults=FaultConfig(error_500=1.0, reset_after=1.0, operations={"list"}))
    node_id = some(emu, "idle")
    reply = await deallocate(session, emu, node_id)
    assert reply.status == 202, reply.text
    listed = await signed(session, emu, "GET", f"/pools/{POOL}/nodes")
    assert_error(listed, 500, "InternalError")
    assert emu.stats.faults == {"error_500": 1}


async def test_faults_can_be_cleared(emu, session):
    """update(faults=FaultConfig()) stops injecting faults."""
    emu.update(faults=FaultConfig(error_503=1.0))
    assert (await signed(session, emu, "GET", f"/pools/{POOL}/nodes")).status == 503
    emu.update(faults=FaultConfig())
    assert (await signed(session, emu, "GET", f"/pools/{POOL}/nodes")).status == 200


async def test_faults_come_after_authentication(emu, session):
    """An unauthenticated request is refused before any fault is drawn."""
    emu.update(faults=FaultConfig(error_500=1.0))
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", authorization=None)
    assert_error(reply, 401, "AuthenticationFailed")
    assert emu.stats.faults == {}


def test_update_rejects_pools_and_seed():
    """The pools and seed cannot change once the emulator exists."""
    emulator = BatchEmulator(pools={POOL: 1})
    with pytest.raises(ValueError):
        emulator.update(seed=3)
    with pytest.raises(ValueError):
        emulator.update(pools={"x": 1})
