"""Pools, nodes and the rules of their states; no HTTP here (moto's cut).

A node's state is computed from timestamps when it is read: a transition records when it began, when it
ends and the state it ends in, so nothing runs per node in the background, whatever the pool size.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from .._actions import DEALLOCATE_STATES
from .._models import BatchNodeState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from ._config import EmulatorConfig

__all__ = [
    "EMITTED_PROPERTIES",
    "INVALID_STATE_CODE",
    "NODE_PROPERTIES",
    "BatchState",
    "Node",
    "ServiceFault",
    "parse_state_filter",
]

#: The service's code for an operation on a node in the wrong state is unconfirmed (reference sheet, section 3);
#: it lives here only.
INVALID_STATE_CODE: Final = "OperationInvalidForCurrentState"
ALL_STATES: Final = frozenset(s.value for s in BatchNodeState)
DEALLOCATABLE: Final = DEALLOCATE_STATES
_EPOCH: Final = datetime(2025, 11, 22, 19, 32, 2, tzinfo=UTC)


class ServiceFault(Exception):  # noqa: N818 (a service answer, not a bug)
    """An error answer of the service: HTTP status, BatchError code and message, optional values."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = dict(values or {})
        self.headers = dict(headers or {})


class Node:
    """One compute node. ``state_at(now)`` is ``before`` until ``until``, ``middle`` until ``settled``, then ``after``.

    A plain transition has no middle phase (``settled == until``).
    """

    __slots__ = (
        "after",
        "before",
        "calls",
        "changed",
        "id",
        "index",
        "is_dedicated",
        "middle",
        "settled",
        "until",
        "version",
    )

    def __init__(self, node_id: str, index: int, state: str, changed: float, *, is_dedicated: bool) -> None:
        self.id = node_id
        self.index = index
        self.before = state
        self.middle = state
        self.after = state
        self.until = float("inf")
        self.settled = float("inf")
        self.changed = changed
        self.calls = 0  # deallocate requests that reached this node
        self.version = 0  # bumps on every change: the ETag
        self.is_dedicated = is_dedicated

    def state_at(self, now: float) -> str:
        """The state at monotonic time ``now``."""
        if now < self.until:
            return self.before
        return self.middle if now < self.settled else self.after

    def changed_at(self, now: float) -> float:
        """When the state last changed (monotonic)."""
        if now < self.until:
            return self.changed
        return self.until if now < self.settled else self.settled

    def transition(
        self, now: float, during: str, after: str, delay: float, *, via: str | None = None, via_delay: float = 0.0
    ) -> None:
        """Enter ``during`` now, then ``after`` once ``delay`` seconds have passed.

        With ``via``, the node is in ``via`` for ``via_delay`` seconds between the two.
        """
        self.before = during
        self.middle = after if via is None else via
        self.after = after
        self.changed = now
        self.until = now + delay
        self.settled = self.until if via is None else self.until + via_delay
        self.version += 1


class Pool:
    """A pool: nodes in a fixed order (for stable paging) and by id."""

    __slots__ = ("by_id", "id", "nodes")

    def __init__(self, pool_id: str, nodes: list[Node]) -> None:
        self.id = pool_id
        self.nodes = nodes
        self.by_id = {node.id: node for node in nodes}


def _node_ids(rng: random.Random, count: int) -> list[str]:
    """Ids shaped like the service's: ``tvm-<10 digits>_<n>-<yyyymmdd>t<hhmmss>z``."""
    digits = rng.randrange(10**9, 10**10)
    stamp = datetime.fromtimestamp(_EPOCH.timestamp() - rng.randrange(0, 400 * 86400), UTC)
    suffix = stamp.strftime("%Y%m%dt%H%M%Sz")
    return [f"tvm-{digits}_{n}-{suffix}" for n in range(1, count + 1)]


