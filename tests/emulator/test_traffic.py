"""Traffic control over real sockets: random 429/503s, throttle schedule, outages, run time 0, timeline.

Also latency before processing and start-task failures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from yarl import URL

from batch_dealloc_async.emulator import BatchEmulator, EmulatorConfig, FaultConfig, Outage, Timeline
from tests.conftest import FakeClock
from tests.emulator.test_app import POOL, Reply, assert_error, node_path, signed

NODES = f"/pools/{POOL}/nodes"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def idle(emu: BatchEmulator, index: int = 0) -> str:
    return emu.node_ids(POOL, {"idle"})[index]


async def deallocate(session: aiohttp.ClientSession, emu: BatchEmulator, node_id: str) -> Reply:
    return await signed(session, emu, "POST", node_path(node_id) + "/deallocate")


async def list_nodes(session: aiohttp.ClientSession, emu: BatchEmulator) -> Reply:
    return await signed(session, emu, "GET", NODES)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (the emulator's outage watcher acts in the background)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


# ------------------------------------------------------------------------------------- random 429 and 503


@pytest.mark.parametrize("retry_after", [None, 7])
async def test_server_busy_with_and_without_retry_after(session, retry_after):
    """server_busy answers 503 ServerBusy unprocessed, with Retry-After only when server_busy_retry_after is set."""
    faults = FaultConfig(server_busy=1.0, server_busy_retry_after=retry_after)
    async with BatchEmulator(pools={POOL: 10}, state_mix={"idle": 1.0}, faults=faults) as emu:
        node_id = idle(emu)
        reply = await deallocate(session, emu, node_id)
        assert_error(reply, 503, "ServerBusy")
        assert reply.headers.get("Retry-After") == (None if retry_after is None else str(retry_after))
        assert emu.node(POOL, node_id).state == "idle"
        assert emu.stats.deallocate_calls() == {}
        assert emu.stats.throttled == 1
        assert emu.stats.faults == {"server_busy": 1}


async def test_too_many_requests_carries_retry_after_1(session):
    """too_many_requests answers 429 TooManyRequests with Retry-After: 1 (the default), unprocessed."""
    async with BatchEmulator(pools={POOL: 10}, state_mix={"idle": 1.0}) as emu:
        emu.update(faults=FaultConfig(too_many_requests=1.0))
        node_id = idle(emu)
        reply = await deallocate(session, emu, node_id)
        assert_error(reply, 429, "TooManyRequests")
        assert reply.headers["Retry-After"] == "1"
        assert emu.node(POOL, node_id).state == "idle"
        assert emu.stats.throttled == 1
        assert emu.stats.requests[("deallocate", 429)] == 1


async def test_throttle_faults_are_seeded_and_only_for_their_operations(session):
    """The same seed draws the same 429/503 sequence; operations outside FaultConfig.operations are spared."""
    faults = FaultConfig(server_busy=0.3, too_many_requests=0.3, operations={"list"})
    statuses: list[list[int]] = []
    for _ in range(2):
        async with BatchEmulator(pools={POOL: 5}, seed=3, faults=faults) as emu:
            statuses.append([(await list_nodes(session, emu)).status for _ in range(30)])
            got = await signed(session, emu, "GET", node_path(emu.node_ids(POOL)[0]))
            assert got.status == 200
            assert emu.stats.throttled == sum(s != 200 for s in statuses[-1])
    assert statuses[0] == statuses[1]
    assert set(statuses[0]) == {200, 429, 503}


# ------------------------------------------------------------------------------------------ throttle schedule


async def test_schedule_changes_the_bucket_rate(session):
    """At a step the bucket fills at the new rate, keeping its tokens (accrued at the old rate until the step)."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 10},
        state_mix={"idle": 1.0},
        throttle_burst=3,
        throttle_schedule=((0, 0.1), (5, 0.2)),
        clock=clock.monotonic,
    ) as emu:
        assert (await deallocate(session, emu, idle(emu))).status == 202  # run time 0
        assert [(await list_nodes(session, emu)).status for _ in range(2)] == [200, 200]
        empty = await list_nodes(session, emu)
        assert_error(empty, 429, "TooManyRequests")
        assert empty.headers["Retry-After"] == "10"  # one token at 0.1/s
        clock.advance(5.0)
        later = await list_nodes(session, emu)
        assert_error(later, 429, "TooManyRequests")
        assert later.headers["Retry-After"] == "3"  # 0.5 token kept, the other half at 0.2/s: 2.5 s
        clock.advance(2.5)
        assert (await list_nodes(session, emu)).status == 200
        assert [(t, rate) for t, *_, rate in emu.stats.timeline.rows()] == [(0.0, 0.1), (5.0, 0.2), (7.5, 0.2)]


