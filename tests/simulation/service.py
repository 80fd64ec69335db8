"""A simulated Batch service, and an :class:`~batch_dealloc_async.Exchange` that reaches it, on virtual time.

The model is what traffic control reacts to, and nothing else: one account-wide token bucket whose rate may
follow a schedule, a one-way latency each way (with jitter), random throttling answers (``503 ServerBusy``
without Retry-After, ``429`` with ``Retry-After: 1``), random ``500`` errors, outage windows (every request
answered ``500``, or connections refused), and stalls (every answer held until the stall ends: a pause in the
service, or in the client's event loop). Nodes are idle until deallocated (then a second deallocate is a
``409``), and Get Node reads their state, so the client's reconciliation runs too.

The real client (limiter, retries, bulk engine) runs on top through :class:`SimExchange`, on a
:class:`~tests.virtual_time.VirtualTimeLoop`: a minute of traffic takes a second or two of CPU, deterministically.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from multidict import CIMultiDict

from batch_dealloc_async import ExchangeError, Reply

JSON: Final = "application/json;odata=minimalmetadata"


@dataclass(frozen=True)
class Outage:
    """Every request in ``[start, start + duration)`` is answered ``500`` (``kind='error_500'``) or refused."""

    start: float
    duration: float
    kind: str = "error_500"

    def covers(self, t: float) -> bool:
        return self.start <= t < self.start + self.duration


@dataclass(frozen=True)
class ServiceModel:
    """What the simulated service does.

    Attributes:
        rate: Token bucket rate (requests/s), ``None`` for no limit; ``schedule`` overrides it.
        burst: The bucket's size (it starts full).
        window: Seconds: a window limiter instead of the bucket, granting at most ``rate x window`` requests per
            window (``burst`` is then unused): fixed windows (counted afresh when each one begins), or, with
            ``sliding``, any ``window`` seconds (a request is granted when fewer were in the last ``window``).
        schedule: ``(at, rate)`` steps of the bucket's rate (``rate`` None: unlimited), times from the run's start.
        latency: One-way latency in seconds, each way.
        jitter: Up to this much more latency each way, uniformly.
        server_busy: Share of requests answered ``503 ServerBusy`` without Retry-After.
        too_many: Share of requests answered ``429`` with ``Retry-After: 1``.
        error_500: Share of requests answered ``500 InternalError`` (not processed).
        outages: Outage windows.
        stalls: ``(start, duration)`` windows: answers that would reach the client in one arrive at its end.
        background: Requests/s another user of the account sends at random (Poisson) times, taking the bucket's
            tokens as ours do (throttled when it is dry, and not retried): a shared account's steady load.
        slow: ``(share, low, high)``: this share of requests takes ``low``-``high`` seconds more to answer (drawn
            uniformly; a slow backend call), on top of the latency: a heavy tail, as real services have.
        initial_state: Every node's state at first (``deallocated`` for start runs).
        seed: Seeds every random choice.
    """

    rate: float | None = None
    burst: float = 30.0
    window: float = 0.0
    sliding: bool = False
    schedule: tuple[tuple[float, float | None], ...] = ()
    latency: float = 0.0
    jitter: float = 0.0
    server_busy: float = 0.0
    too_many: float = 0.0
    error_500: float = 0.0
    outages: tuple[Outage, ...] = ()
    stalls: tuple[tuple[float, float], ...] = ()
    slow: tuple[float, float, float] | None = None
    background: float = 0.0
    initial_state: str = "idle"
    seed: int = 1

    def rate_at(self, t: float) -> float | None:
        rate = self.rate
        for at, scheduled in self.schedule:
            if t >= at:
                rate = scheduled
        return rate


@dataclass
class Timeline:
    """Counts per bin of send or arrival time, for rates over time and charts."""

    bin: float = 0.1
    sent: Counter[int] = field(default_factory=Counter)
    ok: Counter[int] = field(default_factory=Counter)
    throttled: Counter[int] = field(default_factory=Counter)
    failed: Counter[int] = field(default_factory=Counter)

    def key(self, t: float) -> int:
        return int(t / self.bin)

    def rate(self, counter: Counter[int], start: float, end: float) -> float:
        """Events per second of ``counter`` between two times."""
        keys = range(self.key(start), max(self.key(start) + 1, self.key(end)))
        return sum(counter[k] for k in keys) / (len(keys) * self.bin)


class SimService:
    """The service's state and rules; every method takes the virtual time it happens at."""

    def __init__(self, model: ServiceModel, start: float) -> None:
        self.model = model
        self.start = start
        self.rng = random.Random(f"service-{model.seed}")
        self.tokens = float(model.burst)
        self.last = start
        self.granted: collections.deque[float] = collections.deque()  # a sliding window's grants, oldest first
        self.window_index = 0
        self.window_count = 0
        self.states: dict[str, str] = {}
        self.requests = 0
        self.throttled = 0
        self.errors = 0
        self.accepted = 0
        self.during_outage = 0
        self.timeline = Timeline()
        self.background_rng = random.Random(f"background-{model.seed}")
        self.next_background = start + (self.background_rng.expovariate(model.background) if model.background else 0.0)
        self.background_granted = 0
        self.background_throttled = 0

    def _take(self, t: float) -> float | None:
        """A token, or the seconds until one."""
        rate = self.model.rate_at(t - self.start)
        if rate is None:
            self.last = t
            return None
        if self.model.window:
            return self._window(t, rate * self.model.window)
        if self.model.background:
            self._background(t, rate)
        self.tokens = min(self.model.burst, self.tokens + (t - self.last) * rate)
        self.last = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / rate

    def _background(self, t: float, rate: float) -> None:
        """The other user's requests since the last arrival, each taking a token if there is one."""
        while self.next_background < t:
            at = self.next_background
            self.tokens = min(self.model.burst, self.tokens + (at - self.last) * rate)
            self.last = at
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                self.background_granted += 1
            else:
                self.background_throttled += 1
            self.next_background += self.background_rng.expovariate(self.model.background)

    def _window(self, t: float, quota: float) -> float | None:
        """A window limiter's grant (``None``), or the seconds until it has room."""
        window = self.model.window
        if self.model.sliding:
            granted = self.granted
            while granted and granted[0] <= t - window:
                granted.popleft()
            if len(granted) < quota:
                granted.append(t)
                return None
            return granted[0] + window - t
        index = int((t - self.start) / window)
        if index != self.window_index:
            self.window_index, self.window_count = index, 0
        if self.window_count < quota:
            self.window_count += 1
            return None
        return self.start + (index + 1) * window - t

    def stall_end(self, t: float) -> float | None:
        """When the stall that covers ``t`` ends (``None`` when none does)."""
        since = t - self.start
        return next((self.start + a + d for a, d in self.model.stalls if a <= since < a + d), None)

    def outage(self, t: float) -> Outage | None:
        return next((o for o in self.model.outages if o.covers(t - self.start)), None)

    def handle(self, method: str, path: str, t: float) -> tuple[int, dict[str, str], bytes]:
        """The answer to a request arriving at ``t``."""
        self.requests += 1
        key = self.timeline.key(t - self.start)
        outage = self.outage(t)
        if outage is not None:
            self.during_outage += 1
            self.errors += 1
            self.timeline.failed[key] += 1
            return _error(500, "InternalError", "Server encountered an internal error.")
        wait = self._take(t)
        if wait is not None:
            return self._throttle(key, 429, "TooManyRequests", str(max(1, math.ceil(wait))))
        draw = self.rng.random()
        model = self.model
        if draw < model.server_busy:
            return self._throttle(key, 503, "ServerBusy", None)
        draw -= model.server_busy
        if draw < model.too_many:
            return self._throttle(key, 429, "TooManyRequests", "1")
        draw -= model.too_many
        if draw < model.error_500:
            self.errors += 1
            self.timeline.failed[key] += 1
            return _error(500, "InternalError", "Server encountered an internal error.")
        self.timeline.ok[key] += 1
        return self._operate(method, path)

    def _throttle(self, key: int, status: int, code: str, retry_after: str | None) -> tuple[int, dict[str, str], bytes]:
        self.throttled += 1
        self.timeline.throttled[key] += 1
        status, headers, body = _error(status, code, "The server is busy.")
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return status, headers, body

    def _operate(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        node = parts[3] if len(parts) > 3 else ""
        state = self.states.get(node, self.model.initial_state)
        if method == "POST":
            verb = parts[4]
            allowed, during = (
                ({"idle", "running"}, "deallocating") if verb == "deallocate" else ({"deallocated"}, "starting")
            )
            if state not in allowed:
                return _error(409, "OperationInvalidForCurrentState", f"state {state}")
            self.states[node] = during
            self.accepted += 1
            return 202, {"request-id": f"r{self.requests}"}, b""
        body = json.dumps({"id": node, "state": state}).encode()
        return 200, {"request-id": f"r{self.requests}", "Content-Type": JSON}, body


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"code": code, "message": {"lang": "en-US", "value": message}}).encode()
    return status, {"request-id": "e", "Content-Type": JSON}, body


