"""The web-service example over real sockets: the app against the emulator, driven by a real aiohttp client.

The emulator's injected sleep is a gate (with ``latency_before`` on Deallocate and Start): a held request has not
reached the emulator's state yet, so a test decides exactly how far a run gets before it cancels, overlaps or
shuts down, without timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from batch_dealloc_async import (
    DEALLOCATE_STATES,
)
from batch_dealloc_async.emulator import BatchEmulator, FaultConfig
from examples.web_service import CLIENT, RUNS, make_app, serving

ROOT = Path(__file__).resolve().parents[2]
POOL_SIZE = 60
# no transient states (starting): a node's state changes only because a test's run changed it
MIX = {"idle": 0.5, "running": 0.25, "offline": 0.1, "unusable": 0.05, "deallocated": 0.1}


class Gate:
    """The emulator's sleep: lets ``passes`` requests through (all, when None), holds the rest until opened."""

    def __init__(self) -> None:
        self.passes: int | None = None
        self.opened = asyncio.Event()

    def hold(self, after: int = 0) -> None:
        self.passes = after
        self.opened.clear()

    def open(self) -> None:
        self.passes = None
        self.opened.set()

    async def sleep(self, seconds: float) -> None:
        if self.passes is None:
            return
        if self.passes > 0:
            self.passes -= 1
            return
        await self.opened.wait()


def our_tasks() -> list[asyncio.Task[object]]:
    names = ("web-service-run", "batch-dealloc")
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(names) and not t.done()]


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def emu(gate: Gate):
    faults = FaultConfig(latency_before=0.001, operations={"deallocate", "start"})
    async with BatchEmulator(
        pools={"pool-a": POOL_SIZE, "pool-b": POOL_SIZE},
        seed=5,
        state_mix=MIX,
        deallocate_delay=0.1,
        start_delay=0.1,
        faults=faults,
        sleep=gate.sleep,
    ) as emulator:
        yield emulator
        gate.open()  # nothing may stay held while the emulator closes


@contextlib.asynccontextmanager
async def service(emu: BatchEmulator):
    """The example app on a free port, and a client session whose base URL is the app's."""
    app = make_app(emu.endpoint, emu.credential())
    async with serving(app) as url, aiohttp.ClientSession(url) as http:
        yield app, http


async def post_run(http: aiohttp.ClientSession, path: str, body: object = None) -> dict:
    async with http.post(path, json=body) as response:
        assert response.status == 202, await response.text()
        data = await response.json()
        assert response.headers["Location"] == f"/runs/{data['id']}"
        return data


async def ndjson(http: aiohttp.ClientSession, path: str) -> list[dict]:
    async with http.get(path) as response:
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in response.content if line.strip()]


async def sse(http: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None) -> list[dict]:
    """Server-sent events as dicts: ``event``, ``id`` (or None) and the decoded ``data``."""
    events: list[dict] = []
    fields: dict[str, str] = {}
    async with http.get(path, headers={"Accept": "text/event-stream", **(headers or {})}) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                events.append({"event": fields["event"], "id": fields.get("id"), "data": json.loads(fields["data"])})
                fields = {}
    return events


async def read_until(http: aiohttp.ClientSession, path: str, accepted: int) -> list[dict]:
    """Follow a run's NDJSON stream until ``accepted`` nodes were accepted; return what was read."""
    seen: list[dict] = []
    async with http.get(path) as response:
        async for line in response.content:
            seen.append(json.loads(line))
            if sum(r.get("status") == "accepted" for r in seen) >= accepted:
                return seen
    raise AssertionError(f"the stream ended before {accepted} nodes were accepted: {seen[-1:]}")


