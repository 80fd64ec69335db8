"""A load generator light enough to find a server's ceiling on one core: pre-signed HTTP/1.1 over raw sockets.

An aiohttp client spends about as much CPU per request as an aiohttp server, so it cannot saturate one from a
single core. This one builds every request's bytes up front (signed, distinct node ids) and only writes and
counts responses on keep-alive connections while the clock runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

CONNECTIONS = 32


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


def signed_requests(host: str, account: str, key: str, ids: list[str]) -> list[bytes]:
    """One signed bodiless Deallocate Node request per id, as bytes on the wire."""
    secret = base64.b64decode(key)
    date = email.utils.formatdate(usegmt=True)
    requests = []
    for node_id in ids:
        path = f"/pools/bench/nodes/{node_id}/deallocate"
        string = f"POST\n\n\n0\n\n\n\n\n\n\n\n\nocp-date:{date}\n/{account}{path}\napi-version:2025-06-01"
        signature = base64.b64encode(hmac.new(secret, string.encode(), hashlib.sha256).digest()).decode()
        requests.append(
            (
                f"POST {path}?api-version=2025-06-01 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
                f"client-request-id: {uuid.uuid4()}\r\nocp-date: {date}\r\n"
                f"Authorization: SharedKey {account}:{signature}\r\n\r\n"
            ).encode()
        )
    return requests


class _Connection(asyncio.Protocol):
    """Sends the next request when the previous response is complete (headers plus Content-Length)."""

    def __init__(self, source: list[bytes], counter: list[int], done: asyncio.Future[None]) -> None:
        self.source = source
        self.counter = counter
        self.done = done
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if not self.source or self.done.done():
            if self.transport is not None:
                self.transport.close()
            return
        assert self.transport is not None
        self.transport.write(self.source.pop())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.counter[0] += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 (asyncio's signature)
        self.transport = None


async def _drive(url: str, requests: list[bytes], seconds: float) -> float:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    counter = [0]
    done: asyncio.Future[None] = loop.create_future()
    transports = []
    for _ in range(CONNECTIONS):
        transport, _ = await loop.create_connection(
            lambda: _Connection(requests, counter, done), parts.hostname, parts.port
        )
        transports.append(transport)
    await asyncio.sleep(0.3)  # warm up
    start_count, started = counter[0], time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (counter[0] - start_count) / (time.perf_counter() - started)
    done.set_result(None)
    for transport in transports:
        transport.close()
    return rate


def measure(url: str, account: str, key: str, ids: list[str], seconds: float, *, core: int | None) -> float:
    """Responses per second the server at ``url`` sustains (requests pre-signed, distinct nodes)."""
    pin(core)
    host = urlsplit(url).netloc
    requests = signed_requests(host, account, key, ids)
    return asyncio.run(_drive(url, requests, seconds))


_BARE_SERVER = """
import os, sys
from aiohttp import web
async def handler(request):
    return web.Response(status=202, headers={"request-id": "r"})
app = web.Application()
app.router.add_post("/pools/{pool}/nodes/{node}/deallocate", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda *a: print("ready", flush=True))
"""


def measure_bare(seconds: float, *, client_core: int | None, server_core: int | None) -> float:
    """The same load against a bare aiohttp.web handler on the server core."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", _BARE_SERVER, str(port)]
    if server_core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(server_core), *command]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        ids = [f"n{i}" for i in range(200000)]
        return measure(
            f"http://127.0.0.1:{port}", "bench", base64.b64encode(b"k" * 32).decode(), ids, seconds, core=client_core
        )
    finally:
        server.terminate()
        server.wait(10)
