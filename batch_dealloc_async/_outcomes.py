"""What a bulk run reports: one :class:`NodeOutcome` per node, and a :class:`BulkReport` summing them up."""

from __future__ import annotations

import enum
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import BatchDeallocError, BatchServiceError, BatchTimeoutError, NodeStateError, ServiceDownError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._models import DeallocateResult, StartResult

__all__ = ["BulkReport", "ClientStats", "NodeOutcome", "OutcomeStatus"]


class ClientStats:
    """Counters of what a client (or one bulk run) sent.

    Attributes:
        requests: Requests sent (every attempt counts).
        retries: Attempts after the first of a call.
        throttled: Responses that were throttling (429, 503 ServerBusy).
        accepted: Actions (deallocations, starts) the service accepted (202, or confirmed with Get Node after an
            ambiguous attempt); with ``wait`` these are the nodes still to be seen where they were going.
        outages: Times the service failed every request and the circuit breaker began holding requests.
        probes: Requests sent alone, as probes, while the breaker held the others.
        traffic: What traffic control is doing now: ``startup``, ``drain`` (startup met the limit: waiting for the
            requests in flight), ``cruise``, ``probe``, ``paused`` (every request is throttled, at any rate: one
            goes at a time, until one is granted), ``failing`` (the service fails everything: requests are held
            and single probes sent), or ``fixed``.
    """

    __slots__ = ("accepted", "outages", "probes", "requests", "retries", "throttled", "traffic")

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.throttled = 0
        self.accepted = 0
        self.outages = 0
        self.probes = 0
        self.traffic = "startup"

    def __repr__(self) -> str:
        return (
            f"ClientStats(requests={self.requests}, retries={self.retries}, throttled={self.throttled}, "
            f"accepted={self.accepted}, outages={self.outages}, probes={self.probes}, traffic={self.traffic!r})"
        )


class OutcomeStatus(enum.StrEnum):
    """How a node's part in a bulk run ended."""

    ACCEPTED = "accepted"
    """The service accepted the request (202); without ``wait`` this is success."""
    DEALLOCATED = "deallocated"
    """With ``wait``: the node reached ``deallocated``."""
    STARTED = "started"
    """With ``wait``, in a start run: the node was seen ``idle`` or ``running`` after our request."""
    SKIPPED = "skipped"
    """The node was not in an eligible state (see ``state``); nothing was changed."""
    FAILED = "failed"
    """The request failed, or (waiting in a start run) the node ended ``starttaskfailed`` or ``unusable``; see
    ``error`` and ``state``."""
    TIMED_OUT = "timed_out"
    """The run's deadline passed while the request was in flight, or before the node got where it was going."""
    NOT_ATTEMPTED = "not_attempted"
    """No request was sent for this node: the run's deadline passed, or the run stopped (``error`` says why)."""


#: Statuses that count as success for the caller (exit code 0 of the CLI).
SUCCESS_STATUSES = frozenset(
    {OutcomeStatus.ACCEPTED, OutcomeStatus.DEALLOCATED, OutcomeStatus.STARTED, OutcomeStatus.SKIPPED}
)


def _error_code(error: BaseException | None) -> str | None:
    """The code a report groups failures by: the service's, or one naming what happened."""
    if error is None:
        return None
    if isinstance(error, BatchServiceError):
        return error.code or f"HTTP{error.status}"
    if isinstance(error, BatchTimeoutError):
        return "ClientTimeout"
    code: str | None = None
    if isinstance(error, ServiceDownError):
        code = error.code or "ServiceDown"  # the service's own last error, what the run ended on
    elif isinstance(error, NodeStateError):
        code = error.code
    return code or type(error).__name__


