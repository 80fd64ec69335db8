"""Value objects named after the service's definitions (api-version 2025-06-01).

Wire names (camelCase, ``odata.*`` keys) live only in :mod:`._converter`; these classes know nothing of JSON.
"""

from __future__ import annotations

import enum
from datetime import datetime  # noqa: TC003 (attrs resolves field annotations at runtime for cattrs)

import attrs

__all__ = [
    "BatchError",
    "BatchErrorDetail",
    "BatchErrorMessage",
    "BatchNode",
    "BatchNodeDeallocateOption",
    "BatchNodeDeallocateOptions",
    "BatchNodeListResult",
    "BatchNodeState",
    "DeallocateResult",
    "StartResult",
]


class BatchNodeDeallocateOption(enum.StrEnum):
    """When to deallocate a node and what to do with its running tasks (``BatchNodeDeallocateOption``)."""

    REQUEUE = "requeue"
    """Kill running tasks, requeue them, then deallocate. The service's default."""
    TERMINATE = "terminate"
    """Kill running tasks (they complete with failureInfo and do not rerun), then deallocate."""
    TASK_COMPLETION = "taskcompletion"
    """Let running tasks finish and schedule no new ones, then deallocate."""
    RETAINED_DATA = "retaineddata"
    """Deprecated by the service in favour of ``TASK_COMPLETION``: also waits for data retention to expire."""


class BatchNodeState(enum.StrEnum):
    """The states a compute node reports (``BatchNodeState``).

    The service treats this enum as extensible, so :class:`BatchNode` keeps ``state`` as a plain ``str``;
    members compare equal to their wire strings.
    """

    IDLE = "idle"
    REBOOTING = "rebooting"
    REIMAGING = "reimaging"
    RUNNING = "running"
    UNUSABLE = "unusable"
    CREATING = "creating"
    STARTING = "starting"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    UNKNOWN = "unknown"
    LEAVING_POOL = "leavingpool"
    OFFLINE = "offline"
    PREEMPTED = "preempted"
    UPGRADING_OS = "upgradingos"
    DEALLOCATED = "deallocated"
    DEALLOCATING = "deallocating"


@attrs.frozen(kw_only=True)
class BatchNodeDeallocateOptions:
    """The optional request body of Deallocate Node (``BatchNodeDeallocateOptions``)."""

    node_deallocate_option: BatchNodeDeallocateOption | None = None


@attrs.frozen(kw_only=True)
class BatchErrorMessage:
    """A localised error message (``BatchErrorMessage``)."""

    lang: str | None = None
    value: str | None = None


@attrs.frozen(kw_only=True)
class BatchErrorDetail:
    """One key/value pair of additional error information (``BatchErrorDetail``)."""

    key: str | None = None
    value: str | None = None


@attrs.frozen(kw_only=True)
class BatchError:
    """The error body the service sends with every non-success status (``BatchError``)."""

    code: str | None = None
    message: BatchErrorMessage | None = None
    values: tuple[BatchErrorDetail, ...] = ()

    @property
    def summary(self) -> str:
        """The first line of the message: the service appends ``RequestId:`` and ``Time:`` lines."""
        text = self.message.value if self.message and self.message.value else ""
        return text.split("\n", 1)[0].strip()


@attrs.frozen(kw_only=True)
class BatchNode:
    """The parts of a compute node (``BatchNode``) this library reads; unknown keys are ignored.

    ``state`` stays a ``str`` because the service may add states; compare it with :class:`BatchNodeState`.
    """

    id: str
    state: str | None = None
    url: str | None = None
    scheduling_state: str | None = None
    state_transition_time: datetime | None = None
    is_dedicated: bool | None = None
    vm_size: str | None = None


@attrs.frozen(kw_only=True)
class BatchNodeListResult:
    """One page of List Nodes (``BatchNodeListResult``)."""

    value: tuple[BatchNode, ...] = ()
    odata_next_link: str | None = None


@attrs.frozen(kw_only=True)
class _AcceptedResult:
    """The fields of an accepted node action's result (each action has its own class, so neither equals the other)."""

    pool_id: str
    node_id: str
    request_id: str | None
    client_request_id: str
    etag: str | None = None
    last_modified: datetime | None = None
    data_service_id: str | None = None
    attempts: int = 1
    reconciled: bool = False


@attrs.frozen(kw_only=True)
class DeallocateResult(_AcceptedResult):
    """What the service answered when it accepted a Deallocate Node request.

    Attributes:
        pool_id: The pool of the node.
        node_id: The node.
        request_id: The service's ``request-id`` of the accepted attempt (quote it in support cases).
        client_request_id: The ``client-request-id`` sent on every attempt of this call.
        etag: The ``ETag`` response header.
        last_modified: The ``Last-Modified`` response header as an aware UTC datetime.
        data_service_id: The ``DataServiceId`` response header.
        attempts: How many requests this call sent (1 when the first attempt was accepted).
        reconciled: True when an ambiguous attempt (timeout, reset, 5xx) was followed by a ``409`` and a
            Get Node confirmed that the node is deallocating or deallocated; the header fields then come
            from that Get Node response.
    """


@attrs.frozen(kw_only=True)
class StartResult(_AcceptedResult):
    """What the service answered when it accepted a Start Node request.

    Attributes:
        reconciled: True when an ambiguous attempt (timeout, reset, 5xx) was followed by a ``409`` and a
            Get Node found the node starting, waiting for its start task, idle or running; the header fields
            then come from that Get Node response.

    The other attributes are those of :class:`DeallocateResult`, with the same meanings.
    """
