"""Starting nodes against the emulator over real sockets: one node, node lists, whole pools, and every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from batch_dealloc_async import (
    BatchDeallocClient,
    BatchNodesClient,
    ConflictError,
    NodeOutcome,
    NodeStateError,
    OutcomeStatus,
    RetryPolicy,
    SharedKeyCredential,
    StartResult,
)
from batch_dealloc_async.emulator import INVALID_STATE_CODE, BatchEmulator, FaultConfig

FAST_RETRY = RetryPolicy(backoff_base=0.01, backoff_cap=0.05, max_retry_after=0.2)
MIX = {"deallocated": 0.5, "idle": 0.2, "running": 0.1, "offline": 0.1, "unusable": 0.1}
S = OutcomeStatus


def emulator(**kwargs) -> BatchEmulator:
    kwargs.setdefault("pools", {"p": 30})
    kwargs.setdefault("seed", 17)
    kwargs.setdefault("state_mix", MIX)
    kwargs.setdefault("deallocate_delay", 0.2)
    kwargs.setdefault("start_delay", 0.2)
    return BatchEmulator(**kwargs)


def client_for(emu: BatchEmulator, **kwargs) -> BatchDeallocClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return BatchDeallocClient(emu.endpoint, emu.credential(), **kwargs)


def our_tasks() -> list[asyncio.Task[object]]:
    """Tasks the library started (all are named batch-dealloc-*) that are still running."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("batch-dealloc") and not t.done()]


# ----------------------------------------------------------------------------------------------- one node


@pytest.mark.parametrize("timeout", [None, 5])
async def test_start_node_accepted_with_every_header(timeout) -> None:
    """A deallocated node's start is a 202: a StartResult with every header, one attempt, the node starting."""
    async with emulator() as emu:
        node_id = emu.node_ids("p", {"deallocated"})[0]
        async with client_for(emu) as client:
            result = await client.start_node("p", node_id, timeout=timeout)
            assert client.stats.accepted == 1
        assert isinstance(result, StartResult)
        assert (result.pool_id, result.node_id, result.attempts, result.reconciled) == ("p", node_id, 1, False)
        assert result.request_id
        assert result.etag
        assert result.last_modified is not None
        assert result.last_modified.tzinfo is not None
        assert result.data_service_id == f"{emu.endpoint}/pools/p/nodes/{node_id}"
        assert emu.node("p", node_id).state == "starting"
        assert emu.stats.count("start", 202) == 1
        assert emu.stats.sdk_timeout_signatures == 0


@pytest.mark.parametrize("state", ["idle", "running", "offline", "unusable"])
async def test_start_node_not_deallocated_is_one_conflict(state) -> None:
    """A node in another state: ConflictError on the first attempt, exactly one request, no Get Node."""
    async with emulator() as emu:
        node_id = emu.node_ids("p", {state})[0]
        async with client_for(emu) as client:
            with pytest.raises(ConflictError) as info:
                await client.start_node("p", node_id)
        assert info.value.attempts == 1
        assert info.value.code == INVALID_STATE_CODE
        assert emu.stats.count("start") == 1
        assert emu.stats.count("get") == 0
        assert emu.node("p", node_id).state == state


@pytest.mark.parametrize(
    ("pool_id", "node_id", "timeout"),
    [
        ("", "n", None),
        ("p", "a/b", None),
        ("p" * 65, "n", None),
        ("p", "x" * 257, None),
        ("p", "..", None),
        ("p", "n", 0),
        ("p", "n", 31),
    ],
)
async def test_start_node_bad_arguments_send_nothing(pool_id, node_id, timeout) -> None:
    """Bad ids and timeouts raise ValueError; the emulator sees no request."""
    async with emulator() as emu:
        async with client_for(emu) as client:
            with pytest.raises(ValueError, match=r"pool_id|node_id|timeout"):
                await client.start_node(pool_id, node_id, timeout=timeout)
        assert emu.stats.total == 0