async def test_fixed_window_grants_its_quota_then_nothing_until_it_turns(session):
    """throttle_window: at most the rate times the window per window; Retry-After says when the window turns."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, throttle_rps=2.0, throttle_window=1.0, clock=clock.monotonic
    ) as emu:
        assert [(await list_nodes(session, emu)).status for _ in range(2)] == [200, 200]
        clock.advance(0.4)
        spent = await list_nodes(session, emu)
        assert_error(spent, 429, "TooManyRequests")
        assert spent.headers["Retry-After"] == "1"  # 0.6 s to the next window, in whole seconds
        clock.advance(0.6)
        assert [(await list_nodes(session, emu)).status for _ in range(3)] == [200, 200, 429]
        assert emu.stats.throttled == 2


async def test_sliding_window_grants_as_the_grants_of_a_window_ago_expire(session):
    """throttle_sliding: a request is granted when fewer than the quota were granted in the window before it."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 10},
        state_mix={"idle": 1.0},
        throttle_rps=2.0,
        throttle_window=1.0,
        throttle_sliding=True,
        clock=clock.monotonic,
    ) as emu:
        assert (await list_nodes(session, emu)).status == 200  # at 0
        clock.advance(0.4)
        assert (await list_nodes(session, emu)).status == 200  # at 0.4
        assert_error(await list_nodes(session, emu), 429, "TooManyRequests")
        clock.advance(0.6)  # the grant at 0 has expired, the one at 0.4 has not
        assert [(await list_nodes(session, emu)).status for _ in range(2)] == [200, 429]
        clock.advance(0.4)  # the grant at 0.4 has expired
        assert (await list_nodes(session, emu)).status == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [({"throttle_window": 0.0}, "throttle_window"), ({"throttle_sliding": True}, "throttle_sliding")],
)
def test_window_is_validated(options, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(throttle_rps=10.0, **options)


async def test_schedule_unlimited_steps_and_override(session):
    """Before the first step and in a None step there is no limit; a schedule replaces throttle_rps."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 10},
        state_mix={"idle": 1.0},
        throttle_rps=0.001,
        throttle_burst=1,
        throttle_schedule=((2, 0.5), (4, None)),
        clock=clock.monotonic,
    ) as emu:
        assert (await deallocate(session, emu, idle(emu))).status == 202
        assert [(await list_nodes(session, emu)).status for _ in range(5)] == [200] * 5
        clock.advance(2.0)
        assert [(await list_nodes(session, emu)).status for _ in range(2)] == [200, 429]
        clock.advance(2.0)
        assert [(await list_nodes(session, emu)).status for _ in range(5)] == [200] * 5
        assert emu.stats.timeline.rows()[-1][-1] is None


@pytest.mark.parametrize(
    "schedule",
    [((1, 10), (1, 20)), ((5, 10), (2, 20)), ((-1, 10),), ((0, 0),), ((0, -5),), ((float("inf"), 1),)],
    ids=["repeated-time", "descending", "negative-time", "zero-rate", "negative-rate", "infinite-time"],
)
def test_schedule_is_validated(schedule):
    """Times must ascend from 0 and rates be positive (or None)."""
    with pytest.raises(ValueError, match="throttle_schedule"):
        EmulatorConfig(throttle_schedule=schedule)


# ---------------------------------------------------------------------------------------------------- outages


async def test_error_500_window(session):
    """In an error_500 window every operation is a 500 InternalError unprocessed; the window is in run time."""
    clock = FakeClock()
    outage = Outage(1.0, 2.0, "error_500")
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, outages=(outage,), clock=clock.monotonic
    ) as emu:
        first, node_id = idle(emu, 0), idle(emu, 1)
        clock.advance(1.5)  # the clock has not started: listing is served
        assert (await list_nodes(session, emu)).status == 200
        assert (await deallocate(session, emu, first)).status == 202  # run time 0
        clock.advance(1.0)
        replies = [
            await list_nodes(session, emu),
            await signed(session, emu, "GET", node_path(node_id)),
            await deallocate(session, emu, node_id),
            await signed(session, emu, "POST", node_path(node_id) + "/start"),
        ]
        for reply in replies:
            assert_error(reply, 500, "InternalError")
        assert emu.node(POOL, node_id).state == "idle"
        assert emu.stats.deallocate_calls() == {(POOL, first): 1}
        clock.advance(2.0)  # run time 3: the window is over
        assert (await deallocate(session, emu, node_id)).status == 202
        assert emu.stats.outage_requests == 4
        assert emu.stats.to_dict()["outage_requests"] == 4


async def test_refuse_window_refuses_connections_then_serves_on_the_same_port(session):
    """A refuse window closes the listener (connection refused) and aborts open connections; then it listens again."""
    clock = FakeClock()
    outage = Outage(1.0, 2.0, "refuse")
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, outages=(outage,), clock=clock.monotonic
    ) as emu:
        endpoint = emu.endpoint
        url = URL(endpoint)
        assert (await deallocate(session, emu, idle(emu, 0))).status == 202  # run time 0
        reader, writer = await asyncio.open_connection(url.host, url.port)  # an open, idle connection
        try:
            clock.advance(1.0)
            await until(lambda: not emu.listening)
            async with aiohttp.ClientSession() as fresh:  # a new connection, not one from a pool
                with pytest.raises(aiohttp.ClientConnectorError) as refused:
                    await list_nodes(fresh, emu)
            assert isinstance(refused.value.os_error, ConnectionRefusedError)
            async with asyncio.timeout(10):  # a guard, not a measurement
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""  # aborted by the emulator
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        clock.advance(2.0)
        await until(lambda: emu.listening)
        assert emu.endpoint == endpoint
        async with aiohttp.ClientSession() as fresh:
            assert (await list_nodes(fresh, emu)).status == 200


async def test_update_resets_run_time_0(session):
    """update() resets run time 0: the windows count again from the next deallocate, and a new timeline begins."""
    clock = FakeClock()
    outage = Outage(5.0, 5.0, "error_500")
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, outages=(outage,), clock=clock.monotonic
    ) as emu:
        first, second = idle(emu, 0), idle(emu, 1)
        assert (await deallocate(session, emu, first)).status == 202
        clock.advance(5.0)
        assert (await list_nodes(session, emu)).status == 500
        emu.update(deallocate_delay=1.0)
        assert (await list_nodes(session, emu)).status == 200  # no clock, no window
        assert (await deallocate(session, emu, second)).status == 202  # run time 0 again
        assert [row[:4] for row in emu.stats.timeline.rows()] == [(0.0, 1, 0, 0)]
        clock.advance(4.9)
        assert (await list_nodes(session, emu)).status == 200
        clock.advance(0.1)
        assert (await list_nodes(session, emu)).status == 500


async def test_update_ends_a_refuse_window(session):
    """update() during a refuse window resets run time 0, so the emulator listens again at once."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, outages=(Outage(0.0, 60.0, "refuse"),), clock=clock.monotonic
    ) as emu:
        with pytest.raises(aiohttp.ClientConnectionError):
            await deallocate(session, emu, idle(emu, 0))  # starts the clock inside the window: reset
        await until(lambda: not emu.listening)
        emu.update()
        await until(lambda: emu.listening)
        assert (await list_nodes(session, emu)).status == 200


