"""start_node, start_nodes and their wait against a scripted fake service (aioresponses)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime

import aiohttp
import pytest
from aioresponses import aioresponses

from batch_dealloc_async import (
    BatchDeallocClient,
    BatchNodesClient,
    ConflictError,
    NodeStateError,
    OutcomeStatus,
    SharedKeyCredential,
    StartResult,
)
from tests.conftest import ENDPOINT, REFERENCE_ACCOUNT, REFERENCE_KEY, FakeClock
from tests.unit.scripted import Script, accepted, error
from tests.virtual_time import run_virtual

START_URL = f"{ENDPOINT}/pools/pool1/nodes/n1/start"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CONFLICT = error(409, "OperationInvalidForCurrentState")
WATCHED = "(state eq 'idle') or (state eq 'running') or (state eq 'starting') or (state eq 'starttaskfailed') or "
WATCHED += "(state eq 'unusable') or (state eq 'waitingforstarttask')"


@pytest.fixture
def mock():
    with aioresponses() as m:
        yield m


def node(state: str, node_id: str = "n1") -> tuple[int, dict[str, str], str]:
    return (200, {"request-id": "get-1", "ETag": "0x9"}, json.dumps({"id": node_id, "state": state}))


def page(*nodes: tuple[str, str]) -> tuple[int, dict[str, str], str]:
    return (200, {}, json.dumps({"value": [{"id": i, "state": s} for i, s in nodes]}))


@pytest.mark.parametrize(
    ("timeout", "query"),
    [
        (None, "api-version=2025-06-01"),
        (1, "api-version=2025-06-01&timeOut=1"),
        (30, "api-version=2025-06-01&timeOut=30"),
    ],
)
async def test_exact_request_and_result(mock, make_client, timeout, query) -> None:
    """POST .../start with no body nor Content-Type; the 202's headers fill a StartResult."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        result = await client.start_node("pool1", "n1", timeout=timeout)
    (req,) = script.seen
    assert req.method == "POST"
    assert str(req.url) == f"{START_URL}?{query}"
    assert req.data is None
    assert "Content-Type" not in req.headers
    assert GUID.match(req.headers["client-request-id"])
    assert req.headers["return-client-request-id"] == "true"
    assert req.headers["ocp-date"] == "Sun, 01 Jun 2025 12:00:00 GMT"
    assert isinstance(result, StartResult)
    assert result == StartResult(
        pool_id="pool1",
        node_id="n1",
        request_id="req-1",
        client_request_id=req.headers["client-request-id"],
        etag="0x8DDA0",
        last_modified=datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        data_service_id="https://myaccount.westus.batch.azure.com/pools/pool1/nodes/n1",
        attempts=1,
        reconciled=False,
    )


async def test_signature_is_the_reference_vector(mock, make_client) -> None:
    """pool1/tvmps_abc_d at the reference ocp-date signs to the reference sheet's start vector."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        await client.start_node("pool1", "tvmps_abc_d")
    (req,) = script.seen
    assert req.headers["Authorization"] == "SharedKey myaccount:JhIDQWDnWygsj74SrJGThz3Rh2pqn2lJc13UZs9g/Rg="


async def test_conflict_on_a_clean_attempt_is_sent_once(mock, make_client, clock: FakeClock) -> None:
    """A node not deallocated: 409 on the first attempt is a ConflictError, never retried, no Get Node."""
    post = Script([CONFLICT, accepted()]).install(mock)
    get = Script([node("deallocated")]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError) as info:
            await client.start_node("pool1", "n1")
        assert client.stats.accepted == 0
    assert len(post.seen) == 1
    assert get.seen == []
    assert info.value.attempts == 1
    assert info.value.code == "OperationInvalidForCurrentState"
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_id": "", "node_id": "n"}, "pool_id"),
        ({"pool_id": "p" * 65, "node_id": "n"}, "pool_id"),
        ({"pool_id": "p", "node_id": "a/b"}, "node_id"),
        ({"pool_id": "p", "node_id": ""}, "node_id"),
        ({"pool_id": "p", "node_id": "n", "timeout": 0}, "timeout"),
        ({"pool_id": "p", "node_id": "n", "timeout": 31}, "timeout"),
        ({"pool_id": "p", "node_id": "n", "timeout": 2.5}, "timeout"),
        ({"pool_id": "p", "node_id": "n", "client_request_id": "nope"}, "GUID"),
        ({"pool_id": "p", "node_id": "n", "ocp_date": datetime(2025, 6, 1)}, "ocp_date"),  # noqa: DTZ001 (naive on purpose)
    ],
)
async def test_bad_arguments_send_nothing(mock, make_client, kwargs, match) -> None:
    """Bad ids, timeouts, request ids and dates raise ValueError before anything goes on the wire."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        with pytest.raises(ValueError, match=match):
            await client.start_node(**kwargs)
    assert script.seen == []


AMBIGUOUS = [error(500, "InternalError"), aiohttp.ServerDisconnectedError(), TimeoutError()]