@pytest.mark.parametrize("start_delay", [0.0, 5.0])
async def test_reset_after_the_start_is_reconciled(start_delay) -> None:
    """The start happened but its answer was lost: the retry's 409 is confirmed by Get Node (starting or idle)."""
    async with emulator(start_delay=start_delay) as emu:
        node_id = emu.node_ids("p", {"deallocated"})[0]
        emu.update(faults=FaultConfig(reset_after=1.0, operations={"start"}))
        async with client_for(emu) as client:
            result = await client.start_node("p", node_id)
            assert client.stats.accepted == 1
        assert result.reconciled is True
        assert result.attempts == 2
        assert emu.stats.faults["reset_after"] == 1
        assert emu.stats.count("start", 409) == 1
        assert emu.stats.count("get", 200) == 1
        assert emu.node("p", node_id).state == ("idle" if start_delay == 0 else "starting")


# ------------------------------------------------------------------------------------------ every outcome


async def test_accepted_without_wait() -> None:
    """start_nodes without wait: each deallocated node accepted, state starting, with its StartResult."""
    async with emulator() as emu:
        ids = emu.node_ids("p", {"deallocated"})[:5]
        async with client_for(emu) as client:
            report = await client.start_nodes("p", ids)
        assert sorted(o.node_id for o in report.outcomes) == sorted(ids)
        assert {o.status for o in report.outcomes} == {S.ACCEPTED}
        assert {o.state for o in report.outcomes} == {"starting"}
        assert {o.action for o in report.outcomes} == {"start"}
        assert all(isinstance(o.result, StartResult) and o.attempts == 1 for o in report.outcomes)
        assert report.ok
        assert report.poll_rounds == 0
        assert {emu.node("p", n).state for n in ids} == {"starting"}


async def test_started_with_wait_only_once_idle() -> None:
    """wait=True: each node ends started, state idle; when its outcome arrives the emulator already shows idle."""
    async with emulator() as emu:
        ids = emu.node_ids("p", {"deallocated"})[:5]
        seen_then: dict[str, str] = {}

        def record(outcome: NodeOutcome) -> None:
            seen_then[outcome.node_id] = emu.node("p", outcome.node_id).state

        async with client_for(emu) as client:
            report = await client.start_nodes("p", ids, wait=True, wait_timeout=30, on_outcome=record)
        assert {o.status for o in report.outcomes} == {S.STARTED}
        assert {o.state for o in report.outcomes} == {"idle"}
        assert seen_then == dict.fromkeys(ids, "idle")
        assert report.poll_rounds >= 1
        assert report.ok


async def test_pool_mode_skips_nodes_not_deallocated_with_their_state() -> None:
    """start_pool: deallocated nodes accepted; every other node skipped with the state the emulator shows."""
    async with emulator() as emu:
        deallocated = set(emu.node_ids("p", {"deallocated"}))
        others = {n.id: n.state for n in emu.nodes("p") if n.id not in deallocated}
        assert deallocated
        assert set(others.values()) >= {"idle", "offline"}
        async with client_for(emu) as client:
            report = await client.start_pool("p")
        assert len(report.outcomes) == 30
        assert {o.node_id for o in report.by_status(S.ACCEPTED)} == deallocated
        assert {o.node_id: o.state for o in report.by_status(S.SKIPPED)} == others
        assert all(o.error is None and o.attempts == 0 for o in report.by_status(S.SKIPPED))
        assert emu.stats.count("start") == len(deallocated)  # nothing sent for a skipped node
        assert report.ok


async def test_node_list_409_then_skipped_and_404_failed() -> None:
    """In a node list, a node in another state is skipped (after its 409) with its state; an unknown one fails."""
    async with emulator() as emu:
        deallocated = emu.node_ids("p", {"deallocated"})[:2]
        idle = emu.node_ids("p", {"idle"})[0]
        unusable = emu.node_ids("p", {"unusable"})[0]
        async with client_for(emu) as client:
            report = await client.start_nodes("p", [*deallocated, idle, unusable, "no-such-node"])
        by_id = {o.node_id: o for o in report.outcomes}
        assert [by_id[n].status for n in deallocated] == [S.ACCEPTED, S.ACCEPTED]
        assert (by_id[idle].status, by_id[idle].state) == (S.SKIPPED, "idle")
        assert (by_id[unusable].status, by_id[unusable].state) == (S.SKIPPED, "unusable")
        assert isinstance(by_id[idle].error, ConflictError)
        assert by_id[idle].attempts == 1
        assert by_id["no-such-node"].status is S.FAILED
        assert by_id["no-such-node"].error_code == "NodeNotFound"
        assert report.failures_by_code == {"NodeNotFound": 1}
        assert not report.ok
        assert emu.stats.count("start", 409) == 2
        assert emu.stats.count("start", 404) == 1


