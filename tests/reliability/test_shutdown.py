"""Clean shutdown: leaving early leaves no task, session or connector behind; the same under uvloop.

The whole suite runs with warnings as errors, so an unclosed session or connector (ResourceWarning) or an
unraisable exception fails the test that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from batch_dealloc_async import BatchDeallocClient
from batch_dealloc_async.emulator import BatchEmulator, FaultConfig


def our_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("batch-dealloc") and not t.done()]


async def test_leaving_async_with_mid_run_cleans_up() -> None:
    """An error in the caller's block while a bulk run is under way: the run is cancelled, the session closed."""
    faults = FaultConfig(latency=0.05, operations={"deallocate"})
    async with BatchEmulator(pools={"p": 500}, seed=2, faults=faults) as emu:
        client = BatchDeallocClient(emu.endpoint, emu.credential(), max_concurrency=8)
        with pytest.raises(ExceptionGroup) as info:
            async with client, asyncio.TaskGroup() as group:
                group.create_task(client.deallocate_pool("p"))
                await asyncio.sleep(0.3)
                raise RuntimeError("the caller gives up")
        assert info.group_contains(RuntimeError)
        assert client.session is not None
        assert client.session.closed
        assert our_tasks() == []


async def test_cancel_while_waiting_for_deallocation() -> None:
    """Cancelling during wait=True's polling ends cleanly too."""
    async with BatchEmulator(pools={"p": 50}, seed=2, deallocate_delay=30) as emu:
        async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
            task = asyncio.create_task(client.deallocate_pool("p", wait=True))
            await asyncio.sleep(1.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.limiter.in_flight == 0
        assert our_tasks() == []


def test_under_uvloop() -> None:
    """A bulk run with wait, and the streaming iterator closed early, work the same on uvloop."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop comes with the 'test' extra (not on Windows)")

    async def scenario() -> tuple[int, int, str]:
        async with BatchEmulator(pools={"p": 300}, seed=4, deallocate_delay=0.3) as emu:
            async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
                report = await client.deallocate_pool("p", wait=True, deadline=30)
                async with contextlib.aclosing(client.iter_deallocate_nodes("p", emu.node_ids("p"))) as outcomes:
                    async for _ in outcomes:
                        break
                loop_name = type(asyncio.get_running_loop()).__module__
        assert our_tasks() == []
        return len(report.outcomes), report.counts["deallocated"], loop_name

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        nodes, deallocated, loop_module = runner.run(scenario())
    assert loop_module.startswith("uvloop")
    assert nodes == 300
    assert deallocated > 0