class BatchState:
    """Every pool of the account, and the operations on them.

    Args:
        config: The emulator's configuration (pools, state mix, delays).
        clock: Monotonic seconds; states are computed from it.
        wall_clock: Epoch seconds, for the times reported in bodies.
    """

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        rng = random.Random(f"state-{config.seed}")  # noqa: S311 (simulation, not cryptography)
        self._start_rng = random.Random(f"start-{config.seed}")  # noqa: S311 (its own, so other draws do not shift)
        states = list(config.state_mix)
        weights = [config.state_mix[s] for s in states]
        now = clock()
        self.pools: dict[str, Pool] = {}
        for pool_id, count in config.pools.items():
            ids = _node_ids(rng, count)
            chosen = rng.choices(states, weights, k=count)
            nodes = [
                Node(node_id, i, state, now - rng.uniform(60, 86400), is_dedicated=rng.random() < 0.8)  # noqa: PLR2004
                for i, (node_id, state) in enumerate(zip(ids, chosen, strict=True))
            ]
            self.pools[pool_id] = Pool(pool_id, nodes)

    # ------------------------------------------------------------------------------------------ lookups

    def pool(self, pool_id: str) -> Pool:
        """The pool, or a 404 PoolNotFound fault."""
        pool = self.pools.get(pool_id)
        if pool is None:
            raise ServiceFault(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def node(self, pool_id: str, node_id: str) -> Node:
        """The node, or a 404 PoolNotFound/NodeNotFound fault."""
        node = self.pool(pool_id).by_id.get(node_id)
        if node is None:
            raise ServiceFault(404, "NodeNotFound", "The specified node does not exist.")
        return node

    # ------------------------------------------------------------------------------------------- changes

    def deallocate(self, pool_id: str, node_id: str, option: str) -> Node:
        """idle/running -> deallocating -> deallocated; anything else is a 409."""
        node = self.node(pool_id, node_id)
        node.calls += 1
        now = self.clock()
        state = node.state_at(now)
        if state not in DEALLOCATABLE:
            raise ServiceFault(
                409,
                INVALID_STATE_CODE,
                f"The specified operation is not valid for the current state of the resource (state {state}).",
                {"NodeState": state},
            )
        config = self.config
        slow = state == "running" and option in {"taskcompletion", "retaineddata"}
        delay = config.taskcompletion_delay if slow else config.deallocate_delay
        node.transition(now, "deallocating", "deallocated", delay)
        return node

    def start(self, pool_id: str, node_id: str) -> Node:
        """Deallocated -> starting -> idle; anything else is a 409.

        A share ``start_task_failure`` of started nodes goes starting -> waitingforstarttask -> starttaskfailed
        instead, half of ``start_delay`` in each.
        """
        node = self.node(pool_id, node_id)
        now = self.clock()
        state = node.state_at(now)
        if state != "deallocated":
            raise ServiceFault(
                409,
                INVALID_STATE_CODE,
                f"The specified operation is not valid for the current state of the resource (state {state}).",
                {"NodeState": state},
            )
        delay = self.config.start_delay
        if self._start_rng.random() < self.config.start_task_failure:  # drawn for every start: a replayable split
            node.transition(
                now, "starting", "starttaskfailed", delay / 2, via="waitingforstarttask", via_delay=delay / 2
            )
        else:
            node.transition(now, "starting", "idle", delay)
        return node

    # ------------------------------------------------------------------------------------------- reading

    def page(
        self, pool_id: str, allowed: frozenset[str] | None, start: int, limit: int
    ) -> tuple[list[Node], int | None]:
        """Up to ``limit`` nodes in ``allowed`` states from position ``start``; the next position, if any."""
        nodes = self.pool(pool_id).nodes
        now = self.clock()
        found: list[Node] = []
        index = start
        total = len(nodes)
        while index < total and len(found) < limit:
            node = nodes[index]
            if allowed is None or node.state_at(now) in allowed:
                found.append(node)
            index += 1
        return found, (index if index < total else None)

    def to_wire(self, node: Node, endpoint: str, pool_id: str, select: frozenset[str] | None) -> dict[str, Any]:
        """The node as the service's JSON (``BatchNode``), limited to ``select`` when given."""
        now = self.clock()
        state = node.state_at(now)
        if select is not None and select <= {"id", "state"}:  # the bulk path: keep it cheap
            return {k: v for k, v in (("id", node.id), ("state", state)) if k in select}
        wall = self.wall_clock() - now
        changed = _iso(wall + node.changed_at(now))
        full: dict[str, Any] = {
            "id": node.id,
            "url": f"{endpoint}/pools/{pool_id}/nodes/{node.id}",
            "state": state,
            "schedulingState": "enabled",
            "stateTransitionTime": changed,
            "lastBootTime": changed,
            "allocationTime": _iso(_EPOCH.timestamp()),
            "ipAddress": f"10.0.{node.index // 250 % 250}.{node.index % 250 + 4}",
            "affinityId": f"TVM:{node.id}",
            "vmSize": "Standard_D2_v5",
            "totalTasksRun": 0,
            "totalTasksSucceeded": 0,
            "runningTasksCount": 1 if state == "running" else 0,
            "runningTaskSlotsCount": 1 if state == "running" else 0,
            "isDedicated": node.is_dedicated,
            "nodeAgentInfo": {"version": "1.2.0.0", "lastUpdateTime": changed},
        }
        if select is None:
            return full
        return {k: v for k, v in full.items() if k in select}

    def iter_nodes(self, pool_id: str) -> Iterator[Node]:
        """Every node of the pool, in order."""
        return iter(self.pool(pool_id).nodes)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


NODE_PROPERTIES: Final = frozenset(
    {
        "id",
        "url",
        "state",
        "schedulingState",
        "stateTransitionTime",
        "lastBootTime",
        "allocationTime",
        "ipAddress",
        "ipv6Address",
        "affinityId",
        "vmSize",
        "totalTasksRun",
        "totalTasksSucceeded",
        "runningTasksCount",
        "runningTaskSlotsCount",
        "isDedicated",
        "recentTasks",
        "startTask",
        "startTaskInfo",
        "errors",
        "endpointConfiguration",
        "nodeAgentInfo",
        "virtualMachineInfo",
    }
)
"""Every ``BatchNode`` property of the spec: ``$select`` may name any (those the emulator has no value for are
left out of the answer, as the service leaves out unset ones)."""

EMITTED_PROPERTIES: Final = frozenset(
    {
        "id",
        "url",
        "state",
        "schedulingState",
        "stateTransitionTime",
        "lastBootTime",
        "allocationTime",
        "ipAddress",
        "affinityId",
        "vmSize",
        "totalTasksRun",
        "totalTasksSucceeded",
        "runningTasksCount",
        "runningTaskSlotsCount",
        "isDedicated",
        "nodeAgentInfo",
    }
)
"""The properties the emulator gives a node (a subset of :data:`NODE_PROPERTIES`)."""


def parse_select(text: str | None) -> frozenset[str] | None:
    """``$select`` as a set of property names; unknown names are a 400."""
    if text is None:
        return None
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = names - NODE_PROPERTIES
    if not names or unknown:
        raise ServiceFault(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            {"QueryParameterName": "$select", "QueryParameterValue": text[:200]},
        )
    return names


# ------------------------------------------------------------------------------------------------ $filter

_TOKEN_RE: Final = re.compile(r"\s*(?:(\()|(\))|('(?:[^']|'')*')|([A-Za-z_/]+))")


def _bad_filter(text: str) -> ServiceFault:
    return ServiceFault(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        {"QueryParameterName": "$filter", "QueryParameterValue": text[:200]},
    )


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise _bad_filter(text)
        tokens.append(match.group(match.lastindex or 0))
        position = match.end()
    return tokens


class _FilterParser:
    """A recursive-descent parser of the ``state`` subset of OData filters.

    disjunction := conjunction ('or' conjunction)*; conjunction := primary ('and' primary)*;
    primary := '(' disjunction ')' | 'state' ('eq'|'ne') '<literal>'.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        if self.position >= len(self.tokens):
            raise _bad_filter(self.text)
        self.position += 1
        return self.tokens[self.position - 1]

    def primary(self) -> frozenset[str]:
        word = self.take()
        if word == "(":
            result = self.disjunction()
            if self.take() != ")":
                raise _bad_filter(self.text)
            return result
        operator, literal = self.take(), self.take()
        if word != "state" or operator not in {"eq", "ne"} or not (literal.startswith("'") and literal.endswith("'")):
            raise _bad_filter(self.text)
        matching = frozenset({literal[1:-1].replace("''", "'")}) & ALL_STATES
        return matching if operator == "eq" else ALL_STATES - matching

    def conjunction(self) -> frozenset[str]:
        result = self.primary()
        while self.peek() == "and":
            self.take()
            result &= self.primary()
        return result

    def disjunction(self) -> frozenset[str]:
        result = self.conjunction()
        while self.peek() == "or":
            self.take()
            result |= self.conjunction()
        return result


def parse_state_filter(text: str) -> frozenset[str]:
    """The subset of OData ``$filter`` on ``state`` (eq/ne, and/or, parentheses) as the set of matching states.

    Every node is in one of the 16 known states, so a filter on state alone is exactly a set of states.

    Raises:
        ServiceFault: 400 InvalidQueryParameterValue for anything else.
    """
    parser = _FilterParser(text)
    if not parser.tokens:
        raise _bad_filter(text)
    result = parser.disjunction()
    if parser.position != len(parser.tokens):
        raise _bad_filter(text)
    return result


def encode_skiptoken(index: int) -> str:
    """An opaque continuation token for position ``index``."""
    return base64.urlsafe_b64encode(f"pos:{index}".encode()).decode().rstrip("=")


def decode_skiptoken(token: str) -> int:
    """The position of a token :func:`encode_skiptoken` made; a 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        index = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        index = -1
        kind = ""
    if kind != "pos" or index < 0:
        raise ServiceFault(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            {"QueryParameterName": "$skiptoken", "QueryParameterValue": token[:200]},
        )
    return index
