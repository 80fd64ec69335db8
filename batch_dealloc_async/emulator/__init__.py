"""A local Azure Batch service for the nodes operations this library uses: the default for demos and tests.

Real HTTP on loopback (aiohttp.web), Shared Key and Bearer authentication, node states that advance on their
own clock, OData paging and filters, throttling and injected faults, all seeded so a run can be replayed::

    async with BatchEmulator(pools={"pool-a": 2000}, throttle_rps=300) as emu:
        async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
            report = await client.deallocate_pool("pool-a", wait=True)

The client package never imports this one.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Self

import attrs
from aiohttp import web

from .._auth import SharedKeyCredential
from ._app import Runtime, make_app
from ._config import DEFAULT_STATE_MIX, EmulatorConfig, FaultConfig
from ._state import INVALID_STATE_CODE, BatchState
from ._stats import EmulatorStats

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from datetime import datetime
    from types import TracebackType

__all__ = [
    "DEFAULT_STATE_MIX",
    "INVALID_STATE_CODE",
    "BatchEmulator",
    "EmulatorConfig",
    "EmulatorStats",
    "FaultConfig",
    "NodeView",
]


@attrs.frozen(kw_only=True)
class NodeView:
    """A node as the emulator sees it now."""

    pool_id: str
    id: str
    state: str
    state_transition_time: datetime
    deallocate_calls: int


class BatchEmulator:
    """The emulator as an ``async with`` object; binds 127.0.0.1 on a free port unless told otherwise.

    Args:
        config: The configuration; or give its fields as keyword arguments.
        host: The address to bind.
        port: The port (0: a free one, read back after binding).
        ssl_context: Serve https with this server context (e.g. a certificate made by ``trustme``).
        clock: Monotonic seconds, driving node states and the token bucket.
        wall_clock: Epoch seconds, for dates.
        **fields: ``EmulatorConfig`` fields, when ``config`` is not given.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **fields: Any,  # noqa: ANN401 (the EmulatorConfig fields, checked by it)
    ) -> None:
        if config is not None and fields:
            raise TypeError("give either config or its fields, not both")
        self.config = config if config is not None else EmulatorConfig(**fields)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._clock = clock
        self._state = BatchState(self.config, clock=clock, wall_clock=wall_clock)
        self.stats = EmulatorStats(self._state)
        self._runtime = Runtime(self._state, self.stats, clock=clock, wall_clock=wall_clock)
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    def __repr__(self) -> str:
        return f"BatchEmulator(endpoint={self.endpoint!r}, pools={dict(self.config.pools)!r})"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and serve."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(
            make_app(self._runtime), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        server = site._server  # noqa: SLF001 (aiohttp keeps the bound socket there; test_utils does the same)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self._port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.endpoint = f"{'https' if self._ssl is not None else 'http'}://{host}:{port}"
        self._runtime.endpoint = self.endpoint

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def account_name(self) -> str:
        """The account name Shared Key requests must use."""
        return self.config.account_name

    @property
    def account_key(self) -> str:
        """The account key (base64) Shared Key requests are signed with."""
        return self.config.key

    def credential(self) -> SharedKeyCredential:
        """A Shared Key credential the emulator accepts."""
        return SharedKeyCredential(self.account_name, self.account_key)

    def update(self, **changes: Any) -> None:  # noqa: ANN401 (EmulatorConfig fields, checked by it)
        """Replace configuration fields while running (throttling, faults, delays...); nodes are kept."""
        if "pools" in changes or "seed" in changes:
            raise ValueError("pools and seed are fixed once the emulator exists")
        self.config = attrs.evolve(self.config, **changes)
        self._runtime.apply(self.config)

    def node(self, pool_id: str, node_id: str) -> NodeView:
        """One node's current view.

        Raises:
            KeyError: no such pool or node.
        """
        node = self._state.pools[pool_id].by_id[node_id]
        return self._view(pool_id, node)

    def nodes(self, pool_id: str) -> list[NodeView]:
        """Every node of a pool, in order."""
        return [self._view(pool_id, node) for node in self._state.pools[pool_id].nodes]

    def node_ids(self, pool_id: str, states: set[str] | frozenset[str] | None = None) -> list[str]:
        """The pool's node ids, optionally only those in ``states`` now."""
        now = self._clock()
        return [n.id for n in self._state.pools[pool_id].nodes if states is None or n.state_at(now) in states]

    def _view(self, pool_id: str, node: Any) -> NodeView:  # noqa: ANN401 (the private Node)
        from datetime import UTC, datetime  # noqa: PLC0415

        now = self._clock()
        changed = self._state.wall_clock() - now + node.changed_at(now)
        return NodeView(
            pool_id=pool_id,
            id=node.id,
            state=node.state_at(now),
            state_transition_time=datetime.fromtimestamp(changed, UTC),
            deallocate_calls=node.calls,
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for starting the emulator as a process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
