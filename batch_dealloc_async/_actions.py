"""The node actions a client performs, each with the service's facts about it, spelled once.

An action is data, not code: the node operations read its path and the states that confirm it, the bulk engine
reads the states that make a node eligible, the states it passes through, and the state that ends it.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._models import BatchNodeState, DeallocateResult, StartResult
from ._outcomes import OutcomeStatus

__all__ = ["DEALLOCATE", "DEALLOCATE_STATES", "START", "START_STATES", "NodeAction"]


@attrs.frozen(kw_only=True)
class NodeAction:
    """One node operation (``POST .../pools/{poolId}/nodes/{nodeId}/<verb>``) and its state machine.

    Attributes:
        verb: The last path segment, and the word in messages (``deallocate``).
        eligible: The states the service accepts the action in; a pool run lists these.
        accepted_state: The state an accepted node is in right after the ``202``.
        confirming: States that, read after an ambiguous attempt and a ``409``, mean our attempt worked.
        passing: States a node passes through on its way to ``done`` (a wait keeps polling for these).
        done: States that end a wait successfully.
        failed: States that end a wait in failure (the node will not get to ``done`` by itself).
        done_status: The outcome status of a node seen in a ``done`` state.
        result: The class of an accepted action's result.
    """

    verb: str
    eligible: frozenset[str]
    accepted_state: str
    confirming: frozenset[str]
    passing: frozenset[str]
    done: frozenset[str]
    failed: frozenset[str] = frozenset()
    done_status: OutcomeStatus
    result: type[DeallocateResult | StartResult]

    @property
    def watched(self) -> tuple[str, ...]:
        """The states a wait lists (sorted, so the filter is the same every round)."""
        return tuple(sorted(self.passing | self.done | self.failed))


DEALLOCATE_STATES: Final = frozenset({BatchNodeState.IDLE.value, BatchNodeState.RUNNING.value})
"""The states the service deallocates a node in (any other is a ``409``)."""

DEALLOCATE: Final = NodeAction(
    verb="deallocate",
    eligible=DEALLOCATE_STATES,
    accepted_state=BatchNodeState.DEALLOCATING.value,
    confirming=frozenset({BatchNodeState.DEALLOCATING.value, BatchNodeState.DEALLOCATED.value}),
    passing=frozenset({BatchNodeState.DEALLOCATING.value}),
    done=frozenset({BatchNodeState.DEALLOCATED.value}),
    done_status=OutcomeStatus.DEALLOCATED,
    result=DeallocateResult,
)

START_STATES: Final = frozenset({BatchNodeState.DEALLOCATED.value})
"""The states the service starts a node in (any other is a ``409``)."""

START: Final = NodeAction(
    verb="start",
    eligible=START_STATES,
    accepted_state=BatchNodeState.STARTING.value,
    confirming=frozenset(
        {
            BatchNodeState.STARTING.value,
            BatchNodeState.WAITING_FOR_START_TASK.value,
            BatchNodeState.IDLE.value,
            BatchNodeState.RUNNING.value,
        }
    ),
    passing=frozenset({BatchNodeState.STARTING.value, BatchNodeState.WAITING_FOR_START_TASK.value}),
    done=frozenset({BatchNodeState.IDLE.value, BatchNodeState.RUNNING.value}),
    failed=frozenset({BatchNodeState.START_TASK_FAILED.value, BatchNodeState.UNUSABLE.value}),
    done_status=OutcomeStatus.STARTED,
    result=StartResult,
)