async def test_health(emu: BatchEmulator) -> None:
    """GET /health answers ok."""
    async with service(emu) as (_, http), http.get("/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_pool_run_streams_every_outcome_and_reports_the_emulator_states(emu: BatchEmulator) -> None:
    """A whole-pool run with wait: its stream ends with a done summary, and every outcome matches the emulator."""
    before = {node.id: node.state for node in emu.nodes("pool-a")}
    eligible = {node_id for node_id, state in before.items() if state in DEALLOCATE_STATES}
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate", {"wait": True})
        assert run["state"] == "running"
        records = await ndjson(http, run["events"])
        async with http.get(run["location"], params={"limit": "1000"}) as response:
            report = await response.json()
    outcomes, end = records[:-1], records[-1]
    assert [r["event"] for r in outcomes] == ["outcome"] * POOL_SIZE
    assert [r["index"] for r in outcomes] == list(range(POOL_SIZE))
    assert end["event"] == "end"
    assert end["state"] == report["state"] == "done"
    assert report["total"] == report["done"] == POOL_SIZE
    assert report["unfinished"] == 0
    assert report["counts"]["deallocated"] == len(eligible) > 0
    assert report["counts"]["skipped"] == POOL_SIZE - len(eligible) > 0
    assert report["failures_by_code"] == {}
    assert [o["node_id"] for o in report["outcomes"]] == [r["node_id"] for r in outcomes]
    for outcome in report["outcomes"]:
        now = emu.node("pool-a", outcome["node_id"]).state
        if outcome["status"] == "deallocated":
            assert outcome["node_id"] in eligible
            assert now == "deallocated"
        else:
            assert outcome["status"] == "skipped"
            assert outcome["state"] == before[outcome["node_id"]] == now


async def test_server_sent_events_carry_ids_and_resume_after_last_event_id(emu: BatchEmulator) -> None:
    """With Accept: text/event-stream the stream is SSE, ids count from 0, and Last-Event-ID resumes after one."""
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        events = await sse(http, run["events"])
        resumed = await sse(http, run["events"], {"Last-Event-ID": "49"})
    assert [e["event"] for e in events] == ["outcome"] * POOL_SIZE + ["end"]
    assert [e["id"] for e in events[:-1]] == [str(i) for i in range(POOL_SIZE)]
    assert events[-1]["data"]["state"] == "done"
    assert events[-1]["data"]["counts"]["accepted"] + events[-1]["data"]["counts"]["skipped"] == POOL_SIZE
    assert resumed[:-1] == events[50:-1]
    assert resumed[-1]["event"] == "end"


async def test_concurrent_and_late_subscribers_each_see_every_outcome(emu: BatchEmulator, gate: Gate) -> None:
    """Three subscribers during the run and one after it ends all get the same outcomes, in the same order."""
    gate.hold()
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        subscribed = [asyncio.Event() for _ in range(3)]

        async def subscriber(ready: asyncio.Event, accept: str) -> list[str]:
            node_ids: list[str] = []
            async with http.get(run["events"], headers={"Accept": accept}) as response:
                async for raw in response.content:
                    line = raw.decode()
                    if accept == "text/event-stream" and not line.startswith("data: "):
                        continue
                    record = json.loads(line.removeprefix("data: "))
                    if "node_id" in record:
                        node_ids.append(record["node_id"])
                        ready.set()  # the skipped nodes come first; the deallocations are held by the gate
            return node_ids

        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(subscriber(ready, accept))
                for ready, accept in zip(subscribed, ["*/*", "text/event-stream", "application/x-ndjson"], strict=True)
            ]
            for ready in subscribed:
                await ready.wait()
            gate.open()
        late = [r["node_id"] for r in await ndjson(http, run["events"]) if r["event"] == "outcome"]
    streams = [task.result() for task in tasks]
    assert len(late) == POOL_SIZE
    assert streams == [late, late, late]