class SimExchange:
    """The client's HTTP exchange, into :class:`SimService`: latency each way, refusals, timeouts."""

    def __init__(self, service: SimService) -> None:
        self.service = service
        self.rng = random.Random(f"exchange-{service.model.seed}")
        self.slow_rng = random.Random(f"slow-{service.model.seed}")  # apart: the rest draws as without slow answers
        self.refused = 0
        self.log: list[tuple[float, float, int]] = []  # (sent, answered, status), for debugging a run

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    def _delay(self) -> float:
        model = self.service.model
        return model.latency + (self.rng.uniform(0.0, model.jitter) if model.jitter else 0.0)

    def _slow(self) -> float:
        slow = self.service.model.slow
        if slow is None or self.slow_rng.random() >= slow[0]:
            return 0.0
        return self.slow_rng.uniform(slow[1], slow[2])

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        del headers, body, expected, read_body
        loop = asyncio.get_running_loop()
        service = self.service
        sent = loop.time()
        service.timeline.sent[service.timeline.key(loop.time() - service.start)] += 1
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(self._delay())
                outage = service.outage(loop.time())
                if outage is not None and outage.kind == "refuse":
                    service.during_outage += 1
                    self.refused += 1
                    await asyncio.sleep(self._delay())  # the RST comes back
                    raise ExchangeError("connect", "cannot connect (connection refused)")
                status, reply_headers, reply_body = service.handle(
                    method, url.split("://", 1)[1].partition("/")[2], loop.time()
                )
                await asyncio.sleep(self._delay() + self._slow())
                if (end := service.stall_end(loop.time())) is not None:
                    await asyncio.sleep(end - loop.time())
        except TimeoutError:
            raise ExchangeError("timeout", f"no response within {timeout:.1f} s") from None
        self.log.append((sent, loop.time(), status))
        return Reply(status, CIMultiDict(reply_headers), reply_body)
