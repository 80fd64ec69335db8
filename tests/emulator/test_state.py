"""The emulator's node model without HTTP: state rules, timing on a fake clock, filters, paging, seeds, tokens."""

from __future__ import annotations

import base64
import re

import pytest

from batch_dealloc_async.emulator import INVALID_STATE_CODE, EmulatorConfig
from batch_dealloc_async.emulator._state import (
    ALL_STATES,
    BatchState,
    ServiceFault,
    decode_skiptoken,
    encode_skiptoken,
    parse_state_filter,
)
from tests.conftest import FakeClock

NODE_ID = re.compile(r"^tvm-\d{10}_\d+-\d{8}t\d{6}z$")
POOL = "pool-a"


def make_state(clock: FakeClock, mix: dict[str, float] | None = None, *, count: int = 20, seed: int = 3, **fields):
    config = EmulatorConfig(
        pools={POOL: count},
        seed=seed,
        state_mix=mix or {"idle": 1.0},
        deallocate_delay=2.0,
        taskcompletion_delay=6.0,
        start_delay=3.0,
        **fields,
    )
    return BatchState(config, clock=clock.monotonic, wall_clock=clock.time)


def first_in(state: BatchState, wanted: str) -> str:
    now = state.clock()
    return next(n.id for n in state.pools[POOL].nodes if n.state_at(now) == wanted)


def state_of(state: BatchState, node_id: str) -> str:
    return state.node(POOL, node_id).state_at(state.clock())


# ------------------------------------------------------------------------------------------- transitions


@pytest.mark.parametrize("initial", ["idle", "running"])
@pytest.mark.parametrize("option", ["requeue", "terminate"])
def test_deallocate_goes_through_deallocating_for_deallocate_delay(clock, initial, option):
    """An idle or running node is deallocating until deallocate_delay has passed, then deallocated."""
    state = make_state(clock, {initial: 1.0})
    node_id = first_in(state, initial)
    node = state.deallocate(POOL, node_id, option)
    assert node.id == node_id
    assert state_of(state, node_id) == "deallocating"
    clock.advance(1.999)
    assert state_of(state, node_id) == "deallocating"
    clock.advance(0.001)
    assert state_of(state, node_id) == "deallocated"
    assert node.calls == 1


@pytest.mark.parametrize(
    ("initial", "option", "delay"),
    [
        ("running", "taskcompletion", 6.0),
        ("running", "retaineddata", 6.0),
        ("idle", "taskcompletion", 2.0),
        ("idle", "retaineddata", 2.0),
    ],
)
def test_taskcompletion_waits_for_tasks_only_on_a_running_node(clock, initial, option, delay):
    """taskcompletion/retaineddata on a running node take taskcompletion_delay; on an idle one deallocate_delay."""
    state = make_state(clock, {initial: 1.0})
    node_id = first_in(state, initial)
    state.deallocate(POOL, node_id, option)
    clock.advance(delay - 0.01)
    assert state_of(state, node_id) == "deallocating"
    clock.advance(0.01)
    assert state_of(state, node_id) == "deallocated"


def test_transition_bumps_version_and_records_change_time(clock):
    """A deallocate bumps the node's version (its ETag) and stamps the change at the current time."""
    state = make_state(clock)
    node = state.pools[POOL].nodes[0]
    version = node.version
    state.deallocate(POOL, node.id, "requeue")
    assert node.version == version + 1
    assert node.changed_at(clock.monotonic()) == clock.monotonic()
    clock.advance(5)
    assert node.changed_at(clock.monotonic()) == clock.monotonic() - 3  # the end of the 2 s transition


@pytest.mark.parametrize("wrong", sorted(ALL_STATES - {"idle", "running"}))
def test_deallocate_in_a_wrong_state_is_a_409(clock, wrong):
    """Deallocating a node that is not idle or running raises a 409 with the invalid-state code and its state."""
    state = make_state(clock, {wrong: 1.0})
    node_id = first_in(state, wrong)
    with pytest.raises(ServiceFault) as caught:
        state.deallocate(POOL, node_id, "requeue")
    assert caught.value.status == 409
    assert caught.value.code == INVALID_STATE_CODE
    assert caught.value.values == {"NodeState": wrong}
    assert state_of(state, node_id) == wrong
    assert state.node(POOL, node_id).calls == 1  # the request reached the node