@pytest.mark.parametrize(
    ("start", "duration", "kind"),
    [(-1.0, 1.0, "refuse"), (0.0, 0.0, "refuse"), (0.0, 1.0, "flood"), (float("nan"), 1.0, "error_500")],
)
def test_outage_is_validated(start, duration, kind):
    """An outage starts at >= 0, lasts > 0 seconds and is error_500 or refuse."""
    with pytest.raises(ValueError):
        Outage(start, duration, kind)


# --------------------------------------------------------------------------------------------- latency before


class Gate:
    """A sleep that records its delay and waits until the test opens the gate."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.open = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.open.wait()


async def test_latency_before_delays_processing(session):
    """latency_before holds a request before anything is processed; latency is waited after processing."""
    gate = Gate()
    faults = FaultConfig(latency_before=0.25, latency=0.5)
    async with BatchEmulator(pools={POOL: 10}, state_mix={"idle": 1.0}, faults=faults, sleep=gate.sleep) as emu:
        node_id = idle(emu)
        sent = asyncio.create_task(deallocate(session, emu, node_id))
        await until(lambda: gate.sleeps == [0.25])
        assert emu.node(POOL, node_id).state == "idle"
        assert emu.stats.deallocate_calls() == {}
        gate.open.set()
        reply = await sent
        assert reply.status == 202
        assert gate.sleeps == [0.25, 0.5]
        assert emu.node(POOL, node_id).state == "deallocating"


async def test_latency_before_on_the_emulators_clock(session):
    """With a fake clock's sleep, the change is stamped latency_before after the request came in."""
    clock = FakeClock()
    faults = FaultConfig(latency_before=0.25, latency=0.5)
    async with BatchEmulator(
        pools={POOL: 10}, state_mix={"idle": 1.0}, faults=faults, clock=clock.monotonic, sleep=clock.sleep
    ) as emu:
        node_id = idle(emu)
        sent_at = clock.monotonic()
        assert (await deallocate(session, emu, node_id)).status == 202
        assert clock.sleeps == [0.25, 0.5]
        assert emu._state.pools[POOL].by_id[node_id].changed == sent_at + 0.25


