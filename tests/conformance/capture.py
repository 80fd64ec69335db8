"""A capture server for the wire conformance tests: records every request, answers as the service would.

Both our client and the official SDK send to it over a real socket; the tests compare what it recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

# The headers the protocol is made of (everything else, such as User-Agent, may differ between clients).
PROTOCOL_HEADERS = frozenset(
    {"authorization", "client-request-id", "content-length", "content-type", "ocp-date", "return-client-request-id"}
)


class Captured:
    """One request as it arrived: method, raw path and query, lower-cased headers, body."""

    def __init__(self, request: web.Request, body: bytes) -> None:
        self.method = request.method
        self.raw_path = request.raw_path
        self.headers = {k.lower(): v for k, v in request.headers.items()}
        self.body = body

    @property
    def protocol_headers(self) -> set[str]:
        return set(self.headers) & PROTOCOL_HEADERS


async def capture_server(verb: str, node_state: str) -> AsyncIterator[tuple[str, list[Captured]]]:
    """Serve ``POST .../nodes/{node}/{verb}`` (202) and Get Node (``node_state``, for the SDK's poller).

    Yields the endpoint and the list the requests are recorded in; a fixture's body.
    """
    seen: list[Captured] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(Captured(request, await request.read()))
        if request.method == "GET":  # the SDK's poller: the node has reached the state at once
            return web.json_response({"id": request.match_info["node"], "state": node_state})
        echo = {"client-request-id": request.headers.get("client-request-id", "")}
        return web.Response(status=202, headers={"request-id": "r", **echo})

    app = web.Application()
    app.router.add_route("*", f"/pools/{{pool}}/nodes/{{node}}/{verb}", handler)
    app.router.add_route("GET", "/pools/{pool}/nodes/{node}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()
