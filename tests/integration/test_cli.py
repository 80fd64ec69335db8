"""The batch-dealloc CLI as a subprocess against the emulator: outputs, exit codes, dry run, Ctrl-C, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from batch_dealloc_async.emulator import BatchEmulator, FaultConfig

CLI = [sys.executable, "-m", "batch_dealloc_async"]


def env_for(emu: BatchEmulator | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCH_"))}
    if emu is not None:
        env["BATCH_ACCOUNT_NAME"] = emu.account_name
        env["BATCH_ACCOUNT_KEY"] = emu.account_key
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def emu():
    async with BatchEmulator(pools={"pool-a": 120, "pool-b": 40}, seed=21, deallocate_delay=0.3) as emulator:
        yield emulator


async def test_dry_run_sends_no_deallocate_request(emu) -> None:
    """--dry-run lists what would be deallocated and skipped (with states) and changes nothing."""
    code, out, _ = await run_cli(
        "deallocate", "--endpoint", emu.endpoint, "--pool", "pool-a", "--all", "--dry-run", env=env_for(emu)
    )
    assert code == 0
    assert emu.stats.count("deallocate") == 0
    eligible = emu.node_ids("pool-a", {"idle", "running"})
    assert out.count("would deallocate") == len(eligible)
    assert out.count("would skip") == 120 - len(eligible)
    skipped = next(n for n in emu.nodes("pool-a") if n.id not in eligible)
    assert f"{skipped.id} ({skipped.state})" in out


async def test_json_output_accounts_for_every_node(emu) -> None:
    """--output json is one JSON document on stdout with one outcome per node of both pools."""
    code, out, err = await run_cli(
        "deallocate",
        "--endpoint",
        emu.endpoint,
        "--pool",
        "pool-a",
        "--pool",
        "pool-b",
        "--all",
        "--output",
        "json",
        "--wait",
        env=env_for(emu),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["nodes"] == 160
    assert len(report["outcomes"]) == 160
    assert {o["node_id"] for o in report["outcomes"]} == set(emu.node_ids("pool-a")) | set(emu.node_ids("pool-b"))
    assert report["counts"]["deallocated"] + report["counts"]["skipped"] == 160
    assert report["interrupted"] is False


async def test_jsonl_output_is_one_outcome_per_line(emu) -> None:
    """--output jsonl writes one JSON outcome per line on stdout and nothing else there."""
    ids = emu.node_ids("pool-a", {"idle"})[:5]
    args = ["deallocate", "--endpoint", emu.endpoint, "--pool", "pool-a", "--output", "jsonl"]
    for node_id in ids:
        args += ["--node", node_id]
    code, out, err = await run_cli(*args, env=env_for(emu))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["node_id"] for line in lines) == sorted(ids)
    assert {line["status"] for line in lines} == {"accepted"}
    assert "summary" in err


async def test_nodes_file_and_partial_failure_exit_1(emu, tmp_path: Path) -> None:
    """A nodes file with an unknown node: the others are deallocated, the exit code is 1."""
    ids = emu.node_ids("pool-a", {"idle"})[:3]
    nodes_file = tmp_path / "nodes.txt"
    nodes_file.write_text("# nodes to stop\n" + "\n".join([*ids, "no-such-node"]) + "\n\n")
    code, out, err = await run_cli(
        "deallocate", "--endpoint", emu.endpoint, "--pool", "pool-a", "--nodes-file", str(nodes_file), env=env_for(emu)
    )
    assert code == 1, err
    assert "NodeNotFound" in out
    assert "\x1b" not in err  # not a terminal: plain progress lines, no control characters
    assert "progress:" in err
    assert all(emu.node("pool-a", n).state in {"deallocating", "deallocated"} for n in ids)


@pytest.mark.parametrize(
    "args",
    [
        ["deallocate", "--pool", "p", "--all"],  # no endpoint
        ["deallocate", "--endpoint", "http://example.com", "--pool", "p", "--all"],  # remote plain http
        ["deallocate", "--endpoint", "https://a.b", "--pool", "p", "--all", "--timeout", "31"],
        ["deallocate", "--endpoint", "https://a.b", "--pool", "p"],  # no target
        ["deallocate", "--endpoint", "https://a.b", "--pool", "p", "--node", "a/b"],
        ["nonsense"],
    ],
)
async def test_usage_errors_exit_2(args) -> None:
    """Bad usage is one clear line on stderr and exit code 2, without a traceback."""
    code, _, err = await run_cli(*args, env=env_for(None, BATCH_ACCOUNT_NAME="a", BATCH_ACCOUNT_KEY="a2V5"))
    assert code == 2
    assert "Traceback" not in err


async def test_missing_credentials_exit_2() -> None:
    """No credentials in the environment: exit 2 naming the variables to set."""
    code, _, err = await run_cli("deallocate", "--endpoint", "https://a.b", "--pool", "p", "--all", env=env_for(None))
    assert code == 2
    assert "BATCH_ACCOUNT_KEY" in err


async def test_authentication_failure_exit_3(emu) -> None:
    """A key the service refuses: exit code 3, and the key never appears in any output."""
    wrong = "AAAA" + emu.account_key[4:]
    code, out, err = await run_cli(
        "deallocate", "--endpoint", emu.endpoint, "--pool", "pool-a", "--all", env=env_for(emu, BATCH_ACCOUNT_KEY=wrong)
    )
    assert code == 3
    assert wrong not in out + err
    assert emu.account_key not in out + err


async def test_key_on_the_command_line_warns_and_is_never_printed(emu) -> None:
    """--account-key works but warns; the key is not echoed."""
    env = env_for(None, BATCH_ACCOUNT_NAME=emu.account_name)
    code, out, err = await run_cli(
        "deallocate",
        "--endpoint",
        emu.endpoint,
        "--pool",
        "pool-b",
        "--all",
        "--account-key",
        emu.account_key,
        "--output",
        "json",
        env=env,
    )
    assert code == 0, err
    assert "warning: --account-key" in err
    assert emu.account_key not in out + err


@pytest.mark.parametrize("output", ["table", "json"])
async def test_sigint_prints_the_partial_summary_and_exits_130(output) -> None:
    """Ctrl-C mid-run prints what is known so far and exits 130."""
    faults = FaultConfig(latency=0.05, operations={"deallocate"})
    async with BatchEmulator(pools={"slow": 3000}, seed=3, faults=faults) as emu:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "deallocate",
            "--endpoint",
            emu.endpoint,
            "--pool",
            "slow",
            "--all",
            "--max-concurrency",
            "4",
            "--output",
            output,
            env=env_for(emu),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        while emu.stats.count("deallocate") < 20:  # noqa: ASYNC110 (the run is in another process)
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, stderr.decode()
    text = stdout.decode()
    if output == "json":
        document = json.loads(text)
        assert document["interrupted"] is True
        assert 0 < len(document["outcomes"]) < 3000
    else:
        assert "Interrupted" in text
    assert "Traceback" not in stderr.decode()


async def test_emulator_command_serves_and_stops() -> None:
    """batch-dealloc emulator prints its endpoint and a ready-to-paste key, serves, and stops on SIGINT."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "emulator",
        "--port",
        "0",
        "--pool",
        "p=5",
        env=env_for(None),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    printed: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line, "the emulator exited early"
        printed.append(line)
        if line.startswith("listening on "):
            break
    endpoint = printed[-1].split()[-1]
    key_line = next(line for line in printed if "BATCH_ACCOUNT_KEY=" in line)
    key = key_line.strip().split("=", 1)[1]
    code, out, err = await run_cli(
        "deallocate",
        "--endpoint",
        endpoint,
        "--pool",
        "p",
        "--all",
        "--output",
        "json",
        env=env_for(None, BATCH_ACCOUNT_NAME="emulator", BATCH_ACCOUNT_KEY=key),
    )
    assert code == 0, err
    assert json.loads(out)["nodes"] == 5
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), 15)
    assert process.returncode == 0


