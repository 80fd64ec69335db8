"""OpenTelemetry: the spans, events and metrics of calls, attempts and bulk runs, read back from the SDK in memory.

Every client here gets its own SDK providers (``tracer_provider=``, ``meter_provider=``): no test touches the
global ones. The fake service answers through the Exchange seam, on the fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any, Final

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from batch_dealloc_async import BatchDeallocClient, ExchangeError, NotFoundError, OutcomeStatus, SharedKeyCredential
from tests.conftest import ENDPOINT, REFERENCE_ACCOUNT, REFERENCE_KEY
from tests.otel_recorder import Recorder
from tests.simulation.service import Outage, ServiceModel, SimExchange, SimService
from tests.unit.fake_batch import FakeBatch, error_body
from tests.virtual_time import run_virtual

HOST: Final = "myaccount.westus.batch.azure.com"
ROOT: Final = Path(__file__).resolve().parents[2]
POOL: Final = {"n1": "idle", "n2": "running", "n3": "idle", "n4": "deallocated"}
CONFLICT: Final = (409, {}, error_body("OperationInvalidForCurrentState"))


@pytest.fixture
def recorder():
    recording = Recorder()
    yield recording
    recording.shutdown()


@pytest.fixture
def traced(make_client, recorder):
    """A client of the fake service that records into ``recorder``."""

    def make(service: FakeBatch) -> BatchDeallocClient:
        return make_client(exchange=service, **recorder.providers())

    return make


def base(**extra: Any) -> dict[str, Any]:
    return {"server.address": HOST, "server.port": 443, **extra}


# ---------------------------------------------------------------------------------------------------- one call


async def test_a_retried_call_is_one_internal_span_over_a_client_span_per_attempt(traced, recorder) -> None:
    """503 then 202: one INTERNAL call span over two CLIENT spans carrying the HTTP attributes, integers as integers."""
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [(503, {}, error_body("InternalError"))]})
    async with traced(service) as client:
        result = await client.deallocate_node("pool1", "n1")
    (call,) = recorder.named("BatchDeallocClient.deallocate_node")
    assert call.kind is SpanKind.INTERNAL
    assert call.parent is None
    assert dict(call.attributes or {}) == {
        "az.namespace": "Microsoft.Batch",
        "batch.pool.id": "pool1",
        "batch.node.id": "n1",
    }
    assert call.status.status_code is StatusCode.UNSET
    first, second = recorder.children(call)
    attempt = {
        "az.namespace": "Microsoft.Batch",
        "http.request.method": "POST",
        "url.full": service.sent[0].url,
        **base(),
        "az.client_request_id": result.client_request_id,
    }
    assert (first.name, first.kind, second.name, second.kind) == ("POST", SpanKind.CLIENT, "POST", SpanKind.CLIENT)
    assert dict(first.attributes or {}) == {
        **attempt,
        "http.response.status_code": 503,
        "az.service_request_id": "svc-1",
        "error.type": "503",
    }
    assert first.status.status_code is StatusCode.ERROR
    assert dict(second.attributes or {}) == {
        **attempt,
        "http.request.resend_count": 1,
        "http.response.status_code": 202,
        "az.service_request_id": "svc-2",
    }
    assert second.status.status_code is StatusCode.UNSET
    assert {s.context.trace_id for s in (call, first, second) if s.context is not None} == {call.context.trace_id}


async def test_a_404_ends_the_attempt_and_the_call_in_error(traced, recorder) -> None:
    """A 404: the attempt has status code 404 and error.type "404"; the call ends ERROR with the exception's type."""
    async with traced(FakeBatch({"pool1": dict(POOL)})) as client:
        with pytest.raises(NotFoundError):
            await client.deallocate_node("pool1", "missing")
    (call,) = recorder.named("BatchDeallocClient.deallocate_node")
    assert call.status.status_code is StatusCode.ERROR
    assert "NodeNotFound" in (call.status.description or "")
    assert call.attributes is not None
    assert call.attributes["error.type"] == "batch_dealloc_async.NotFoundError"
    (attempt,) = recorder.children(call)
    assert attempt.attributes is not None
    assert (attempt.attributes["http.response.status_code"], attempt.attributes["error.type"]) == (404, "404")
    assert attempt.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("kind", ["connect", "timeout", "io"])
