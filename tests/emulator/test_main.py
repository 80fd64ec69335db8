"""The emulator as a process: ``python -m batch_dealloc_async.emulator`` serves, prints its key, stops on SIGINT."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest

from batch_dealloc_async import SharedKeyCredential
from batch_dealloc_async.emulator import BatchEmulator
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
