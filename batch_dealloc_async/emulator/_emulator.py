"""The emulator as an ``async with`` object: the aiohttp runner, its listening socket, the outage watcher."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Final, Self

import attrs
from aiohttp import web

from .._auth import SharedKeyCredential
from ._app import Runtime, make_app
from ._config import EmulatorConfig
from ._state import BatchState
from ._stats import EmulatorStats

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable
    from datetime import datetime
    from types import TracebackType

__all__ = ["BatchEmulator", "NodeView", "free_port"]

_log = logging.getLogger(__name__)

#: The outage watcher looks at the clock at least this often (real seconds), so it follows a clock that jumps.
_POLL: Final = 0.05


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
        clock: Monotonic seconds, driving node states, the token bucket, run time and the outages.
        wall_clock: Epoch seconds, for dates.
        sleep: Waits for ``latency_before``, ``latency`` and the slow fault (give a fake clock's, with ``clock``,
            to drive them in tests).
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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._runtime = Runtime(self._state, self.stats, clock=clock, wall_clock=wall_clock, sleep=sleep)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._bound_port: int | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
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
        self._runner = runner
        try:
            await self._listen()
        except BaseException:
            self._runner = None
            await runner.cleanup()
            raise
        addresses = runner.addresses  # (host, port, ...) of each listening socket
        self._bound_port = int(addresses[0][1]) if addresses else self._port  # a refuse outage reuses it
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.endpoint = f"{'https' if self._ssl is not None else 'http'}://{host}:{self._bound_port}"
        self._runtime.endpoint = self.endpoint
        self._wake = asyncio.Event()
        self._runtime.wake = self._wake.set
        self._watcher = asyncio.get_running_loop().create_task(self._watch_outages(), name="emulator-outages")

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        watcher, self._watcher = self._watcher, None
        error: BaseException | None = None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait([watcher])
            error = None if watcher.cancelled() else watcher.exception()  # a bug in the watcher: raised below
        runner, self._runner = self._runner, None
        self._site = None
        self._bound_port = None
        if runner is not None:
            await runner.cleanup()
        if error is not None:
            raise error

    @property
    def listening(self) -> bool:
        """Whether the emulator accepts connections (not before ``start``, after ``close``, or in a refuse outage)."""
        return self._site is not None

    async def _listen(self) -> None:
        """Bind (again, on the same port after a refuse outage) and serve."""
        assert self._runner is not None  # noqa: S101 (only called while running)
        port = self._port if self._bound_port is None else self._bound_port
        site = web.TCPSite(self._runner, self._host, port, reuse_address=True, ssl_context=self._ssl)
        try:
            await site.start()
        except BaseException:
            await site.stop()  # the runner registered it before binding
            raise
        self._site = site

    async def _refuse(self) -> None:
        """Close the listening socket(s) and abort the open connections (their requests are cut off)."""
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()

    async def _watch_outages(self) -> None:
        """Refuse connections during refuse windows and listen again after them.

        Wakes at the next edge of a window, when run time 0 is set or the configuration changes, and every
        ``_POLL`` seconds while a window lies ahead (so an injected clock that jumps is followed too).
        """
        while True:
            self._wake.clear()
            refusing, wait = self._runtime.refusal(self._clock())
            if refusing and self._site is not None:
                await self._refuse()
            elif not refusing and self._site is None:
                try:
                    await self._listen()
                except OSError as exc:
                    _log.warning("the emulator cannot listen again on port %s: %s; retrying", self._port, exc)
                    wait = _POLL
            try:
                async with asyncio.timeout(None if wait is None else min(wait, _POLL)):
                    await self._wake.wait()
            except TimeoutError:
                pass

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
        """Replace configuration fields while running (throttling, faults, delays...); nodes are kept.

        Run time 0 is reset: the next Deallocate or Start starts the clock of the throttle schedule, the outages
        and a new timeline again (an outage in force ends, and a refusing emulator listens again).
        """
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