async def test_an_attempt_without_an_answer_has_the_exchange_failure_as_error_type(traced, recorder, kind) -> None:
    """A transport failure, then 202: the failed attempt has error.type = the failure's kind and no status code."""
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [ExchangeError(kind, "it failed")]})
    async with traced(service) as client:
        await client.deallocate_node("pool1", "n1")
    (call,) = recorder.named("BatchDeallocClient.deallocate_node")
    failed, ok = recorder.children(call)
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == kind
    assert "http.response.status_code" not in failed.attributes
    assert failed.status.status_code is StatusCode.ERROR
    assert ok.attributes is not None
    assert ok.attributes["http.response.status_code"] == 202


async def test_a_throttled_answer_is_an_event_with_its_retry_after_and_counted(traced, recorder) -> None:
    """429 with Retry-After: an event on the call's span naming it, the throttled and retries counters at one."""
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [(429, {"Retry-After": "2"}, error_body("TooManyRequests"))]})
    async with traced(service) as client:
        await client.deallocate_node("pool1", "n1")
    (call,) = recorder.named("BatchDeallocClient.deallocate_node")
    (event,) = call.events
    assert (event.name, dict(event.attributes or {})) == (
        "throttled",
        {"http.response.status_code": 429, "retry_after": 2.0},
    )
    assert recorder.points("batch_dealloc_async.throttled") == [(base(), 1)]
    assert recorder.points("batch_dealloc_async.retries") == [
        (base(**{"http.request.method": "POST", "http.response.status_code": 202}), 1)
    ]


async def test_a_reconciliation_is_an_event_and_its_get_is_an_attempt_of_the_call(traced, recorder) -> None:
    """A timeout then a 409: the Get Node that confirms the first attempt worked is a child, the outcome an event."""
    steps = [ExchangeError("timeout", "no response"), CONFLICT]
    async with traced(FakeBatch({"pool1": dict(POOL)}, {"n1": steps})) as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.reconciled
    (call,) = recorder.named("BatchDeallocClient.deallocate_node")
    assert [(e.name, dict(e.attributes or {})) for e in call.events] == [
        ("reconciliation", {"batch.reconciled": True, "batch.node.state": "deallocating"})
    ]
    assert [s.name for s in recorder.children(call)] == ["POST", "POST", "GET"]


async def test_request_metrics_carry_method_status_error_and_server(traced, recorder) -> None:
    """503 then 202: one duration point per outcome, with the HTTP attributes; requests 2, retries 1."""
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [(503, {}, error_body("InternalError"))]})
    async with traced(service) as client:
        await client.deallocate_node("pool1", "n1")
    failed = base(**{"http.request.method": "POST", "http.response.status_code": 503, "error.type": "503"})
    ok = base(**{"http.request.method": "POST", "http.response.status_code": 202})
    duration = recorder.points("http.client.request.duration")
    assert sorted(duration, key=str) == sorted([(failed, 1), (ok, 1)], key=str)
    assert sorted(recorder.points("batch_dealloc_async.requests"), key=str) == sorted([(failed, 1), (ok, 1)], key=str)
    assert recorder.points("batch_dealloc_async.retries") == [(ok, 1)]


# ---------------------------------------------------------------------------------------------------- bulk runs


