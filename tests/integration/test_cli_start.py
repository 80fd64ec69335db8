"""The CLI's start, nodes and demo commands as subprocesses against the emulator."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from batch_dealloc_async.emulator import BatchEmulator
from tests.integration.test_cli import env_for, run_cli

MIX = {"deallocated": 0.5, "idle": 0.25, "running": 0.1, "offline": 0.1, "starttaskfailed": 0.05}


@pytest.fixture
async def emu():
    async with BatchEmulator(
        pools={"pool-a": 60, "pool-b": 30}, seed=23, state_mix=MIX, deallocate_delay=0.2, start_delay=0.2
    ) as emulator:
        yield emulator


def by_state(emu: BatchEmulator, pool: str) -> dict[str, int]:
    return dict(Counter(node.state for node in emu.nodes(pool)))


@pytest.mark.parametrize("pools", [["pool-a"], ["pool-a", "pool-b"]])
async def test_start_all_wait_json_starts_every_deallocated_node(emu, pools) -> None:
    """Command start --all --wait --output json: each deallocated node ends started (idle), others skipped; exit 0."""
    deallocated = {(p, n) for p in pools for n in emu.node_ids(p, {"deallocated"})}
    others = {(p, n.id): n.state for p in pools for n in emu.nodes(p) if (p, n.id) not in deallocated}
    args = ["start", "--endpoint", emu.endpoint, "--all", "--wait", "--output", "json"]
    for pool in pools:
        args += ["--pool", pool]
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    report = json.loads(out)
    outcomes = report["outcomes"]
    assert report["nodes"] == len(outcomes) == len(deallocated) + len(others)
    assert Counter((o["pool_id"], o["node_id"]) for o in outcomes).most_common(1)[0][1] == 1
    assert {(o["pool_id"], o["node_id"]) for o in outcomes if o["status"] == "started"} == deallocated
    assert {(o["pool_id"], o["node_id"]): o["state"] for o in outcomes if o["status"] == "skipped"} == others
    assert {o["action"] for o in outcomes} == {"start"}
    assert report["counts"]["started"] == len(deallocated)
    assert report["interrupted"] is False
    assert all(emu.node(p, n).state == "idle" for p, n in deallocated)
    assert emu.stats.count("start", 202) == len(deallocated)


async def test_start_task_failure_exits_1_with_its_code() -> None:
    """Command start --wait on nodes whose start task fails: each failed starttaskfailed, StartTaskFailed; exit 1."""
    config = {"pools": {"p": 20}, "seed": 3, "state_mix": {"deallocated": 1.0}, "start_delay": 0.2}
    async with BatchEmulator(**config, start_task_failure=1.0) as emu:
        args = ("start", "--endpoint", emu.endpoint, "--pool", "p", "--all", "--wait", "--output", "json")
        code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 1, err
    report = json.loads(out)
    assert report["failures_by_code"] == {"StartTaskFailed": 20}
    assert {(o["status"], o["state"], o["error_code"]) for o in report["outcomes"]} == {
        ("failed", "starttaskfailed", "StartTaskFailed")
    }


@pytest.mark.parametrize("output", ["table", "json"])
async def test_start_dry_run_sends_no_start_request(emu, output) -> None:
    """Command start --dry-run lists would_start (deallocated) and would_skip (with states); sends no start."""
    args = ("start", "--endpoint", emu.endpoint, "--pool", "pool-a", "--all", "--dry-run", "--output", output)
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    deallocated = emu.node_ids("pool-a", {"deallocated"})
    if output == "json":
        document = json.loads(out)
        assert document["dry_run"] is True
        assert [p["node_id"] for p in document["would_start"]] == deallocated
        assert {p["node_id"]: p["state"] for p in document["would_skip"]} == {
            n.id: n.state for n in emu.nodes("pool-a") if n.state != "deallocated"
        }
    else:
        assert out.count("would start") == len(deallocated)
        assert out.count("would skip") == 60 - len(deallocated)
        assert f"dry run: {len(deallocated)} would be started" in out
    assert emu.stats.count("start") == 0
    assert emu.node_ids("pool-a", {"deallocated"}) == deallocated


async def test_start_jsonl_lines_carry_the_action(emu) -> None:
    """Command start --output jsonl: one JSON outcome per node on stdout, each with "action": "start"."""
    deallocated = emu.node_ids("pool-b", {"deallocated"})[:3]
    idle = emu.node_ids("pool-b", {"idle"})[0]
    args = ["start", "--endpoint", emu.endpoint, "--pool", "pool-b", "--output", "jsonl"]
    for node_id in [*deallocated, idle]:
        args += ["--node", node_id]
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["node_id"] for line in lines) == sorted([*deallocated, idle])
    assert {line["action"] for line in lines} == {"start"}
    assert {line["node_id"]: line["status"] for line in lines} == {
        **dict.fromkeys(deallocated, "accepted"),
        idle: "skipped",
    }
    assert "summary" in err


async def test_nodes_json_counts_match_the_emulator(emu) -> None:
    """Command nodes --pool P --pool Q --output json: per pool, counts by state and the total equal the emulator's."""
    args = ("nodes", "--endpoint", emu.endpoint, "--pool", "pool-a", "--pool", "pool-b", "--output", "json")
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    document = json.loads(out)
    assert list(document) == ["pool-a", "pool-b"]
    for pool, size in (("pool-a", 60), ("pool-b", 30)):
        assert document[pool]["states"] == by_state(emu, pool)
        assert document[pool]["nodes"] == size
    assert emu.stats.count("deallocate") == emu.stats.count("start") == 0


