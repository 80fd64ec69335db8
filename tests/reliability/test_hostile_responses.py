"""Strange answers from the wire: each gives a typed error or a sane default, never a crash or a hang."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from batch_dealloc_async import (
    BatchDeallocClient,
    BatchServiceError,
    BatchTransportError,
    RetryPolicy,
    ServerError,
    SharedKeyCredential,
    ThrottledError,
)
from tests.conftest import REFERENCE_ACCOUNT, REFERENCE_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ONE_TRY = RetryPolicy(max_attempts=1)


class Server:
    """A real HTTP server on loopback whose answer each test sets."""

    def __init__(self) -> None:
        self.handler: Handler = self.accepted
        self.calls = 0
        self.endpoint = ""

    @staticmethod
    async def accepted(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.read()
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.endpoint = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield state
    await runner.cleanup()


def client_for(server: Server, retry: RetryPolicy = ONE_TRY) -> BatchDeallocClient:
    return BatchDeallocClient(server.endpoint, SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY), retry=retry)


def streamed(status: int, size: int, content_type: str, *, declare: bool) -> Handler:
    """A body of ``size`` bytes written 1 MiB at a time, so the server itself holds little memory."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        if declare:
            response.content_length = size
        await response.prepare(request)
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(size // len(chunk)):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading, as it should
        return response

    return handler


def answer(status: int, body: bytes = b"", **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "body", "content_type", "cls"),
    [
        (500, b"<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html", ServerError),
        (502, b"<html>Bad Gateway</html>", "text/html", ServerError),
        (500, b'{"code": "InternalError", "message": {"lang": "en-US", "val', "application/json", ServerError),
        (400, b"null", "application/json", BatchServiceError),
        (400, b'["not", "an", "error"]', "application/json", BatchServiceError),
        (400, b'{"code": 12, "message": "flat"}', "application/json", BatchServiceError),
        (404, b"\xff\xfe\x00garbage\x00", "application/octet-stream", BatchServiceError),
        (418, b"", "text/plain", BatchServiceError),
        (599, b"", "text/plain", ServerError),
        (302, b"", "text/plain", BatchServiceError),
        (200, b"", "text/plain", BatchServiceError),
    ],
)
async def test_odd_bodies_and_statuses_are_typed_errors(server, status, body, content_type, cls) -> None:
    """Non-JSON, HTML, truncated, wrong-shaped bodies and unknown statuses all become our typed errors."""
    server.handler = answer(status, body, **{"Content-Type": content_type})
    async with client_for(server) as client:
        with pytest.raises(cls) as info:
            await client.deallocate_node("p", "n")
    assert info.value.status == status
    assert str(info.value).startswith(f"{status} ")
    assert len(str(info.value)) < 400


async def test_50_mb_error_body_is_not_read(server) -> None:
    """A 50 MB error page is cut at a small cap: memory stays flat and the error is typed."""
    server.handler = streamed(500, 50 * 1024 * 1024, "text/html", declare=False)
    async with client_for(server) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ServerError):
                await client.deallocate_node("p", "n")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


async def test_50_mb_listing_is_refused(server) -> None:
    """A 50 MB 'page' of nodes is refused without reading it into memory."""
    server.handler = streamed(200, 50 * 1024 * 1024, "application/json", declare=True)
    async with client_for(server) as client:
        tracemalloc.start()
        try:
            with pytest.raises(BatchTransportError, match="larger than"):
                [n async for n in client.list_nodes("p")]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("declare", [True, False])
async def test_50_mb_listing_without_length_is_cut(server, declare) -> None:
    """Declared or chunked, a body past the cap ends the read with a typed error and flat memory."""
    server.handler = streamed(200, 50 * 1024 * 1024, "application/json", declare=declare)
    async with client_for(server) as client:
        tracemalloc.start()
        try:
            with pytest.raises(BatchTransportError, match="larger than"):
                await client.get_node("p", "n")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 40 * 1024 * 1024  # at most the 16 MiB cap (and its join), never the 50 MB


@pytest.mark.parametrize(
    "value", ["-5", "0", "0.25", "1e9", "nan", "soon", "Mon, 01 Jan 2001 00:00:00 GMT", "", "  3  ", "9" * 400]
)
async def test_retry_after_of_any_shape_gives_a_bounded_wait(server, value) -> None:
    """Negative, fractional, huge, past-date or garbage Retry-After: the retry still comes, capped by the policy."""
    answers = iter([answer(429, b"", **{"Retry-After": value}), Server.accepted])
    server.handler = lambda request: next(answers)(request)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    retry = RetryPolicy(max_retry_after=2.0, backoff_base=0.1)
    credential = SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
    async with BatchDeallocClient(server.endpoint, credential, retry=retry, sleep=sleep) as client:
        result = await asyncio.wait_for(client.deallocate_node("p", "n"), 10)
    assert result.attempts == 2
    assert len(sleeps) == 1
    assert 0.0 <= sleeps[0] <= 2.0


async def test_throttled_without_retry_after_still_backs_off(server) -> None:
    """A 503 ServerBusy with no Retry-After is throttling: backed off, retried, then typed."""
    server.handler = answer(503, b'{"code": "ServerBusy", "message": {"value": "busy"}}')
    retry = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.02)
    async with client_for(server, retry) as client:
        with pytest.raises(ThrottledError) as info:
            await client.deallocate_node("p", "n")
    assert info.value.retry_after is None
    assert server.calls == 3


async def test_202_without_any_header_is_a_plain_success(server) -> None:
    """A 202 with no request-id, ETag, Last-Modified or DataServiceId: success, the fields are None."""
    async with client_for(server) as client:
        result = await client.deallocate_node("p", "n")
    assert (result.request_id, result.etag, result.last_modified, result.data_service_id) == (None, None, None, None)


async def test_malformed_headers_do_not_crash(server) -> None:
    """A garbage Last-Modified and an empty request-id are read as absent."""
    server.handler = answer(202, **{"Last-Modified": "yesterday-ish", "request-id": "", "ETag": ""})
    async with client_for(server) as client:
        result = await client.deallocate_node("p", "n")
    assert result.last_modified is None
    assert result.request_id is None


async def test_answer_that_never_comes_is_a_timeout(server) -> None:
    """A server that never answers ends in BatchTimeoutError after the attempt's timeout, not a hang."""

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(status=202)

    server.handler = hang
    retry = RetryPolicy(max_attempts=2, timeout_margin=0.2, backoff_base=0.01)
    async with client_for(server, retry) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.deallocate_node("p", "n", timeout=1), 10)
    assert server.calls == 2


async def test_connection_refused_is_a_transport_error() -> None:
    """Nothing listening: BatchTransportError after the retries, with the attempt count."""
    retry = RetryPolicy(max_attempts=2, backoff_base=0.01)
    credential = SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
    async with BatchDeallocClient("http://127.0.0.1:9", credential, retry=retry) as client:
        with pytest.raises(BatchTransportError) as info:
            await client.deallocate_node("p", "n")
    assert info.value.attempts == 2
    assert "cannot connect" in str(info.value)
