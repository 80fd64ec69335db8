"""The emulator's JSON validates against the official 2025-06-01 Swagger definitions (BatchNode, lists, errors).

The spec extract and two official examples live in ``tests/conformance/data`` (MIT, Azure/azure-rest-api-specs).
Each body is checked twice: against the definitions as published (open objects), and against a closed copy in
which no property outside the definition (except ``odata.*``) is allowed, so a misspelt key fails too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from yarl import URL

from batch_dealloc_async.emulator import BatchEmulator, FaultConfig
from tests.emulator.test_app import API, Reply, signed

DATA = Path(__file__).parent / "data"
SPEC = json.loads((DATA / "BatchService.2025-06-01.nodes-extract.json").read_text(encoding="utf-8"))
POOL = "spec-pool"
DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?(Z|[+-]\d\d:\d\d)$")
ODATA = {"^odata\\.": {}}

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    if not isinstance(value, str) or not DATE_TIME.match(value):
        return False
    datetime.fromisoformat(value[:19])  # raises for impossible dates
    return True


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return isinstance(value, str) and URL(value).is_absolute()


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return isinstance(value, int) and -(2**31) <= value < 2**31


def _closed(definitions: dict[str, Any]) -> dict[str, Any]:
    closed = copy.deepcopy(definitions)
    for schema in closed.values():
        if "properties" in schema:
            schema["additionalProperties"] = False
            schema["patternProperties"] = ODATA
    return closed


def validator(name: str, *, closed: bool) -> jsonschema.Draft4Validator:
    definitions = _closed(SPEC["definitions"]) if closed else SPEC["definitions"]
    schema = {"$ref": f"#/definitions/{name}", "definitions": definitions}
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=FORMATS)


def check(name: str, body: object) -> None:
    for closed in (False, True):
        errors = sorted(validator(name, closed=closed).iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name} (closed={closed}): " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors
        )


@pytest.fixture
async def emu() -> AsyncIterator[BatchEmulator]:
    mix = {"idle": 0.4, "running": 0.3, "offline": 0.1, "deallocated": 0.1, "starttaskfailed": 0.1}
    async with BatchEmulator(pools={POOL: 30}, seed=9, state_mix=mix) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.mark.parametrize(
    ("example", "name"),
    [("Nodes_GetNode.json", "BatchNode"), ("Nodes_ListNodes.json", "BatchNodeListResult")],
)
def test_official_examples_validate(example, name):
    """The official examples validate (the validator and the closed copy accept what the service sends)."""
    body = json.loads((DATA / example).read_text(encoding="utf-8"))["responses"]["200"]["body"]
    check(name, body)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("BatchNode", {"id": "x", "state": "sleeping"}),
        ("BatchNode", {"id": "x", "isDedicated": "yes"}),
        ("BatchNode", {"id": "x", "stateTransitionTime": "yesterday"}),
        ("BatchNode", {"id": "x", "nodeAgentInfo": {"version": "1"}}),
        ("BatchNode", {"id": "x", "vmsize": "Standard_D2_v5"}),
        ("BatchNodeListResult", {"value": [{"id": 3}]}),
        ("BatchError", {"code": "X", "message": {"lang": "en-US", "value": 1}}),
    ],
    ids=["bad-state", "bad-bool", "bad-date", "agent-missing-time", "misspelt-key", "bad-id", "bad-message"],
)
def test_validator_catches_bad_bodies(name, body):
    """The validation actually rejects bodies that break the definitions (so passing means something)."""
    open_errors = list(validator(name, closed=False).iter_errors(body))
    closed_errors = list(validator(name, closed=True).iter_errors(body))
    assert closed_errors
    assert open_errors or (name == "BatchNode" and "vmsize" in body)


@pytest.mark.parametrize("state", ["idle", "running", "offline", "deallocated", "starttaskfailed"])
async def test_get_node_is_a_batch_node(emu, session, state):
    """A full Get Node answer, for a node in each state, is a valid BatchNode."""
    node_id = emu.node_ids(POOL, {state})[0]
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes/{node_id}")
    assert reply.status == 200, reply.text
    body = reply.json()
    check("BatchNode", body)
    assert body["state"] == state


async def test_get_node_while_deallocating_is_a_batch_node(emu, session):
    """A node in transition (deallocating) still answers a valid BatchNode."""
    node_id = emu.node_ids(POOL, {"idle"})[0]
    assert (await signed(session, emu, "POST", f"/pools/{POOL}/nodes/{node_id}/deallocate")).status == 202
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes/{node_id}")
    body = reply.json()
    check("BatchNode", body)
    assert body["state"] == "deallocating"


@pytest.mark.parametrize(
    "query",
    [
        (("maxresults", "4"),),
        (("maxresults", "4"), ("$filter", "state eq 'idle'")),
        (("$select", "id,state"),),
        (("$select", "id,stateTransitionTime,nodeAgentInfo"), ("maxresults", "10")),
        (),
    ],
    ids=["paged", "filtered", "select", "select-nested", "whole"],
)
async def test_list_nodes_pages_are_batch_node_list_results(emu, session, query):
    """Every List Nodes page, first to last (odata.nextLink included), is a valid BatchNodeListResult."""
    reply = await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, *query))
    pages = 0
    while True:
        assert reply.status == 200, reply.text
        body = reply.json()
        check("BatchNodeListResult", body)
        pages += 1
        link = body.get("odata.nextLink")
        if link is None:
            break
        url = URL(link)
        reply = await signed(session, emu, "GET", url.raw_path, list(url.query.items()))
    if ("maxresults", "4") in query:
        assert pages > 1


async def error_replies(emu: BatchEmulator, session: aiohttp.ClientSession):
    idle = emu.node_ids(POOL, {"idle"})[0]
    offline = emu.node_ids(POOL, {"offline"})[0]
    node = f"/pools/{POOL}/nodes/{idle}"
    yield await signed(session, emu, "GET", f"/pools/nope/nodes/{idle}")
    yield await signed(session, emu, "GET", f"/pools/{POOL}/nodes/nope")
    yield await signed(session, emu, "POST", f"/pools/{POOL}/nodes/{offline}/deallocate")
    yield await signed(session, emu, "GET", node, ())
    yield await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("maxresults", "0")))
    yield await signed(session, emu, "GET", f"/pools/{POOL}/nodes", (*API, ("$filter", "bogus")))
    yield await signed(
        session,
        emu,
        "POST",
        node + "/deallocate",
        body=b'{"nodeDeallocateOption": "bogus"}',
        content_type="application/json; odata=minimalmetadata",
    )
    yield await signed(session, emu, "GET", node, authorization=None)
    yield await signed(session, emu, "GET", node, ocp_date=None)
    async with session.get(emu.endpoint + "/nowhere") as response:
        yield Reply(response.status, response.headers, await response.read())
    emu.update(faults=FaultConfig(error_503=1.0))
    yield await signed(session, emu, "GET", node)
    emu.update(faults=FaultConfig(), throttle_rps=1, throttle_burst=1)
    yield [await signed(session, emu, "GET", node) for _ in range(2)][-1]


async def test_error_bodies_are_batch_errors(emu, session):
    """Every error the emulator answers (4xx and 5xx) is a valid BatchError with odata.metadata."""
    statuses = []
    async for reply in error_replies(emu, session):
        statuses.append(reply.status)
        body = reply.json()
        check("BatchError", body)
        assert set(body) >= {"odata.metadata", "code", "message"}
    assert statuses == [404, 404, 409, 400, 400, 400, 400, 401, 403, 404, 503, 429]
