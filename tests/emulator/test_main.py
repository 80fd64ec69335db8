"""The emulator as a process: ``python -m batch_dealloc_async.emulator`` serves, prints its key, stops on SIGINT.

Its options are defined once, and ``batch-dealloc emulator`` takes the same ones.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest

from batch_dealloc_async import SharedKeyCredential, cli
from batch_dealloc_async.emulator import BatchEmulator, EmulatorConfig, FaultConfig, Outage, config_from
from batch_dealloc_async.emulator._main import build_parser, main
from tests.emulator.test_app import signed

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
KEY = re.compile(r"export BATCH_ACCOUNT_KEY=(\S+)")
NAME = re.compile(r"export BATCH_ACCOUNT_NAME=(\S+)")


class _Endpoint:
    """Just enough of a BatchEmulator for the signed-request helper."""

    def __init__(self, endpoint: str, name: str, key: str) -> None:
        self.endpoint = endpoint
        self.account_name = name
        self.account_key = key

    def credential(self) -> SharedKeyCredential:
        return SharedKeyCredential(self.account_name, self.account_key)


async def read_until_listening(stream: asyncio.StreamReader, timeout: float) -> list[str]:
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        raw = await asyncio.wait_for(stream.readline(), max(0.01, deadline - loop.time()))
        if not raw:
            raise AssertionError(f"the emulator exited before listening: {lines}")
        lines.append(raw.decode().rstrip("\n"))
        if LISTENING.search(lines[-1]):
            return lines


async def test_process_serves_a_signed_request_and_stops_on_sigint():
    """The process prints its endpoint and key, serves a signed List Nodes, and exits 0 on SIGINT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batch_dealloc_async.emulator",
        "--port",
        "0",
        "--pool",
        "p=10",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = await read_until_listening(proc.stdout, 20.0)
        text = "\n".join(lines)
        listening = LISTENING.search(text)
        key = KEY.search(text)
        name = NAME.search(text)
        assert listening is not None
        assert key is not None
        assert name is not None
        assert int(listening.group(2)) > 0
        target = _Endpoint(listening.group(1), name.group(1), key.group(1))
        async with aiohttp.ClientSession() as session:
            reply = await signed(session, target, "GET", "/pools/p/nodes")  # type: ignore[arg-type]
        assert reply.status == 200, reply.text
        nodes = reply.json()["value"]
        assert len(nodes) == 10
        async with BatchEmulator(pools={"p": 10}, seed=1) as same:  # the same seed in-process: the same nodes
            assert [n["id"] for n in nodes] == same.node_ids("p")
            assert key.group(1) == same.account_key
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10.0) == 0
        rest, _ = await proc.communicate()
        assert "stopped" in rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batch_dealloc_async.emulator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("pool", ["bad", "=5", "p=-1"])
def test_bad_pool_exits_2(pool):
    """A --pool that is not NAME=COUNT is a usage error: exit code 2 and a message on stderr."""
    result = run("--port", "0", "--pool", pool)
    assert result.returncode == 2
    assert "--pool" in result.stderr
    assert "listening" not in result.stdout


def test_busy_port_exits_1():
    """A port already in use makes the process exit 1 with a message, not hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = run("--port", str(port), "--pool", "p=1")
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


# ------------------------------------------------------------------------------------- one option definition

FLAGS = [
    "--pool",
    "p=5",
    "--seed",
    "4",
    "--server-busy",
    "0.1",
    "--server-busy-retry-after",
    "3",
    "--too-many-requests",
    "0.2",
    "--too-many-requests-retry-after",
    "2",
    "--throttle-schedule",
    "0:600,5:150,15:none",
    "--throttle-burst",
    "40",
    "--throttle-window",
    "0.5",
    "--throttle-sliding",
    "--outage",
    "10:5:refuse",
    "--outage",
    "30:2.5:error_500",
    "--latency-before",
    "0.05",
    "--latency",
    "0.07",
    "--start-task-failure",
    "0.25",
    "--timeline-bin",
    "0.5",
    "--throttle-status",
    "503",
    "--deallocate-delay",
    "1.5",
    "--state-mix",
    "idle=3,running=1",
    "--account-name",
    "acct",
    "--no-auth",
]


def test_flags_become_the_config():
    """Every option of the emulator's command line lands in its field of the configuration."""
    config = config_from(build_parser().parse_args(FLAGS))
    assert config.pools == {"p": 5}
    assert config.seed == 4
    assert config.throttle_schedule == ((0.0, 600.0), (5.0, 150.0), (15.0, None))
    assert config.throttle_burst == 40
    assert (config.throttle_window, config.throttle_sliding) == (0.5, True)
    assert config.throttle_status == 503
    assert config.outages == (Outage(10.0, 5.0, "refuse"), Outage(30.0, 2.5, "error_500"))
    assert config.start_task_failure == 0.25
    assert config.timeline_bin == 0.5
    assert config.deallocate_delay == 1.5
    assert config.state_mix == {"idle": 3.0, "running": 1.0}
    assert (config.account_name, config.auth) == ("acct", False)
    faults = config.faults
    assert (faults.server_busy, faults.server_busy_retry_after) == (0.1, 3)
    assert (faults.too_many_requests, faults.too_many_requests_retry_after) == (0.2, 2)
    assert (faults.latency_before, faults.latency) == (0.05, 0.07)


def test_defaults_leave_the_new_features_off():
    """Without options the throttling faults, schedule, outages and start-task failures are off."""
    config = config_from(build_parser().parse_args([]))
    assert config == EmulatorConfig(pools={"pool-1": 100}, faults=FaultConfig.mixed(0.0))
    assert config.faults.server_busy_retry_after is None


@pytest.mark.parametrize("flags", [FLAGS, [], ["--port", "0", "--throttle-rps", "50", "--fault-rate", "0.1"]])
def test_both_entry_points_share_one_definition(flags):
    """batch-dealloc emulator parses exactly the options of python -m batch_dealloc_async.emulator."""
    own = build_parser().parse_args(flags)
    via_cli = vars(cli.build_parser().parse_args(["emulator", *flags]))
    cli_globals = {"command", "debug", "log_level", "log_format", "otel"}
    assert {k: v for k, v in via_cli.items() if k not in cli_globals} == vars(own)
    assert config_from(argparse.Namespace(**via_cli)) == config_from(own)


@pytest.mark.parametrize(
    "flags",
    [
        ["--outage", "10:5:flood"],
        ["--outage", "10:5"],
        ["--outage", "-1:5:refuse"],
        ["--throttle-schedule", "0:abc"],
        ["--throttle-schedule", "5"],
        ["--server-busy", "1.5"],
        ["--server-busy-retry-after", "-1"],
        ["--start-task-failure", "2"],
    ],
)
def test_bad_flag_is_a_usage_error(flags, capsys):
    """A malformed option value is an argparse error (exit 2) naming the option."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(flags)
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--throttle-schedule", "5:10,2:20"],
        ["--throttle-schedule", "0:0"],
        ["--timeline-bin", "0"],
        ["--throttle-window", "0"],
        ["--throttle-sliding"],
    ],
)
def test_value_the_config_refuses_exits_2(flags, capsys):
    """A value the configuration refuses exits 2 before serving.

    A descending schedule, a zero rate, bin or window, a sliding window without its length.
    """
    assert main(["--port", "0", *flags]) == 2
    assert "error:" in capsys.readouterr().err