async def test_named_nodes_only(emu: BatchEmulator) -> None:
    """With "nodes" only those nodes get a request and an outcome."""
    chosen = emu.node_ids("pool-a", set(DEALLOCATE_STATES))[:3]
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate", {"nodes": chosen, "option": "terminate"})
        records = await ndjson(http, run["events"])
    assert run["total"] == 3
    assert sorted(r["node_id"] for r in records[:-1]) == sorted(chosen)
    assert {r["status"] for r in records[:-1]} == {"accepted"}
    assert records[-1]["counts"]["accepted"] == 3
    assert set(emu.stats.deallocate_calls()) == {("pool-a", node_id) for node_id in chosen}


async def test_start_pool_starts_the_deallocated_nodes(emu: BatchEmulator) -> None:
    """POST /pools/{id}/start with wait starts every deallocated node and skips the others."""
    deallocated = set(emu.node_ids("pool-b", {"deallocated"}))
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-b/start", {"wait": True})
        records = await ndjson(http, run["events"])
    end = records[-1]
    assert end["action"] == "start"
    assert end["state"] == "done"
    assert end["counts"]["started"] == len(deallocated) > 0
    assert end["counts"]["skipped"] == POOL_SIZE - len(deallocated)
    started = {r["node_id"] for r in records[:-1] if r["status"] == "started"}
    assert started == deallocated
    assert all(emu.node("pool-b", node_id).state in {"idle", "running"} for node_id in started)


async def test_outcomes_are_paged(emu: BatchEmulator) -> None:
    """GET /runs/{id} pages the outcomes with offset and limit; following "next" reads each once, in order."""
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        streamed = [r["node_id"] for r in await ndjson(http, run["events"]) if r["event"] == "outcome"]
        paged: list[str] = []
        link: str | None = f"{run['location']}?limit=25"
        while link is not None:
            async with http.get(link) as response:
                page = await response.json()
            assert len(page["outcomes"]) <= 25
            paged += [o["node_id"] for o in page["outcomes"]]
            link = page["next"]
        async with http.get(run["location"]) as response:
            default = await response.json()
        async with http.get(run["location"], params={"limit": "0"}) as response:
            summary_only = await response.json()
    assert paged == streamed
    assert default["limit"] == 100
    assert len(default["outcomes"]) == POOL_SIZE
    assert summary_only["outcomes"] == []
    assert summary_only["done"] == POOL_SIZE


@pytest.mark.parametrize("query", ["limit=1001", "limit=-1", "offset=-5", "limit=ten", "offset=1.5"])
async def test_bad_paging_is_400(emu: BatchEmulator, query: str) -> None:
    """Out-of-range or non-integer offset and limit are a 400 with a JSON error."""
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        async with http.get(f"{run['location']}?{query}") as response:
            assert response.status == 400
            assert "error" in await response.json()