# --------------------------------------------------------------------------------------------------- timeline


async def test_timeline_counts_answers_by_class(session):
    """The timeline counts ok, throttled and error answers per bin of run time, with the rate in force."""
    clock = FakeClock()
    faults = FaultConfig(server_busy=1.0, operations={"get"})
    async with BatchEmulator(
        pools={POOL: 10},
        state_mix={"idle": 1.0},
        throttle_rps=1.0,
        throttle_burst=4,
        faults=faults,
        timeline_bin=1.0,
        clock=clock.monotonic,
    ) as emu:
        node_id = idle(emu)
        assert (await list_nodes(session, emu)).status == 200  # before run time 0: not on the timeline
        assert (await deallocate(session, emu, node_id)).status == 202
        assert (await deallocate(session, emu, node_id)).status == 409
        assert (await list_nodes(session, emu)).status == 200
        assert (await list_nodes(session, emu)).status == 429
        clock.advance(2.5)
        assert (await list_nodes(session, emu)).status == 200
        assert (await signed(session, emu, "GET", node_path(node_id))).status == 503  # server_busy
        assert (await signed(session, emu, "GET", node_path(node_id))).status == 429  # the bucket
        rows = [(0.0, 2, 1, 1, 1.0), (2.0, 1, 2, 0, 1.0)]
        assert emu.stats.timeline.rows() == rows
        async with session.get(emu.endpoint + "/_emulator/stats") as response:
            stats = await response.json()
        assert stats["timeline"] == {"bin": 1.0, "rows": [list(row) for row in rows]}
        assert stats["outage_requests"] == 0


def test_timeline_is_bounded():
    """Answers past the last bin are counted in it, and empty bins are left out."""
    timeline = Timeline(0.1, max_bins=3)
    timeline.add(0.05, 200, throttled=False, rate=None)
    timeline.add(3600.0, 503, throttled=True, rate=5.0)
    timeline.add(7200.0, -1, throttled=False, rate=5.0)
    assert timeline.rows() == [(0.0, 1, 0, 0, None), (0.2, 0, 1, 1, 5.0)]


# ---------------------------------------------------------------------------------------- start-task failures


async def test_started_nodes_fail_their_start_task(session):
    """With start_task_failure=1 a started node goes starting, waitingforstarttask, then starttaskfailed."""
    clock = FakeClock()
    async with BatchEmulator(
        pools={POOL: 4},
        state_mix={"deallocated": 1.0},
        start_delay=4.0,
        start_task_failure=1.0,
        clock=clock.monotonic,
    ) as emu:
        node_id = emu.node_ids(POOL)[0]
        assert (await signed(session, emu, "POST", node_path(node_id) + "/start")).status == 202
        seen = [emu.node(POOL, node_id).state]
        for _ in range(2):
            clock.advance(2.0)
            seen.append(emu.node(POOL, node_id).state)
        assert seen == ["starting", "waitingforstarttask", "starttaskfailed"]
        got = await signed(session, emu, "GET", node_path(node_id))
        assert got.json()["state"] == "starttaskfailed"