async def test_a_bulk_run_is_one_call_span_over_listings_and_a_span_per_node(traced, recorder) -> None:
    """deallocate_pool: one call span with pool ids and counts over its listings and one span per node and outcome."""
    service = FakeBatch({"pool1": dict(POOL)}, {"n3": [CONFLICT]})
    async with traced(service) as client:
        report = await client.deallocate_pool("pool1")
    assert report.counts[OutcomeStatus.ACCEPTED] == 2
    calls = [s for s in recorder.spans() if s.name.startswith("BatchDeallocClient.")]
    assert [s.name for s in calls] == ["BatchDeallocClient.deallocate_pool"]
    (call,) = calls
    assert dict(call.attributes or {}) == {
        "az.namespace": "Microsoft.Batch",
        "batch.pool.ids": ("pool1",),
        **{f"batch.outcomes.{s.value}": 0 for s in OutcomeStatus},
        "batch.outcomes.accepted": 2,
        "batch.outcomes.failed": 1,
        "batch.outcomes.skipped": 1,
    }
    children = recorder.children(call)
    assert sorted(s.name for s in children) == ["GET", "GET", "deallocate node", "deallocate node", "deallocate node"]
    nodes = {s.attributes["batch.node.id"]: s for s in children if s.name == "deallocate node" and s.attributes}
    assert sorted(nodes) == ["n1", "n2", "n3"]
    for node_id, span in nodes.items():
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes is not None
        assert span.attributes["batch.pool.id"] == "pool1"
        requests = recorder.children(span)
        if node_id == "n3":  # the 409, then the Get Node that reads its state
            assert span.attributes["batch.outcome.status"] == "failed"
            assert span.attributes["error.type"] == "batch_dealloc_async.ConflictError"
            assert span.status.status_code is StatusCode.ERROR
            assert [(r.name, r.attributes["http.response.status_code"]) for r in requests if r.attributes] == [
                ("POST", 409),
                ("GET", 200),
            ]
        else:
            assert span.attributes["batch.outcome.status"] == "accepted"
            assert span.status.status_code is StatusCode.UNSET
            assert [r.name for r in requests] == ["POST"]


async def test_node_outcomes_and_limiter_gauges_are_metrics(traced, recorder) -> None:
    """After a bulk run: node outcomes by operation and status; the limiter's window and rate as gauges."""
    async with traced(FakeBatch({"pool1": dict(POOL)}, {"n3": [CONFLICT]})) as client:
        await client.deallocate_pool("pool1")
        limit, rate = client.limiter.limit, client.limiter.rate
    outcomes = {
        attributes["batch.outcome.status"]: value
        for attributes, value in recorder.points("batch_dealloc_async.node.outcomes")
    }
    assert outcomes == {"accepted": 2, "failed": 1, "skipped": 1}
    (attributes, _), *_ = recorder.points("batch_dealloc_async.node.outcomes")
    assert attributes["batch.operation"] == "deallocate"
    assert recorder.points("batch_dealloc_async.limiter.window") == [(base(), limit)]
    assert rate is not None
    assert recorder.points("batch_dealloc_async.limiter.rate") == [(base(), rate)]


async def test_a_stream_is_one_span_and_leaves_the_callers_calls_their_own(traced, recorder) -> None:
    """list_nodes is a span over its pages; the caller's calls between items are spans of their own, not nested."""
    async with traced(FakeBatch({"pool1": dict(POOL)})) as client:
        async for node in client.list_nodes("pool1"):
            await client.get_node("pool1", node.id)
    (listing,) = recorder.named("BatchDeallocClient.list_nodes")
    assert [s.name for s in recorder.children(listing)] == ["GET"]
    gets = recorder.named("BatchDeallocClient.get_node")
    assert len(gets) == 4
    assert all(s.parent is None and [c.name for c in recorder.children(s)] == ["GET"] for s in gets)


