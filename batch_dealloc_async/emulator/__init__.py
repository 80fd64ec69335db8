"""A local Azure Batch service for the nodes operations this library uses: the default for demos and tests.

Real HTTP on loopback (aiohttp.web), Shared Key and Bearer authentication, node states that advance on their
own clock, OData paging and filters, throttling (a token bucket, optionally on a schedule, and random 429/503s),
outage windows and injected faults, all seeded so a run can be replayed::

    async with BatchEmulator(pools={"pool-a": 2000}, throttle_rps=300) as emu:
        async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
            report = await client.deallocate_pool("pool-a", wait=True)

The throttle schedule, the outages and the stats' timeline count run time from the first Deallocate or Start
request (see :class:`EmulatorConfig`). The client package never imports this one.
"""

from __future__ import annotations

from ._config import DEFAULT_STATE_MIX, EmulatorConfig, FaultConfig, Outage
from ._emulator import BatchEmulator, NodeView
from ._emulator import free_port as free_port  # importable as before, not part of the API
from ._main import add_arguments, config_from, serve
from ._state import INVALID_STATE_CODE
from ._stats import EmulatorStats, Timeline

__all__ = [
    "DEFAULT_STATE_MIX",
    "INVALID_STATE_CODE",
    "BatchEmulator",
    "EmulatorConfig",
    "EmulatorStats",
    "FaultConfig",
    "NodeView",
    "Outage",
    "Timeline",
    "add_arguments",
    "config_from",
    "serve",
]