async def test_start_task_failure_ends_failed_with_node_state_error() -> None:
    """start_task_failure=1.0: with wait, every node ends failed, starttaskfailed, NodeStateError StartTaskFailed."""
    async with emulator(start_task_failure=1.0) as emu:
        ids = emu.node_ids("p", {"deallocated"})[:4]
        async with client_for(emu) as client:
            report = await client.start_nodes("p", ids, wait=True, wait_timeout=30)
        assert {o.status for o in report.outcomes} == {S.FAILED}
        assert {o.state for o in report.outcomes} == {"starttaskfailed"}
        for outcome in report.outcomes:
            assert isinstance(outcome.error, NodeStateError)
            assert outcome.error.code == "StartTaskFailed"
            assert outcome.to_dict()["error_code"] == "StartTaskFailed"
            assert outcome.to_dict()["action"] == "start"
        assert report.failures_by_code == {"StartTaskFailed": 4}
        assert report.to_dict()["failures_by_code"] == {"StartTaskFailed": 4}
        assert not report.ok
        assert {emu.node("p", n).state for n in ids} == {"starttaskfailed"}


class JumpingClock:
    """The emulator's clock: real time, plus ``jump`` seconds once ``starts`` start requests have been counted.

    Nodes started with a long ``start_delay`` then sit in the second half of their start (waitingforstarttask when
    their start task is to fail) for the rest of the test, without the test waiting for it.
    """

    def __init__(self, jump: float, starts: int) -> None:
        self.jump = jump
        self.starts = starts
        self.emu: BatchEmulator | None = None

    def __call__(self) -> float:
        started = self.emu is not None and self.emu.stats.count("start") >= self.starts
        return time.monotonic() + (self.jump if started else 0.0)


@pytest.mark.parametrize(("failure", "jump", "passing"), [(0.0, 0.0, "starting"), (1.0, 30.0, "waitingforstarttask")])
async def test_wait_keeps_a_node_pending_in_a_passing_state_until_timed_out(failure, jump, passing) -> None:
    """A node seen starting or waitingforstarttask is not done: at the deadline it is timed_out with that state."""
    clock = JumpingClock(jump, starts=3)
    async with emulator(start_delay=50.0, start_task_failure=failure, clock=clock) as emu:
        clock.emu = emu
        ids = emu.node_ids("p", {"deallocated"})[:3]
        async with client_for(emu) as client:
            report = await client.start_nodes("p", ids, wait=True, deadline=1.6)
        assert {o.status for o in report.outcomes} == {S.TIMED_OUT}
        assert {o.state for o in report.outcomes} == {passing}
        assert {emu.node("p", n).state for n in ids} == {passing}
        assert report.poll_rounds >= 1
        assert report.failures_by_code == {"ClientTimeout": 3}


async def test_deadline_before_the_input_is_read_is_not_attempted() -> None:
    """An input slower than the deadline: its nodes end not_attempted, and no start is sent."""
    async with emulator() as emu:
        ids = emu.node_ids("p", {"deallocated"})[:3]

        async def slow_ids():
            await asyncio.sleep(0.5)
            for node_id in ids:
                yield node_id

        async with client_for(emu) as client:
            report = await client.start_nodes("p", slow_ids(), deadline=0.1)
        assert sorted(o.node_id for o in report.outcomes) == sorted(ids)
        assert {o.status for o in report.outcomes} == {S.NOT_ATTEMPTED}
        assert emu.stats.count("start") == 0
        await asyncio.sleep(0)
        assert our_tasks() == []