async def test_iter_deallocate_nodes_is_one_span_over_its_nodes(traced, recorder) -> None:
    """iter_deallocate_nodes: one call span with the pool and the counts, a node span per node under it."""
    async with traced(FakeBatch({"pool1": dict(POOL)})) as client:
        outcomes = [o async for o in client.iter_deallocate_nodes("pool1", ["n1", "n2"])]
    assert len(outcomes) == 2
    (call,) = recorder.named("BatchDeallocClient.iter_deallocate_nodes")
    assert call.attributes is not None
    assert (call.attributes["batch.pool.ids"], call.attributes["batch.outcomes.accepted"]) == (("pool1",), 2)
    assert sorted(s.name for s in recorder.children(call)) == ["deallocate node", "deallocate node"]


async def test_leaving_a_stream_early_ends_its_span_without_error(traced, recorder) -> None:
    """Closing iter_deallocate_nodes after one outcome ends its span (status unset) and the run's node spans."""
    async with traced(FakeBatch({"pool1": {f"n{i}": "idle" for i in range(50)}})) as client:
        stream = client.iter_deallocate_nodes("pool1", [f"n{i}" for i in range(50)])
        async with contextlib.aclosing(stream) as outcomes:
            async for _ in outcomes:
                break
    (call,) = recorder.named("BatchDeallocClient.iter_deallocate_nodes")
    assert call.status.status_code is StatusCode.UNSET
    assert call.end_time is not None
    assert all(s.parent is not None for s in recorder.named("deallocate node"))


async def test_a_public_call_from_a_callback_records_its_requests_under_the_run(traced, recorder) -> None:
    """get_node awaited from on_outcome runs inside deallocate_pool: no span of its own, its GET is the run's."""
    async with traced(FakeBatch({"pool1": dict(POOL)})) as client:
        await client.deallocate_pool("pool1", on_outcome=lambda o: client.get_node(o.pool_id, o.node_id))
    assert [s.name for s in recorder.spans() if s.name.startswith("BatchDeallocClient.")] == [
        "BatchDeallocClient.deallocate_pool"
    ]
    (call,) = recorder.named("BatchDeallocClient.deallocate_pool")
    node_reads = [s for s in recorder.children(call) if s.name == "GET" and "/nodes/n" in str(s.attributes)]
    assert len(node_reads) == 4


async def test_node_spans_are_not_kept_once_ended(make_client) -> None:
    """A run of 300 nodes keeps no node span alive: once the SDK lets go of them (no exporter), all are freed."""

    class Watch(SpanProcessor):
        def __init__(self) -> None:
            self.refs: list[weakref.ref[Any]] = []

        def on_start(self, span, parent_context=None) -> None:
            if span.name == "deallocate node":
                self.refs.append(weakref.ref(span))

    watch = Watch()
    provider = TracerProvider()
    provider.add_span_processor(watch)
    service = FakeBatch({"pool1": {f"n{i}": "idle" for i in range(300)}})
    async with make_client(exchange=service, tracer_provider=provider) as client:
        report = await client.deallocate_pool("pool1")
        gc.collect()
        alive = [ref for ref in watch.refs if ref() is not None]
    provider.shutdown()
    assert report.counts[OutcomeStatus.ACCEPTED] == 300
    assert len(watch.refs) == 300
    assert alive == []


# ------------------------------------------------------------------------------------------- traffic control


