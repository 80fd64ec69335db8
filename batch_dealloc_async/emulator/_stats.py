"""What the emulator saw: plain counters, cheap to bump on the hot path, served as JSON on a side route."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._state import BatchState

__all__ = ["MAX_BINS", "EmulatorStats", "Timeline"]

#: The timeline keeps at most this many bins (an hour of 0.1 s bins); later answers go to the last one.
MAX_BINS: Final = 36_000


class Timeline:
    """Answers per bin of run time, by class, with the token bucket's rate in force: the data of a chart.

    Classes: ``ok`` (2xx), ``throttled`` (429/503 answered because of throttling: the token bucket or the
    ``server_busy``/``too_many_requests`` faults) and ``error`` (any other status, connection resets included).
    A request the client (or a refusing outage) cut off before its answer is not counted.

    Args:
        bin_seconds: The width of a bin.
        max_bins: The most bins kept; answers later than that go to the last bin.
    """

    __slots__ = ("_counts", "_rates", "bin", "max_bins")

    def __init__(self, bin_seconds: float, max_bins: int = MAX_BINS) -> None:
        self.bin = bin_seconds
        self.max_bins = max_bins
        self._counts: dict[int, list[int]] = {}
        self._rates: dict[int, float | None] = {}

    def __repr__(self) -> str:
        return f"Timeline(bin={self.bin!r}, bins={len(self._counts)})"

    def add(self, run_time: float, status: int, *, throttled: bool, rate: float | None) -> None:
        """Count an answer given at ``run_time`` seconds, and the rate in force then."""
        index = min(max(0, int(run_time / self.bin)), self.max_bins - 1)
        counts = self._counts.get(index)
        if counts is None:
            counts = self._counts[index] = [0, 0, 0]
        counts[0 if 200 <= status < 300 else 1 if throttled else 2] += 1  # noqa: PLR2004 (HTTP statuses)
        self._rates[index] = rate

    def rows(self) -> list[tuple[float, int, int, int, float | None]]:
        """``(start of bin, ok, throttled, error, rate)`` for every bin with an answer, in time order."""
        rows: list[tuple[float, int, int, int, float | None]] = []
        for index in sorted(self._counts):
            ok, throttled, error = self._counts[index]
            rows.append((round(index * self.bin, 9), ok, throttled, error, self._rates[index]))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The compact JSON form: ``{"bin": seconds, "rows": [[t, ok, throttled, error, rate], ...]}``."""
        return {"bin": self.bin, "rows": [list(row) for row in self.rows()]}


class EmulatorStats:
    """Counters of requests (by operation and status, throttling, faults, authentication, outages) and a timeline.

    ``deallocate_calls`` is read from the nodes (each counts the deallocate requests that reached it), so the
    hot path pays nothing for it. ``timeline`` starts afresh whenever run time 0 is set again (see
    ``EmulatorConfig``); requests before run time 0 (a client's listing) are not in it.
    """

    def __init__(self, state: BatchState) -> None:
        self._state = state
        self.requests: Counter[tuple[str, int]] = Counter()
        self.throttled = 0
        self.faults: Counter[str] = Counter()
        self.auth_failures = 0
        self.sdk_timeout_signatures = 0
        self.outage_requests = 0
        self.timeline = Timeline(state.config.timeline_bin)

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
            "outage_requests": self.outage_requests,
            "deallocate_calls": {
                "nodes": len(calls),
                "total": sum(calls.values()),
                "max_per_node": max(calls.values(), default=0),
                "nodes_called_more_than_once": sum(1 for n in calls.values() if n > 1),
            },
            "timeline": self.timeline.to_dict(),
        }