def test_second_deallocate_while_deallocating_is_a_409(clock):
    """A repeated deallocate during the transition is refused and does not restart it."""
    state = make_state(clock)
    node_id = first_in(state, "idle")
    state.deallocate(POOL, node_id, "requeue")
    clock.advance(1.5)
    with pytest.raises(ServiceFault) as caught:
        state.deallocate(POOL, node_id, "requeue")
    assert (caught.value.status, caught.value.code) == (409, INVALID_STATE_CODE)
    clock.advance(0.5)
    assert state_of(state, node_id) == "deallocated"


def test_start_from_deallocated_goes_through_starting_to_idle(clock):
    """Start moves a deallocated node to starting for start_delay, then to idle."""
    state = make_state(clock, {"deallocated": 1.0})
    node_id = first_in(state, "deallocated")
    state.start(POOL, node_id)
    assert state_of(state, node_id) == "starting"
    clock.advance(2.99)
    assert state_of(state, node_id) == "starting"
    clock.advance(0.01)
    assert state_of(state, node_id) == "idle"


def test_failed_start_task_goes_through_waitingforstarttask_to_starttaskfailed(clock):
    """With start_task_failure=1 a started node is starting, then waitingforstarttask, then starttaskfailed."""
    state = make_state(clock, {"deallocated": 1.0}, start_task_failure=1.0)
    node_id = first_in(state, "deallocated")
    started = clock.monotonic()
    node = state.start(POOL, node_id)
    assert state_of(state, node_id) == "starting"
    clock.advance(1.49)
    assert state_of(state, node_id) == "starting"
    clock.advance(0.01)
    assert state_of(state, node_id) == "waitingforstarttask"
    assert node.changed_at(clock.monotonic()) == started + 1.5
    clock.advance(1.49)
    assert state_of(state, node_id) == "waitingforstarttask"
    clock.advance(0.01)
    assert state_of(state, node_id) == "starttaskfailed"
    assert node.changed_at(clock.monotonic()) == started + 3.0
    with pytest.raises(ServiceFault) as caught:
        state.deallocate(POOL, node_id, "requeue")
    assert caught.value.values == {"NodeState": "starttaskfailed"}


def test_start_task_failure_is_a_seeded_share(clock):
    """start_task_failure fails about that share of started nodes, the same ones for the same seed."""

    def failed(seed: int) -> list[int]:
        state = make_state(clock, {"deallocated": 1.0}, count=400, seed=seed, start_task_failure=0.25)
        for node in state.pools[POOL].nodes:
            state.start(POOL, node.id)
        clock.advance(3.0)
        return [n.index for n in state.pools[POOL].nodes if state_of(state, n.id) == "starttaskfailed"]

    first = failed(5)
    assert 0.15 < len(first) / 400 < 0.35
    assert failed(5) == first
    assert failed(6) != first


def test_deallocate_then_start_round_trip(clock):
    """A deallocated node can be started again, and then deallocated again."""
    state = make_state(clock)
    node_id = first_in(state, "idle")
    state.deallocate(POOL, node_id, "requeue")
    clock.advance(2)
    state.start(POOL, node_id)
    clock.advance(3)
    assert state_of(state, node_id) == "idle"
    state.deallocate(POOL, node_id, "terminate")
    assert state_of(state, node_id) == "deallocating"


@pytest.mark.parametrize("wrong", sorted(ALL_STATES - {"deallocated"}))
def test_start_in_a_wrong_state_is_a_409(clock, wrong):
    """Starting a node that is not deallocated raises a 409 with the invalid-state code."""
    state = make_state(clock, {wrong: 1.0})
    node_id = first_in(state, wrong)
    with pytest.raises(ServiceFault) as caught:
        state.start(POOL, node_id)
    assert (caught.value.status, caught.value.code) == (409, INVALID_STATE_CODE)
    assert caught.value.values == {"NodeState": wrong}
    assert state_of(state, node_id) == wrong


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s, n: s.deallocate("no-such-pool", n, "requeue"), "PoolNotFound"),
        (lambda s, n: s.start("no-such-pool", n), "PoolNotFound"),
        (lambda s, n: s.node("no-such-pool", n), "PoolNotFound"),
        (lambda s, _: s.page("no-such-pool", None, 0, 10), "PoolNotFound"),
        (lambda s, n: s.deallocate(POOL, n + "x", "requeue"), "NodeNotFound"),
        (lambda s, n: s.start(POOL, n + "x"), "NodeNotFound"),
        (lambda s, _: s.node(POOL, "tvm-0000000000_1-20250101t000000z"), "NodeNotFound"),
    ],
    ids=["deallocate-pool", "start-pool", "node-pool", "page-pool", "deallocate-node", "start-node", "node-node"],
)
def test_unknown_pool_or_node_is_a_404(clock, call, code):
    """Operations on an unknown pool or node raise a 404 PoolNotFound or NodeNotFound."""
    state = make_state(clock)
    with pytest.raises(ServiceFault) as caught:
        call(state, first_in(state, "idle"))
    assert (caught.value.status, caught.value.code) == (404, code)