@attrs.frozen(kw_only=True)
class NodeOutcome:
    """The end of one node's part in a bulk run.

    Attributes:
        pool_id: The node's pool.
        node_id: The node.
        status: How it ended.
        result: The service's answer when the request was accepted.
        error: Why it failed or timed out (``None`` otherwise).
        attempts: Deallocate requests sent for this node.
        state: The node state last seen (from a listing, a Get Node, or the action's state once accepted).
        action: What the run did to nodes: ``deallocate`` or ``start``.
    """

    pool_id: str
    node_id: str
    status: OutcomeStatus
    result: DeallocateResult | StartResult | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)
    attempts: int = 0
    state: str | None = None
    action: str = "deallocate"

    @property
    def error_code(self) -> str | None:
        """The service's error code (``NodeNotFound``...), ``HTTP<status>``, or the error's class name."""
        return _error_code(self.error)

    @property
    def ok(self) -> bool:
        """Accepted, deallocated, started or skipped: nothing for the caller to follow up."""
        return self.status in SUCCESS_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (no secrets: errors appear as code and message only)."""
        result = self.result
        return {
            "pool_id": self.pool_id,
            "node_id": self.node_id,
            "action": self.action,
            "status": self.status.value,
            "state": self.state,
            "attempts": self.attempts,
            "request_id": result.request_id if result is not None else getattr(self.error, "request_id", None),
            "client_request_id": (
                result.client_request_id if result is not None else getattr(self.error, "client_request_id", None)
            ),
            "reconciled": result.reconciled if result is not None else False,
            "error_code": self.error_code,
            "error": str(self.error) if self.error is not None else None,
        }


@attrs.define(kw_only=True)
class BulkReport:
    """Every outcome of a bulk run, with totals.

    Attributes:
        outcomes: One per node given or found, in the order they ended.
        requests: Requests the run sent (actions, listings, state checks; every attempt counts).
        retries: Attempts after the first of a call.
        throttled: Throttled responses (429, 503 ServerBusy).
        elapsed: Seconds from start to end.
        pool_errors: Pools that could not be listed (pool mode), with the error; their nodes are unknown.
        poll_rounds: With ``wait``: rounds of listing (per pool) while waiting for the nodes to get there.
        poll_requests: The requests those rounds took (included in ``requests``).
        outages: Times during the run the service failed every request and the client held its requests.
        probes: Requests sent alone to see whether the service was back.
    """

    outcomes: list[NodeOutcome] = attrs.field(factory=list)
    pool_errors: dict[str, BatchDeallocError] = attrs.field(factory=dict)
    poll_rounds: int = 0
    poll_requests: int = 0
    outages: int = 0
    probes: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    elapsed: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Outcomes by status (every status present, zero included)."""
        counted = Counter(o.status for o in self.outcomes)
        return {status.value: counted.get(status, 0) for status in OutcomeStatus}

    @property
    def failures_by_code(self) -> dict[str, int]:
        """Failed and timed-out outcomes grouped by error code, most frequent first."""
        counted = Counter(
            o.error_code or o.status.value
            for o in self.outcomes
            if o.status in {OutcomeStatus.FAILED, OutcomeStatus.TIMED_OUT}
        )
        return dict(counted.most_common())

    @property
    def ok(self) -> bool:
        """True when every pool could be listed and every node was accepted, deallocated, started or skipped."""
        return not self.pool_errors and all(o.ok for o in self.outcomes)

    def by_status(self, status: OutcomeStatus | str) -> list[NodeOutcome]:
        """The outcomes with ``status``."""
        wanted = OutcomeStatus(status)
        return [o for o in self.outcomes if o.status is wanted]

    def summary(self) -> dict[str, Any]:
        """The totals without the per-node list."""
        return {
            "nodes": len(self.outcomes),
            "counts": self.counts,
            "failures_by_code": self.failures_by_code,
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "elapsed": round(self.elapsed, 3),
            "pool_errors": {pool: str(error) for pool, error in self.pool_errors.items()},
            "poll_rounds": self.poll_rounds,
            "poll_requests": self.poll_requests,
            "outages": self.outages,
            "probes": self.probes,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the summary plus every outcome."""
        return {**self.summary(), "outcomes": [o.to_dict() for o in self.outcomes]}

    @classmethod
    def merge(cls, reports: Iterable[BulkReport], *, elapsed: float) -> BulkReport:
        """One report from several (e.g. one per pool)."""
        merged = cls(elapsed=elapsed)
        for report in reports:
            merged.outcomes.extend(report.outcomes)
            merged.requests += report.requests
            merged.retries += report.retries
            merged.throttled += report.throttled
            merged.pool_errors.update(report.pool_errors)
            merged.poll_rounds += report.poll_rounds
            merged.poll_requests += report.poll_requests
            merged.outages += report.outages
            merged.probes += report.probes
        return merged