async def test_readme_demo_command() -> None:
    """The README's first command (batch-dealloc demo) succeeds with its defaults, well under a minute."""
    script = Path(sys.executable).with_name("batch-dealloc")
    command = [str(script), "demo"] if script.exists() else [*CLI, "demo"]
    process = await asyncio.create_subprocess_exec(
        *command, env=env_for(None), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert "deallocated" in stdout.decode()


async def test_debug_prints_the_traceback_of_a_usage_error() -> None:
    """--debug shows the traceback of the error it reports (not 'NoneType: None')."""
    env = env_for(None, BATCH_ACCOUNT_NAME="a", BATCH_ACCOUNT_KEY="AAAA")
    args = ("--debug", "deallocate", "--endpoint", "http://example.com", "--pool", "p", "--all")
    code, _, err = await run_cli(*args, env=env)
    assert code == 2
    assert "plain http is allowed only for a loopback host" in err
    assert "Traceback (most recent call last)" in err
    assert "NoneType: None" not in err


async def test_dry_run_jsonl_has_its_own_status(emu) -> None:
    """A dry run's JSON lines say would_deallocate or would_skip, never a real run's not_attempted."""
    args = ("deallocate", "--endpoint", emu.endpoint, "--pool", "pool-b", "--all", "--dry-run", "--output", "jsonl")
    code, out, _ = await run_cli(*args, env=env_for(emu))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 40
    assert {line["status"] for line in lines} <= {"would_deallocate", "would_skip"}
    assert all(line["dry_run"] is True for line in lines)
    eligible = set(emu.node_ids("pool-b", {"idle", "running"}))
    assert {line["node_id"] for line in lines if line["status"] == "would_deallocate"} == eligible
    assert emu.stats.count("deallocate") == 0


async def test_max_rate_is_a_ceiling_on_the_command_line(emu) -> None:
    """--max-rate R: the run sends no faster than R requests/s (so it takes at least about N/R), and ends well."""
    eligible = len(emu.node_ids("pool-a", {"idle", "running"}))
    code, out, err = await run_cli(
        "deallocate", "--endpoint", emu.endpoint, "--pool", "pool-a", "--all", "--max-rate", "40", "--output", "json",
        env=env_for(emu),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["counts"]["accepted"] == eligible
    assert emu.stats.count("deallocate") == eligible
    # A ceiling only slows a run down, so this bound holds on any machine, however slow.
    assert report["elapsed"] >= 0.9 * (eligible - 1) / 40


async def test_max_rate_must_be_positive() -> None:
    """--max-rate 0 is a usage error, before anything is sent."""
    code, _, err = await run_cli(
        "deallocate", "--endpoint", "http://127.0.0.1:9", "--pool", "p", "--all", "--max-rate", "0", env=env_for(None)
    )
    assert code == 2
    assert "--max-rate" in err