async def test_cancel_midway_reports_what_was_done_and_what_was_not(emu: BatchEmulator, gate: Gate) -> None:
    """DELETE mid-run: the report keeps the outcomes so far, counts the rest unfinished, and leaves nothing open."""
    before = {node.id: node.state for node in emu.nodes("pool-a")}
    eligible = {node_id for node_id, state in before.items() if state in DEALLOCATE_STATES}
    gate.hold(after=10)  # ten deallocations reach the emulator; the others wait at the gate
    async with service(emu) as (app, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        await read_until(http, run["events"], accepted=10)
        async with http.delete(run["location"]) as response:
            assert response.status == 200
            report = await response.json()
        assert our_tasks() == []
        assert app[CLIENT].limiter.in_flight == 0
        records = await ndjson(http, run["events"])  # the stream of a cancelled run ends too
        async with http.get(run["location"], params={"limit": "1000"}) as response:
            final = await response.json()
        client = app[CLIENT]
    assert client.session is not None
    assert client.session.closed
    assert report["state"] == final["state"] == records[-1]["state"] == "cancelled"
    assert report["counts"]["accepted"] == 10
    assert report["counts"]["skipped"] == POOL_SIZE - len(eligible)
    assert report["total"] == POOL_SIZE
    assert report["unfinished"] == len(eligible) - 10 > 0
    assert report["done"] + report["unfinished"] == POOL_SIZE
    assert final["outcomes"] == [{k: v for k, v in r.items() if k not in {"event", "index"}} for r in records[:-1]]
    accepted = {o["node_id"] for o in final["outcomes"] if o["status"] == "accepted"}
    with_outcome = {o["node_id"] for o in final["outcomes"]}
    for node_id in accepted:
        assert emu.node("pool-a", node_id).state in {"deallocating", "deallocated"}
    for node_id in set(before) - with_outcome:  # held at the gate: never reached the service
        assert emu.node("pool-a", node_id).state == before[node_id]


async def test_cancelling_a_named_node_run_names_the_unfinished_nodes(emu: BatchEmulator, gate: Gate) -> None:
    """A cancelled run over a node list lists the nodes that got no outcome."""
    chosen = emu.node_ids("pool-a", set(DEALLOCATE_STATES))[:8]
    gate.hold(after=3)
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate", {"nodes": chosen})
        seen = await read_until(http, run["events"], accepted=3)
        async with http.delete(run["location"]) as response:
            report = await response.json()
    done = {r["node_id"] for r in seen}
    assert report["state"] == "cancelled"
    assert report["unfinished"] == 5
    assert sorted(report["unfinished_nodes"]) == sorted(set(chosen) - done)


async def test_delete_of_a_finished_run_is_idempotent(emu: BatchEmulator) -> None:
    """DELETE of a run that has ended answers 200 with its report, unchanged, as often as it is sent."""
    async with service(emu) as (_, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        await ndjson(http, run["events"])
        answers = []
        for _ in range(2):
            async with http.delete(run["location"]) as response:
                assert response.status == 200
                answers.append(await response.json())
    assert answers[0]["state"] == answers[1]["state"] == "done"
    assert answers[0]["counts"] == answers[1]["counts"]


async def test_overlapping_run_on_a_pool_is_refused_naming_the_running_one(emu: BatchEmulator, gate: Gate) -> None:
    """A second run on a busy pool is a 409 naming the first; another pool is free; the pool is free once it ends."""
    gate.hold()
    async with service(emu) as (_, http):
        first = await post_run(http, "/pools/pool-a/deallocate")
        async with http.post("/pools/pool-a/start") as response:
            assert response.status == 409
            refused = await response.json()
            assert response.headers["Location"] == first["location"]
        other = await post_run(http, "/pools/pool-b/deallocate")
        gate.open()
        await ndjson(http, first["events"])
        await ndjson(http, other["events"])
        again = await post_run(http, "/pools/pool-a/deallocate")
        await ndjson(http, again["events"])
    assert refused["running"] == first["id"]
    assert refused["location"] == first["location"]
    assert first["id"] in refused["error"]


async def test_a_subscriber_that_disconnects_does_not_cancel_the_run(emu: BatchEmulator, gate: Gate) -> None:
    """Closing the event stream mid-run leaves the run going; it ends done with every node."""
    gate.hold()
    async with service(emu) as (app, http):
        run = await post_run(http, "/pools/pool-a/deallocate")
        async with http.get(run["events"]) as response:
            first = json.loads(await response.content.readline())
            response.close()  # drop the connection mid-stream
        assert first["event"] == "outcome"
        assert app[RUNS].get(run["id"]).state == "running"
        gate.open()
        records = await ndjson(http, run["events"])
    assert records[-1]["state"] == "done"
    assert records[-1]["done"] == POOL_SIZE


BAD_REQUESTS = [
    ("/pools/pool-a/deallocate", "{", "not JSON"),
    ("/pools/pool-a/deallocate", "[]", "JSON object"),
    ("/pools/pool-a/deallocate", '{"node": ["x"]}', "unknown keys"),
    ("/pools/pool-a/deallocate", '{"nodes": "tvm-1"}', "list of node ids"),
    ("/pools/pool-a/deallocate", '{"nodes": []}', "must not be empty"),
    ("/pools/pool-a/deallocate", '{"wait": "yes"}', "wait"),
    ("/pools/pool-a/deallocate", '{"deadline": "10"}', "deadline"),
    ("/pools/pool-a/deallocate", '{"option": "sometimes"}', "option must be one of"),  # the library's check
    ("/pools/pool-a/deallocate", '{"nodes": ["ok", "a/b"]}', "node_id"),  # the library's check
    ("/pools/pool-a/deallocate", '{"deadline": -1}', "deadline"),  # the library's check
    ("/pools/a%20b/deallocate", "", "pool_id"),  # the library's check
    ("/pools/pool-a/start", '{"option": "requeue"}', "only deallocate"),
    ("/pools/pool-a/start", '{"nodes": [" "]}', "node_id"),  # the library's check
]


@pytest.mark.parametrize(("path", "body", "message"), BAD_REQUESTS)
async def test_bad_input_is_400_and_nothing_is_sent(emu: BatchEmulator, path: str, body: str, message: str) -> None:
    """Bad JSON, keys, types, options, ids and deadlines are a 400 JSON error; no run, no request to the service."""
    async with service(emu) as (app, http):
        async with http.post(path, data=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert len(app[RUNS]) == 0
        assert our_tasks() == []
    assert message in error
    assert emu.stats.total == 0


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/events"), ("DELETE", "")])
async def test_unknown_run_is_404(emu: BatchEmulator, method: str, suffix: str) -> None:
    """An unknown run id is a 404 with a JSON error."""
    async with service(emu) as (_, http), http.request(method, f"/runs/no-such-run{suffix}") as response:
        assert response.status == 404
        assert "no-such-run" in (await response.json())["error"]


async def test_shutdown_with_a_run_in_flight_is_clean(emu: BatchEmulator, gate: Gate) -> None:
    """Shutting down mid-run cancels the run, ends its stream with the summary, closes the client, keeps the report."""
    gate.hold(after=5)
    app = make_app(emu.endpoint, emu.credential())
    five_accepted = asyncio.Event()

    async def subscriber(http: aiohttp.ClientSession, path: str) -> list[dict]:
        records: list[dict] = []
        async with http.get(path) as response:
            async for line in response.content:
                records.append(json.loads(line))
                if sum(r.get("status") == "accepted" for r in records) == 5:
                    five_accepted.set()
        return records

    async with aiohttp.ClientSession() as http:
        async with serving(app) as url:
            run = await post_run(http, f"{url}/pools/pool-a/deallocate")
            stream = asyncio.create_task(subscriber(http, f"{url}{run['events']}"))
            await five_accepted.wait()
        records = await stream
    kept = app[RUNS].get(run["id"])
    assert kept is not None
    assert kept.state == "cancelled"
    assert kept.summary()["counts"]["accepted"] == 5
    assert records[-1]["event"] == "end"
    assert records[-1]["state"] == "cancelled"
    assert app[CLIENT].session is not None
    assert app[CLIENT].session.closed
    assert our_tasks() == []


async def test_command_line_with_the_emulator() -> None:
    """`python -m examples.web_service --emulator --port 0` serves, prints its URL, and stops cleanly on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCH_"))}
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-W", "error", "-X", "dev", "-m", "examples.web_service"],
        *["--emulator", "--port", "0", "--nodes", "20"],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):  # a hang fails the test instead of blocking the suite
            first = (await process.stdout.readline()).decode()
        assert first.startswith("listening on http://127.0.0.1:")
        url = first.split()[-1]
        async with aiohttp.ClientSession(url) as http:
            async with http.get("/health") as response:
                assert await response.json() == {"status": "ok"}
            run = await post_run(http, "/pools/pool-a/deallocate")
            records = await ndjson(http, run["events"])
        assert records[-1]["state"] == "done"
        assert records[-1]["done"] == 20
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert "curl" in stdout.decode()
    assert stderr.decode() == ""
