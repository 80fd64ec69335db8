"""The emulator's configuration: one frozen attrs class (plus the faults), every random choice seeded."""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Callable, Iterable, Mapping  # noqa: TC003 (attrs resolves annotations at runtime)
from typing import Any, Final, Literal

import attrs

__all__ = ["DEFAULT_STATE_MIX", "OPERATIONS", "OUTAGE_KINDS", "EmulatorConfig", "FaultConfig", "Outage"]

OPERATIONS: Final = frozenset({"deallocate", "start", "get", "list"})
OUTAGE_KINDS: Final = frozenset({"error_500", "refuse"})

DEFAULT_STATE_MIX: Final[Mapping[str, float]] = {
    "idle": 0.55,
    "running": 0.30,
    "starting": 0.04,
    "unusable": 0.03,
    "starttaskfailed": 0.03,
    "offline": 0.02,
    "deallocated": 0.03,
}


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{attribute.name} must be whole seconds >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class FaultConfig:
    """Injected faults, each a probability per request of an affected operation.

    Attributes:
        error_500: Answer ``500 InternalError`` without processing.
        error_503: Answer ``503 ServiceUnavailable`` (no Retry-After: an outage, not throttling) without processing.
        reset_before: Reset the connection before processing (nothing changes).
        reset_after: Apply the change, then reset the connection (the ambiguous case a client must reconcile).
        slow: Apply the change, then answer only after ``slow_seconds`` (slower than a client's timeout).
        slow_seconds: See ``slow``.
        html_502: Answer a proxy's HTML ``502 Bad Gateway`` page without processing.
        truncated_json: Answer ``500`` with a BatchError body cut in half, without processing.
        server_busy: Throttle: answer ``503 ServerBusy`` without processing (counted as throttled).
        server_busy_retry_after: The Retry-After (whole seconds) of those 503s; ``None`` (the default): no header,
            since whether the service always sends one is unconfirmed.
        too_many_requests: Throttle: answer ``429 TooManyRequests`` without processing (counted as throttled).
        too_many_requests_retry_after: The Retry-After (whole seconds) of those 429s.
        latency: Seconds added to every answer of an affected operation, after processing (the way back).
        latency_jitter: Up to this many more seconds, uniformly.
        latency_before: Seconds a request of an affected operation travels before it is processed (before
            authentication, throttling and any change); a one-way latency ``L`` is ``latency_before=L, latency=L``.
        operations: The operations faults apply to (``deallocate``, ``start``, ``get``, ``list``).
    """

    error_500: float = attrs.field(default=0.0, validator=_probability)
    error_503: float = attrs.field(default=0.0, validator=_probability)
    reset_before: float = attrs.field(default=0.0, validator=_probability)
    reset_after: float = attrs.field(default=0.0, validator=_probability)
    slow: float = attrs.field(default=0.0, validator=_probability)
    slow_seconds: float = attrs.field(default=40.0, validator=_non_negative)
    html_502: float = attrs.field(default=0.0, validator=_probability)
    truncated_json: float = attrs.field(default=0.0, validator=_probability)
    server_busy: float = attrs.field(default=0.0, validator=_probability)
    server_busy_retry_after: int | None = attrs.field(default=None, validator=_seconds)
    too_many_requests: float = attrs.field(default=0.0, validator=_probability)
    too_many_requests_retry_after: int = attrs.field(default=1, validator=_seconds)
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    latency_jitter: float = attrs.field(default=0.0, validator=_non_negative)
    latency_before: float = attrs.field(default=0.0, validator=_non_negative)
    operations: frozenset[str] = attrs.field(default=OPERATIONS, converter=frozenset)

    @operations.validator
    def _check_operations(self, _: attrs.Attribute[frozenset[str]], value: frozenset[str]) -> None:
        if not value <= OPERATIONS:
            raise ValueError(f"operations must be among {sorted(OPERATIONS)}, got {sorted(value)}")

    @classmethod
    def mixed(cls, rate: float, **overrides: object) -> FaultConfig:
        """A realistic mix totalling about ``rate``: half server errors, the rest resets and bad bodies."""
        mix = {
            "error_500": rate * 0.3,
            "error_503": rate * 0.2,
            "reset_before": rate * 0.2,
            "reset_after": rate * 0.15,
            "html_502": rate * 0.1,
            "truncated_json": rate * 0.05,
        }
        mix.update(overrides)  # type: ignore[arg-type]
        return cls(**mix)  # type: ignore[arg-type]

    @property
    def any_before(self) -> bool:
        """Whether any fault can happen before processing."""
        errors = self.error_500 + self.error_503 + self.reset_before + self.html_502 + self.truncated_json
        return errors + self.server_busy + self.too_many_requests > 0