def test_traffic_control_changes_are_events_on_the_run_span_and_info_logs(recorder, caplog) -> None:
    """Rate cuts, state changes and the breaker are events on the run's span and log lines; throttles node events."""
    caplog.set_level(logging.INFO, logger="batch_dealloc_async")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        model = ServiceModel(rate=100.0, burst=10.0, latency=0.01, outages=(Outage(3.0, 2.0),))
        service = SimService(model, loop.time())
        client = BatchDeallocClient(
            ENDPOINT,
            SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY),
            exchange=SimExchange(service),
            clock=loop.time,
            sleep=asyncio.sleep,
            wall_clock=lambda: 1_750_000_000.0 + loop.time(),
            rng=random.Random(1),
            **recorder.providers(),
        )
        async with client:
            report = await client.deallocate_nodes("pool", [f"n{i}" for i in range(700)])
        assert report.counts[OutcomeStatus.ACCEPTED] == 700

    run_virtual(main())
    (call,) = recorder.named("BatchDeallocClient.deallocate_nodes")
    events = {e.name for e in call.events}
    assert {"traffic.rate_cut", "traffic.state", "traffic.breaker_open", "traffic.breaker_closed"} <= events
    cut = next(e for e in call.events if e.name == "traffic.rate_cut")
    assert cut.attributes is not None
    assert cut.attributes["traffic.rate"] < cut.attributes["traffic.rate.before"]
    throttled = [e for s in recorder.named("deallocate node") for e in s.events if e.name == "throttled"]
    assert throttled
    messages = [r.getMessage() for r in caplog.records if r.name == "batch_dealloc_async.traffic"]
    assert any("rate cut" in m for m in messages)
    assert any("holding requests" in m for m in messages)
    assert any("answers again" in m for m in messages)
    assert any(r.levelno == logging.INFO and r.getMessage().startswith("traffic: startup -> ") for r in caplog.records)


# ------------------------------------------------------------------------------------------------------ off


@pytest.mark.parametrize(
    "providers",
    [{}, {"tracer_provider": NoOpTracerProvider(), "meter_provider": NoOpMeterProvider()}],
    ids=["global proxies", "no-op providers"],
)
async def test_without_a_provider_nothing_is_recorded_and_the_limiter_has_no_observer(make_client, providers) -> None:
    """No SDK provider (the API's proxies, or no-ops passed in): telemetry stays off and calls work as before."""
    async with make_client(exchange=FakeBatch({"pool1": dict(POOL)}), **providers) as client:
        await client.deallocate_node("pool1", "n1")
        report = await client.deallocate_pool("pool1")
        assert client._telemetry.on is False
        assert client.limiter.observer is None
    assert report.counts[OutcomeStatus.ACCEPTED] == 2  # n2 and n3: n1 was deallocated just before


def test_a_global_provider_is_found_at_open_and_within_a_second_after() -> None:
    """Global providers set before opening are used at once; set later, they are found within a second."""
    code = """
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential
from tests.conftest import FakeClock, REFERENCE_KEY
from tests.unit.fake_batch import FakeBatch

async def main() -> None:
    clock = FakeClock()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    key = SharedKeyCredential("myaccount", REFERENCE_KEY)
    service = FakeBatch({"p": {"a": "idle", "b": "idle"}})
    client = BatchDeallocClient("https://myaccount.westus.batch.azure.com", key, exchange=service,
                                clock=clock.monotonic, sleep=clock.sleep, wall_clock=clock.time)
    async with client:
        await client.get_node("p", "a")
        trace.set_tracer_provider(provider)
        clock.advance(0.5)
        await client.get_node("p", "a")
        clock.advance(0.6)
        await client.get_node("p", "b")
    names = [(s.name, dict(s.attributes).get("batch.node.id")) for s in exporter.get_finished_spans()]
    assert names == [("GET", None), ("BatchDeallocClient.get_node", "b")], names

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_importing_the_package_loads_no_opentelemetry() -> None:
    """The package imports no OpenTelemetry module unless the application uses it, and never the SDK."""
    code = """
import asyncio, sys
import batch_dealloc_async
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
from batch_dealloc_async import BatchDeallocClient, SharedKeyCredential
from tests.conftest import REFERENCE_KEY
from tests.unit.fake_batch import FakeBatch

async def main() -> None:
    key = SharedKeyCredential("myaccount", REFERENCE_KEY)
    service = FakeBatch({"p": {"a": "idle"}})
    async with BatchDeallocClient("https://myaccount.westus.batch.azure.com", key, exchange=service) as client:
        await client.deallocate_node("p", "a")

asyncio.run(main())
assert not [m for m in sys.modules if m.startswith("opentelemetry")], "an application without it imports none"
import opentelemetry.trace
asyncio.run(main())
assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")], "the SDK was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