async def test_nodes_table_counts_match_the_emulator(emu) -> None:
    """Command nodes (table output): per pool, totals and not-deallocated, then a line per state."""
    args = ("nodes", "--endpoint", emu.endpoint, "--pool", "pool-a", "--pool", "pool-b")
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    tables: dict[str, dict[str, int]] = {}
    for line in out.splitlines():
        if header := re.fullmatch(r"(\S+): (\d+) nodes, (\d+) not deallocated", line):
            pool = header[1]
            tables[pool] = {}
            counts = by_state(emu, pool)
            assert int(header[2]) == sum(counts.values())
            assert int(header[3]) == sum(counts.values()) - counts.get("deallocated", 0)
        elif row := re.fullmatch(r"\s+(\w+)\s+(\d+)", line):
            tables[pool][row[1]] = int(row[2])
    assert tables == {"pool-a": by_state(emu, "pool-a"), "pool-b": by_state(emu, "pool-b")}


async def test_demo_deallocates_then_starts_every_node_again() -> None:
    """Command demo --output json: one document with both reports; each node it deallocated is started again; exit 0."""
    code, out, err = await run_cli("demo", "--nodes", "300", "--output", "json", env=env_for(None), timeout=90)
    assert code == 0, err
    document = json.loads(out)
    assert set(document) == {"deallocate", "start"}
    down, up = document["deallocate"], document["start"]
    assert down["nodes"] == 300
    deallocated = {(o["pool_id"], o["node_id"]) for o in down["outcomes"] if o["status"] == "deallocated"}
    assert deallocated
    assert {(o["pool_id"], o["node_id"]) for o in up["outcomes"] if o["status"] == "started"} == deallocated
    assert up["nodes"] == len(deallocated)
    assert {o["action"] for o in down["outcomes"]} == {"deallocate"}
    assert {o["action"] for o in up["outcomes"]} == {"start"}


async def test_demo_no_start_prints_only_the_deallocation() -> None:
    """Command demo --no-start --output json: only the "deallocate" report; exit 0."""
    args = ("demo", "--nodes", "300", "--no-start", "--output", "json")
    code, out, err = await run_cli(*args, env=env_for(None), timeout=90)
    assert code == 0, err
    document = json.loads(out)
    assert set(document) == {"deallocate"}
    assert document["deallocate"]["nodes"] == 300
    assert document["deallocate"]["counts"]["deallocated"] > 0
