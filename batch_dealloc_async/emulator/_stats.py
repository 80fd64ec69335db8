"""What the emulator saw: plain counters, cheap to bump on the hot path, served as JSON on a side route."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import BatchState

__all__ = ["EmulatorStats"]


class EmulatorStats:
    """Counters of requests by operation and status, throttling, faults and authentication.

    ``deallocate_calls`` is read from the nodes (each counts the deallocate requests that reached it), so the
    hot path pays nothing for it.
    """

    def __init__(self, state: BatchState) -> None:
        self._state = state
        self.requests: Counter[tuple[str, int]] = Counter()
        self.throttled = 0
        self.faults: Counter[str] = Counter()
        self.auth_failures = 0
        self.sdk_timeout_signatures = 0

    def deallocate_calls(self) -> Counter[tuple[str, str]]:
        """Deallocate requests that reached each node, by (pool, node); nodes never called are left out."""
        return Counter(
            {(pool.id, node.id): node.calls for pool in self._state.pools.values() for node in pool.nodes if node.calls}
        )

    def count(self, operation: str, status: int | None = None) -> int:
        """Requests of ``operation`` (with ``status`` when given)."""
        return sum(n for (op, st), n in self.requests.items() if op == operation and (status is None or st == status))

    @property
    def total(self) -> int:
        """Every request answered (side routes excluded)."""
        return sum(self.requests.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        by_operation: dict[str, dict[str, int]] = {}
        for (operation, status), count in sorted(self.requests.items()):
            by_operation.setdefault(operation, {})[str(status)] = count
        calls = self.deallocate_calls()
        return {
            "requests": by_operation,
            "total": self.total,
            "throttled": self.throttled,
            "faults": dict(self.faults),
            "auth_failures": self.auth_failures,
            "sdk_timeout_signatures": self.sdk_timeout_signatures,
            "deallocate_calls": {
                "nodes": len(calls),
                "total": sum(calls.values()),
                "max_per_node": max(calls.values(), default=0),
                "nodes_called_more_than_once": sum(1 for n in calls.values() if n > 1),
            },
        }