# ------------------------------------------------------------------------------------------------ $filter

OTHERS = ALL_STATES - {"idle", "running"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("state eq 'idle'", {"idle"}),
        ("  state   eq   'idle'  ", {"idle"}),
        ("(state eq 'idle') or (state eq 'running')", {"idle", "running"}),
        ("state eq 'idle' or state eq 'running'", {"idle", "running"}),
        ("state ne 'idle' and state ne 'running'", OTHERS),
        ("state ne 'idle'", ALL_STATES - {"idle"}),
        ("((state eq 'idle' or state eq 'running')) and state ne 'running'", {"idle"}),
        ("(((state eq 'deallocated')))", {"deallocated"}),
        ("state eq 'idle' or state eq 'running' and state eq 'idle'", {"idle"}),  # and binds tighter than or
        ("(state eq 'idle' or state eq 'running') and state eq 'idle'", {"idle"}),
        ("state eq 'no''such'", set()),  # a doubled quote inside a literal
        ("state ne 'no''such'", ALL_STATES),
        ("state eq 'nosuchstate'", set()),
    ],
)
def test_parse_state_filter_valid_forms(text, expected):
    """The state subset of OData filters (eq/ne, and/or, parentheses, quoted literals) becomes a set of states."""
    assert parse_state_filter(text) == frozenset(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "state eq idle",
        'state eq "idle"',
        "state eq 'idle",
        "state gt 'idle'",
        "state = 'idle'",
        "id eq 'idle'",
        "(state eq 'idle'",
        "state eq 'idle')",
        "()",
        "state eq 'idle' or",
        "state eq 'idle' and",
        "or state eq 'idle'",
        "state eq 'idle' xor state eq 'running'",
        "state eq 'idle' state eq 'running'",
        "state eq",
        "state",
        "startswith(state, 'id')",
    ],
)
def test_parse_state_filter_rejects_anything_else(text):
    """Any other filter is a 400 InvalidQueryParameterValue naming $filter."""
    with pytest.raises(ServiceFault) as caught:
        parse_state_filter(text)
    fault = caught.value
    assert (fault.status, fault.code) == (400, "InvalidQueryParameterValue")
    assert fault.values["QueryParameterName"] == "$filter"


# ------------------------------------------------------------------------------------------------- paging


def collect(state: BatchState, allowed, limit: int, between=None) -> list[str]:
    seen: list[str] = []
    position: int | None = 0
    pages = 0
    while position is not None:
        nodes, position = state.page(POOL, allowed, position, limit)
        assert len(nodes) <= limit
        seen.extend(n.id for n in nodes)
        pages += 1
        if between is not None:
            between(pages)
    return seen


def test_unfiltered_paging_is_complete_while_states_change(clock):
    """Paging without a filter returns every node exactly once, in order, even as nodes change between pages."""
    state = make_state(clock, {"idle": 0.6, "running": 0.4}, count=53)
    nodes = state.pools[POOL].nodes
    expected = [n.id for n in nodes]

    def churn(page: int) -> None:
        for node in nodes[page * 3 : page * 3 + 9]:  # nodes already seen and nodes still ahead
            if node.state_at(clock.monotonic()) in {"idle", "running"}:
                state.deallocate(POOL, node.id, "requeue")
        clock.advance(1.0)

    assert collect(state, None, 10, churn) == expected


def test_filtered_paging_keeps_every_node_that_still_matches(clock):
    """With a state filter, nodes that match throughout are all returned once, though others leave the set."""
    state = make_state(clock, {"idle": 0.7, "running": 0.3}, count=60)
    nodes = state.pools[POOL].nodes
    idle_before = {n.id for n in nodes if n.state_at(clock.monotonic()) == "idle"}
    removed: set[str] = set()

    def churn(page: int) -> None:
        # deallocate idle nodes both behind and ahead of the cursor
        for node in (nodes[page], nodes[-page]):
            if node.state_at(clock.monotonic()) == "idle":
                state.deallocate(POOL, node.id, "requeue")
                removed.add(node.id)

    seen = collect(state, frozenset({"idle"}), 7, churn)
    assert len(seen) == len(set(seen))
    assert idle_before - removed <= set(seen) <= idle_before
    order = {n.id: n.index for n in nodes}
    assert seen == sorted(seen, key=order.__getitem__)