async def test_authentication_failure_stops_the_run() -> None:
    """A refused key fails the first nodes and stops: the rest are not_attempted."""
    async with emulator(pools={"p": 100}, state_mix={"deallocated": 1.0}) as emu:
        wrong = SharedKeyCredential(emu.account_name, "AAAA" + emu.account_key[4:])
        async with BatchDeallocClient(emu.endpoint, wrong, retry=FAST_RETRY, max_concurrency=2) as client:
            report = await client.start_nodes("p", emu.node_ids("p"))
        assert len(report.outcomes) == 100
        assert report.counts["failed"] + report.counts["not_attempted"] == 100
        assert report.counts["not_attempted"] >= 90
        assert set(report.failures_by_code) == {"AuthenticationFailed"}
        assert all(o.error is not None for o in report.by_status(S.NOT_ATTEMPTED))
        assert emu.node_ids("p", {"deallocated"}) == emu.node_ids("p")


# --------------------------------------------------------------------------------------------- round trip


async def test_pool_round_trip_deallocate_then_start() -> None:
    """deallocate_pool(wait) then start_pool(wait): every deallocated node ends started and idle, one outcome each."""
    async with emulator(pools={"p": 40}, state_mix={"idle": 0.6, "running": 0.4}) as emu:
        async with BatchNodesClient(emu.endpoint, emu.credential(), retry=FAST_RETRY) as client:
            down = await client.deallocate_pool("p", wait=True, wait_timeout=30)
            up = await client.start_pool("p", wait=True, wait_timeout=30)
        assert Counter(o.node_id for o in down.outcomes) == Counter(dict.fromkeys(emu.node_ids("p"), 1))
        assert Counter(o.node_id for o in up.outcomes) == Counter(dict.fromkeys(emu.node_ids("p"), 1))
        deallocated = {o.node_id for o in down.by_status(S.DEALLOCATED)}
        assert deallocated == set(emu.node_ids("p"))
        assert {o.node_id for o in up.by_status(S.STARTED)} == deallocated
        assert {o.action for o in down.outcomes} == {"deallocate"}
        assert {o.action for o in up.outcomes} == {"start"}
        assert down.ok
        assert up.ok
        assert emu.node_ids("p", {"idle"}) == emu.node_ids("p")
        assert emu.stats.count("start", 202) == 40


async def test_start_pools_lists_each_pool_and_reports_a_missing_one() -> None:
    """start_pools over two pools and a missing one: one report, the missing pool in pool_errors."""
    async with emulator(pools={"a": 20, "b": 20}, start_delay=30.0) as emu:  # still starting when counted
        async with client_for(emu) as client:
            report = await client.start_pools(["a", "missing", "b"])
        assert set(report.pool_errors) == {"missing"}
        assert len(report.outcomes) == 40
        started = {o.node_id for o in report.by_status(S.ACCEPTED)}
        assert started == set(emu.node_ids("a", {"starting"})) | set(emu.node_ids("b", {"starting"}))


# ------------------------------------------------------------------------------------------------ streams


@pytest.mark.parametrize("wait", [False, True])
async def test_iter_start_nodes_streams_and_closes_cleanly(wait) -> None:
    """iter_start_nodes yields one outcome per node; leaving early stops the run with no task left running."""
    async with emulator(pools={"p": 60}, state_mix={"deallocated": 1.0}) as emu:
        ids = emu.node_ids("p")
        async with client_for(emu) as client:
            streamed = [o async for o in client.iter_start_nodes("p", iter(ids[:20]), wait=wait, wait_timeout=30)]
            assert sorted(o.node_id for o in streamed) == sorted(ids[:20])
            assert {o.status for o in streamed} == {S.STARTED if wait else S.ACCEPTED}
            assert {o.action for o in streamed} == {"start"}
            async with contextlib.aclosing(client.iter_start_nodes("p", ids[20:], wait=wait)) as outcomes:
                async for _ in outcomes:
                    break
            await asyncio.sleep(0)
            assert our_tasks() == []
            assert client.limiter.in_flight == 0
        await asyncio.sleep(0)
        assert our_tasks() == []