def _outage_kind(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value not in OUTAGE_KINDS:
        raise ValueError(f"an outage's kind is one of {sorted(OUTAGE_KINDS)}, got {value!r}")


@attrs.frozen
class Outage:
    """A window of run time in which the service is down (run time 0: see ``EmulatorConfig``).

    Attributes:
        start: Seconds of run time at which the window begins.
        duration: Its length in seconds.
        kind: ``error_500``: every request is answered ``500 InternalError`` without processing;
            ``refuse``: the emulator stops listening (connections are refused; open ones are aborted), and
            listens again on the same port when the window ends.
    """

    start: float = attrs.field(validator=_non_negative)
    duration: float = attrs.field(validator=_positive)
    kind: Literal["error_500", "refuse"] = attrs.field(validator=_outage_kind)

    @property
    def end(self) -> float:
        """Seconds of run time at which the window ends."""
        return self.start + self.duration

    def covers(self, run_time: float) -> bool:
        """Whether ``run_time`` falls in the window (its end excluded)."""
        return self.start <= run_time < self.end


def _pools(value: Mapping[str, int]) -> Mapping[str, int]:
    pools = dict(value)
    for pool, count in pools.items():
        if not isinstance(pool, str) or not pool or len(pool) > 64:  # noqa: PLR2004 (the service's limit)
            raise ValueError(f"pool id {pool!r} must be 1..64 characters")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"pool {pool!r} needs a node count >= 0, got {count!r}")
    return pools


def _schedule(value: Iterable[tuple[float, float | None]]) -> tuple[tuple[float, float | None], ...]:
    steps: list[tuple[float, float | None]] = []
    for step in value:
        at, rate = step
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
            raise ValueError(f"throttle_schedule times must be finite seconds >= 0, got {at!r}")
        if steps and at <= steps[-1][0]:
            raise ValueError(f"throttle_schedule times must ascend, got {at!r} after {steps[-1][0]!r}")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0
        ):
            raise ValueError(f"throttle_schedule rates must be > 0 (or None for unlimited), got {rate!r}")
        steps.append((float(at), None if rate is None else float(rate)))
    return tuple(steps)


def _outages(value: Iterable[Outage]) -> tuple[Outage, ...]:
    outages = tuple(value)
    for outage in outages:
        if not isinstance(outage, Outage):
            raise TypeError(f"outages must be Outage values, got {outage!r}")
    return outages