def test_page_skips_non_matching_nodes_and_reports_the_next_position(clock):
    """A page fills up to its limit from matching nodes only, and the next position follows the last one looked at."""
    state = make_state(clock, {"idle": 0.5, "running": 0.5}, count=30)
    nodes = state.pools[POOL].nodes
    found, following = state.page(POOL, frozenset({"running"}), 0, 3)
    assert [n.state_at(clock.monotonic()) for n in found] == ["running"] * 3
    assert following == found[-1].index + 1
    _, last = state.page(POOL, None, 25, 10)
    assert last is None
    assert state.page(POOL, None, len(nodes), 10) == ([], None)


def test_page_with_no_matching_state_is_empty(clock):
    """A filter matching no state gives an empty, final page."""
    state = make_state(clock, count=12)
    assert state.page(POOL, frozenset(), 0, 5) == ([], None)


# ------------------------------------------------------------------------------------------------- seeds


def snapshot(clock: FakeClock, seed: int) -> list[tuple[str, str, bool]]:
    state = make_state(clock, {"idle": 0.5, "running": 0.3, "offline": 0.2}, count=40, seed=seed)
    now = clock.monotonic()
    return [(n.id, n.state_at(now), n.is_dedicated) for n in state.pools[POOL].nodes]


def test_same_seed_gives_the_same_nodes():
    """Two states built with one seed have the same ids, states and dedication."""
    assert snapshot(FakeClock(), 11) == snapshot(FakeClock(), 11)


def test_another_seed_gives_other_nodes():
    """Another seed gives other ids and another state sequence."""
    first, second = snapshot(FakeClock(), 11), snapshot(FakeClock(), 12)
    assert {i for i, _, _ in first}.isdisjoint({i for i, _, _ in second})
    assert [s for _, s, _ in first] != [s for _, s, _ in second]


def test_node_ids_look_like_the_services(clock):
    """Every node id is shaped like tvm-<10 digits>_<n>-<yyyymmdd>t<hhmmss>z, numbered from 1 and unique."""
    state = BatchState(
        EmulatorConfig(pools={"a": 25, "b": 5, "empty": 0}, seed=4), clock=clock.monotonic, wall_clock=clock.time
    )
    for pool in state.pools.values():
        ids = [n.id for n in pool.nodes]
        assert all(NODE_ID.match(i) for i in ids), ids
        assert [int(i.split("_")[1].split("-")[0]) for i in ids] == list(range(1, len(ids) + 1))
        assert len(set(ids)) == len(ids)
    assert state.pools["empty"].nodes == []


def test_state_mix_weights_are_respected(clock):
    """Nodes start only in states with a positive weight, in roughly the given proportions."""
    state = make_state(clock, {"idle": 0.75, "running": 0.25, "offline": 0.0}, count=400)
    states = [n.state_at(clock.monotonic()) for n in state.pools[POOL].nodes]
    assert set(states) == {"idle", "running"}
    assert 0.65 < states.count("idle") / len(states) < 0.85


# ------------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize("index", [0, 1, 7, 999, 10**6, 2**40])
def test_skiptoken_round_trips(index):
    """A skip token decodes to the position it was made from, and is URL-safe without padding."""
    token = encode_skiptoken(index)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_skiptoken(token) == index


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "not a token",
        "a",
        _b64("pos:"),
        _b64("pos:-1"),
        _b64("pos:x"),
        _b64("idx:3"),
        _b64("3"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_garbage_skiptoken_is_a_400(token):
    """Anything but a token the emulator made is a 400 InvalidQueryParameterValue naming $skiptoken."""
    with pytest.raises(ServiceFault) as caught:
        decode_skiptoken(token)
    assert (caught.value.status, caught.value.code) == (400, "InvalidQueryParameterValue")
    assert caught.value.values["QueryParameterName"] == "$skiptoken"


# ------------------------------------------------------------------------------------------------- wire


def test_to_wire_full_and_selected(clock):
    """A node's JSON carries the BatchNode fields, and $select keeps only the named ones."""
    state = make_state(clock, {"running": 1.0}, count=3)
    node = state.pools[POOL].nodes[0]
    full = state.to_wire(node, "http://e", POOL, None)
    assert full["id"] == node.id
    assert full["state"] == "running"
    assert full["url"] == f"http://e/pools/{POOL}/nodes/{node.id}"
    assert full["runningTasksCount"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", full["stateTransitionTime"])
    assert state.to_wire(node, "http://e", POOL, frozenset({"id"})) == {"id": node.id}
    assert state.to_wire(node, "http://e", POOL, frozenset({"state", "vmSize"})) == {
        "state": "running",
        "vmSize": full["vmSize"],
    }