@pytest.mark.parametrize("first", AMBIGUOUS, ids=["500", "reset", "timeout"])
@pytest.mark.parametrize("state", ["starting", "waitingforstarttask", "idle", "running"])
async def test_ambiguous_then_409_is_reconciled(mock, make_client, first, state) -> None:
    """An attempt that may have worked, then 409: a Get Node on the way to running confirms it (reconciled)."""
    post = Script([first, CONFLICT]).install(mock)
    get = Script([node(state)]).install(mock, "GET")
    async with make_client() as client:
        result = await client.start_node("pool1", "n1")
        assert client.stats.accepted == 1
    assert result.reconciled is True
    assert result.attempts == 2
    assert result.request_id == "get-1"
    assert result.etag == "0x9"
    assert len(post.seen) == 2
    assert len({s.headers["client-request-id"] for s in post.seen}) == 1
    (seen,) = get.seen
    assert seen.url.path == "/pools/pool1/nodes/n1"
    assert dict(seen.url.query) == {"api-version": "2025-06-01", "$select": "id,state"}


@pytest.mark.parametrize("state", ["deallocated", "unusable", "deallocating", "offline"])
async def test_ambiguous_then_409_with_a_state_start_did_not_cause_is_conflict(mock, make_client, state) -> None:
    """A Get Node showing deallocated, unusable (or another state start does not lead to) keeps the 409."""
    Script([error(500, "InternalError"), CONFLICT]).install(mock)
    get = Script([node(state)]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError) as info:
            await client.start_node("pool1", "n1")
        assert client.stats.accepted == 0
    assert info.value.attempts == 2
    assert len(get.seen) == 1


async def test_ambiguous_then_409_and_get_fails_is_conflict(mock, make_client) -> None:
    """When the confirming Get Node fails too, the 409 stands (it is not turned into the Get's error)."""
    Script([error(500, "InternalError"), CONFLICT]).install(mock)
    Script([error(404, "NodeNotFound")]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError):
            await client.start_node("pool1", "n1")


def test_batch_nodes_client_is_the_same_class() -> None:
    """BatchNodesClient is an alias of BatchDeallocClient, not a subclass."""
    assert BatchNodesClient is BatchDeallocClient


# ------------------------------------------------------------------------------------- start_nodes, wait


def run_wait(pages: list[tuple[int, dict[str, str], str]], **kwargs):
    """start_nodes(["n1"], wait=True) on virtual time; the listings answer ``pages`` in order (the last repeats).

    Returns the report, the listings seen, and how many listings had been answered when the outcome came.
    """

    async def main():
        delivered: list[int] = []
        with aioresponses() as mocked:
            post = Script([accepted()]).install(mocked)
            listings = Script(pages).install(mocked, "GET")
            credential = SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
            clock = asyncio.get_running_loop().time
            async with BatchDeallocClient(ENDPOINT, credential, clock=clock) as client:
                report = await client.start_nodes(
                    "pool1", ["n1"], wait=True, on_outcome=lambda _: delivered.append(len(listings.seen)), **kwargs
                )
        assert len(post.seen) == 1
        return report, listings.seen, delivered

    return run_virtual(main(), start=1000.0)


ST = ("n1", "starting")
WAITING = ("n1", "waitingforstarttask")


@pytest.mark.parametrize(
    ("pages", "status", "state", "code", "rounds"),
    [
        ([page(ST), page(WAITING), page(("n1", "idle"))], "started", "idle", None, 3),
        ([page(), page(ST), page(("n1", "running"))], "started", "running", None, 3),  # absent: still deallocated
        ([page(WAITING), page(("n1", "starttaskfailed"))], "failed", "starttaskfailed", "StartTaskFailed", 2),
        ([page(ST), page(("n1", "unusable"))], "failed", "unusable", "NodeUnusable", 2),
        ([page(ST)], "timed_out", "starting", "ClientTimeout", None),
        ([page(ST), page(WAITING)], "timed_out", "waitingforstarttask", "ClientTimeout", None),
        ([page()], "timed_out", "starting", "ClientTimeout", None),  # never listed: the state of the 202
    ],
)
def test_wait_ends_only_on_idle_running_or_a_failed_state(pages, status, state, code, rounds) -> None:
    """starting/waitingforstarttask (or not listed yet) keep a node pending; idle/running end it started."""
    report, listings, delivered = run_wait(pages, wait_timeout=60)
    (outcome,) = report.outcomes
    assert outcome.status == status
    assert outcome.action == "start"
    assert outcome.state == state
    assert outcome.error_code == code
    assert isinstance(outcome.result, StartResult)
    if rounds is not None:
        assert report.poll_rounds == rounds
        assert delivered == [rounds]  # not one listing earlier
    else:
        assert report.poll_rounds == len(listings) > len(pages)
    if status == "failed":
        assert isinstance(outcome.error, NodeStateError)
        assert outcome.error.state == state
        assert report.failures_by_code == {code: 1}
        assert outcome.to_dict()["error_code"] == code
    for seen in listings:
        assert seen.url.path == "/pools/pool1/nodes"
        assert dict(seen.url.query)["$filter"] == WATCHED
        assert dict(seen.url.query)["$select"] == "id,state"
    assert report.by_status(OutcomeStatus(status)) == [outcome]