def _mix(value: Mapping[str, float]) -> Mapping[str, float]:
    mix = dict(value)
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError("state_mix needs non-negative weights with a positive sum")
    return mix


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """Everything the emulator does, in one value; replace fields at runtime with ``BatchEmulator.update``.

    Attributes:
        pools: Pool id to node count.
        seed: Seeds every random choice (ids, states, faults), so a run can be replayed.
        account_name: The account name Shared Key requests must carry.
        account_key: The account key (base64); derived from the seed when not given.
        state_mix: Weights of the states nodes start in.
        deallocate_delay: Seconds a node stays ``deallocating``.
        taskcompletion_delay: The same for ``taskcompletion``/``retaineddata`` on a ``running`` node.
        start_delay: Seconds a started node takes to become ``idle`` (``starting`` all along), or to end
            ``starttaskfailed`` (half ``starting``, then half ``waitingforstarttask``).
        start_task_failure: The share of started nodes (drawn from a seeded RNG, in the order they are started)
            whose start task fails: they end ``starttaskfailed`` instead of ``idle``.
        auth: Check credentials (False: accept any request).
        bearer_tokens: Bearer tokens accepted besides Shared Key.
        token_validator: Decides on other Bearer tokens (e.g. tokens that carry their own expiry in tests).
        accept_sdk_timeout_variant: Also accept the Python SDK's Shared Key form, which keeps ``timeOut``'s
            case in the canonical query (counted in stats).
        max_clock_skew: Seconds an ``ocp-date``/``Date`` may be off (the service's 15 minutes).
        throttle_rps: Requests per second for the whole account; ``None`` for no throttling.
        throttle_burst: The token bucket's size.
        throttle_window: Seconds: a window limiter instead of the token bucket, granting at most the rate
            (``throttle_rps`` or the schedule's) times ``throttle_window`` requests per window (the burst is then
            unused): fixed windows, counted afresh as each begins, or with ``throttle_sliding`` any span of that
            many seconds. ``None``: the token bucket.
        throttle_sliding: A sliding window rather than fixed ones (with ``throttle_window``).
        throttle_status: 429 (TooManyRequests) or 503 (ServerBusy) when throttled.
        throttle_schedule: Steps ``(at, rate)`` of run time: from ``at`` seconds on, the token bucket fills at
            ``rate`` requests per second (``None``: unlimited). Times ascend from 0; before the first step (if it
            is later than 0) there is no limit. A rate change keeps the tokens in the bucket (the burst stays
            ``throttle_burst``); after an unlimited step the bucket starts full. Given, it replaces
            ``throttle_rps``.
        outages: Windows of run time in which the service is down (see :class:`Outage`).
        faults: Injected faults.
        max_results: The service's default and maximum page size.
        timeline_bin: The width in seconds of the bins of the stats' timeline.

    Run time 0, the origin of ``throttle_schedule``, ``outages`` and the stats' timeline, is the moment the
    first Deallocate or Start request arrives (so a client can list nodes first); until then run time is taken
    as 0 (the step at 0 applies, no outage does). ``BatchEmulator.update`` resets it: the next Deallocate or
    Start starts the clock again, and a new timeline. The clock is the emulator's (injected) ``clock``.
    """

    pools: Mapping[str, int] = attrs.field(factory=lambda: {"pool-1": 100}, converter=_pools)
    seed: int = 0
    account_name: str = "emulator"
    account_key: str | None = None
    state_mix: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_STATE_MIX), converter=_mix)
    deallocate_delay: float = attrs.field(default=2.0, validator=_non_negative)
    taskcompletion_delay: float = attrs.field(default=6.0, validator=_non_negative)
    start_delay: float = attrs.field(default=2.0, validator=_non_negative)
    start_task_failure: float = attrs.field(default=0.0, validator=_probability)
    auth: bool = True
    bearer_tokens: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset, repr=False)
    token_validator: Callable[[str], bool] | None = attrs.field(default=None, repr=False, eq=False)
    accept_sdk_timeout_variant: bool = True
    max_clock_skew: float = attrs.field(default=900.0, validator=_non_negative)
    throttle_rps: float | None = None
    throttle_burst: int = 30
    throttle_window: float | None = None
    throttle_sliding: bool = False
    throttle_status: int = 429
    throttle_schedule: tuple[tuple[float, float | None], ...] = attrs.field(default=(), converter=_schedule)
    outages: tuple[Outage, ...] = attrs.field(default=(), converter=_outages)
    faults: FaultConfig = attrs.field(factory=FaultConfig)
    max_results: int = 1000
    timeline_bin: float = attrs.field(default=0.1, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.throttle_rps is not None and not self.throttle_rps > 0:
            raise ValueError("throttle_rps must be > 0 (or None for no throttling)")
        if self.throttle_burst < 1:
            raise ValueError("throttle_burst must be >= 1")
        if self.throttle_window is not None and not self.throttle_window > 0:
            raise ValueError("throttle_window must be > 0 (or None for the token bucket)")
        if self.throttle_sliding and self.throttle_window is None:
            raise ValueError("throttle_sliding needs throttle_window (the window's length)")
        if self.throttle_status not in {429, 503}:
            raise ValueError("throttle_status must be 429 or 503")

    @property
    def key(self) -> str:
        """The account key in use (given, or derived from the seed)."""
        if self.account_key is not None:
            return self.account_key
        return base64.b64encode(random.Random(f"key-{self.seed}").randbytes(64)).decode()  # noqa: S311 (test key)
