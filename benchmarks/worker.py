"""One contestant, one run, in a process of its own: ``python -m benchmarks.worker '<json spec>'``.

The process pins itself to one core, reads the node ids from a file, runs, and prints one JSON line with its
own CPU time (user + sys), wall time, latencies, peak memory, outcome counts and the file
``batch_dealloc_async`` was imported from (the A/B tool checks it). The orchestrator (``benchmarks/run.py``)
reads the emulator's counters around the run.

Latency is per call, the same for every contestant: from the moment the application starts the node's call
(holding one of ``concurrency`` semaphore slots) until it returns, for the same sampled nodes everywhere.
``deallocate_nodes`` hands nodes to its own workers, so it has no such moment: its run records no latency,
and this library's latency comes from the ``calls`` mode (``deallocate_node`` under the same semaphore).

Options of the traffic-control suite (``benchmarks/control.py``): ``max_rate`` (the client's ceiling),
``start_at`` (epoch seconds: several workers start together) and ``monitor`` (seconds: a ticker beside the run
records how late it wakes, the loop's lag, and the requests the client has sent so far).

Option ``telemetry`` (the tracing scenario of ``benchmarks/run.py``): ``api`` imports opentelemetry-api and sets
no provider (the library finds the API's proxies: off); ``traces`` gives the client an SDK TracerProvider with the
ALWAYS_ON sampler and a BatchSpanProcessor feeding an exporter that only counts (so the figure is the cost of
making, ending and queueing every span, not of an exporter's encoding or network); ``traces+metrics`` adds an SDK
MeterProvider with an in-memory reader. The SDK is imported and set up before the CPU count starts; the processor's
final flush (its thread's CPU included) is inside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import importlib
import json
import os
import resource
import sys
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

import batch_dealloc_async
from batch_dealloc_async import BatchDeallocClient, BatchDeallocError, RetryPolicy, SharedKeyCredential

API = "2025-06-01"
SAMPLE = 16  # latency is recorded for one node in 16, so measuring it costs no contestant noticeable CPU


def sampled(node_id: str) -> bool:
    """Whether this node's latency is recorded: a stable choice (not ``hash()``), the same in every process."""
    return zlib.crc32(node_id.encode()) % SAMPLE == 0


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status in KiB (Linux): VmRSS now, VmHWM its peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS, so imports do not count as the run's peak.

    ru_maxrss cannot be used: Linux carries it over from the parent across fork and exec, so a child
    started by a large parent reports the parent's size as its own peak.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Signer:
    """Shared Key for the bare loop: the documented algorithm, written out the way a hand-rolled client would."""

    def __init__(self, account: str, key: str) -> None:
        self.account = account
        self.key = base64.b64decode(key)

    def headers(self, path: str) -> dict[str, str]:
        date = email.utils.formatdate(usegmt=True)
        string = f"POST\n\n\n0\n\n\n\n\n\n\n\n\nocp-date:{date}\n/{self.account}{path}\napi-version:{API}"
        digest = hmac.new(self.key, string.encode(), hashlib.sha256).digest()
        return {
            "client-request-id": str(uuid.uuid4()),
            "ocp-date": date,
            "Authorization": f"SharedKey {self.account}:{base64.b64encode(digest).decode()}",
        }


async def run_bare(spec: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """The floor: aiohttp, a semaphore, a signature, one POST per node; optionally sleeping Retry-After on 429."""
    signer = Signer(spec["account"], spec["key"])
    semaphore = asyncio.Semaphore(spec["concurrency"])
    latencies: list[float] = []
    failed = 0
    naive_retry = spec.get("naive_retry", False)
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(node_id: str) -> None:
            nonlocal failed
            path = f"/pools/{spec['pool']}/nodes/{node_id}/deallocate"
            url = f"{spec['endpoint']}{path}?api-version={API}"
            async with semaphore:
                started = time.perf_counter()
                for _ in range(50):
                    async with session.post(
                        url, headers=signer.headers(path), skip_auto_headers=("Content-Type",)
                    ) as r:
                        if r.status == 202:
                            if sampled(node_id):
                                latencies.append(time.perf_counter() - started)
                            return
                        await r.read()
                        if not (naive_retry and r.status in {429, 503}):
                            break
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                failed += 1

        async with asyncio.TaskGroup() as group:
            for node_id in ids:
                group.create_task(one(node_id))
    return {"latencies": latencies, "failed": failed}


async def run_ours(spec: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """This library: deallocate_nodes, iter_deallocate_nodes (scale), or deallocate_node per node (calls)."""
    credential = SharedKeyCredential(spec["account"], spec["key"])
    result: dict[str, Any] = {"latencies": []}
    # Only when asked: benchmarks/ab.py runs this worker against revisions older than max_rate (and tracing).
    ceiling = {"max_rate": spec["max_rate"]} if "max_rate" in spec else {}
    telemetry: Telemetry = spec.get("_telemetry") or Telemetry(None)
    async with BatchDeallocClient(
        spec["endpoint"],
        credential,
        max_concurrency=spec["concurrency"],
        adaptive=spec.get("adaptive", True),
        retry=RetryPolicy(),
        **ceiling,
        **telemetry.options,
    ) as client:
        if spec.get("mode") == "iter":
            counts: dict[str, int] = {}
            async for outcome in client.iter_deallocate_nodes(spec["pool"], (n for n in ids)):
                counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
            result["counts"] = counts
            result["failed"] = sum(v for k, v in counts.items() if k not in {"accepted", "deallocated", "skipped"})
        elif spec.get("mode") == "calls":
            result.update(await _calls(client, spec, ids))
        else:
            ticker = Ticker(client, spec.get("monitor"))
            async with asyncio.TaskGroup() as group:
                ticking = group.create_task(ticker.run())
                run = client.start_nodes if spec.get("action") == "start" else client.deallocate_nodes
                report = await run(
                    spec["pool"], (n for n in ids), wait=spec.get("wait", False), deadline=spec.get("deadline")
                )
                ticking.cancel()
            result["counts"] = report.counts
            result["failed"] = sum(not o.ok for o in report.outcomes)
            result["poll_requests"] = report.poll_requests
            result["poll_rounds"] = report.poll_rounds
            if "monitor" in spec:  # the control suite's figures (older revisions, run by ab.py, lack some)
                not_ok = [o for o in report.outcomes if not o.ok]
                result["outages"] = report.outages
                result["probes"] = report.probes
                result["not_ok"] = [o.node_id for o in not_ok]
                result["errors"] = dict(Counter(f"{o.status.value} {o.error_code}" for o in not_ok))
                result.update(ticker.summary())
        result["client_requests"] = client.stats.requests
        result["client_throttled"] = client.stats.throttled
    result.update(telemetry.finish())
    return result


class Ticker:
    """Wakes every ``interval`` seconds beside a run (none: never): how late each wake is, and requests sent."""

    def __init__(self, client: BatchDeallocClient, interval: float | None) -> None:
        self.client = client
        self.interval = interval
        self.lags: list[float] = []
        self.sent: list[tuple[float, int]] = []  # (seconds since the run started, the client's requests)

    async def run(self) -> None:
        if self.interval is None:
            return
        start = due = time.perf_counter()
        while True:
            due += self.interval
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.lags.append(now - due)
            self.sent.append((round(now - start, 4), self.client.stats.requests))
            due = now

    def summary(self) -> dict[str, Any]:
        worst = max(range(len(self.lags)), key=self.lags.__getitem__, default=None)
        return {
            "lag_p99": percentile(self.lags, 0.99),
            "lag_max": None if worst is None else self.lags[worst],
            "lag_max_at": None if worst is None else self.sent[worst][0],
            "sent": self.sent,
        }


async def _calls(client: BatchDeallocClient, spec: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """deallocate_node per node under a semaphore, driven exactly as the bare loop and the SDK are."""
    semaphore = asyncio.Semaphore(spec["concurrency"])
    latencies: list[float] = []
    failed = 0
    measure = spec.get("latency", True)

    async def one(node_id: str) -> None:
        nonlocal failed
        async with semaphore:
            started = time.perf_counter()
            try:
                await client.deallocate_node(spec["pool"], node_id)
            except BatchDeallocError:
                failed += 1
                return
            if measure and sampled(node_id):
                latencies.append(time.perf_counter() - started)

    async with asyncio.TaskGroup() as group:
        for node_id in ids:
            group.create_task(one(node_id))
    return {"latencies": latencies, "failed": failed}


async def run_sdk(spec: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """The official azure-batch 15.1.0 async client under the same semaphore (its default retry policy)."""
    from azure.batch import models  # noqa: PLC0415 (benchmark extra only)
    from azure.batch.aio import BatchClient  # noqa: PLC0415
    from azure.core.credentials import AzureNamedKeyCredential  # noqa: PLC0415

    credential = AzureNamedKeyCredential(spec["account"], spec["key"])
    options = models._models.BatchNodeDeallocateOptions(node_deallocate_option="requeue")  # noqa: SLF001
    semaphore = asyncio.Semaphore(spec["concurrency"])
    latencies: list[float] = []
    failed = 0
    poller = spec.get("poller", False)
    async with BatchClient(spec["endpoint"], credential) as client:

        async def one(node_id: str) -> None:
            nonlocal failed
            async with semaphore:
                started = time.perf_counter()
                try:
                    if poller:
                        lro = await client.begin_deallocate_node(
                            spec["pool"], node_id, options, polling_interval=spec.get("polling_interval", 5)
                        )
                        await lro.result()
                    else:
                        await client._deallocate_node_internal(spec["pool"], node_id, options)  # noqa: SLF001
                except Exception:  # a lost node, whatever the SDK raised
                    failed += 1
                    return
                if sampled(node_id):
                    latencies.append(time.perf_counter() - started)

        async with asyncio.TaskGroup() as group:
            for node_id in ids:
                group.create_task(one(node_id))
    return {"latencies": latencies, "failed": failed}


RUNNERS = {"bare": run_bare, "ours": run_ours, "sdk": run_sdk}


class Telemetry:
    """The providers of the ``telemetry`` option, built before the measurement, and what they recorded."""

    def __init__(self, mode: str | None) -> None:
        self.options: dict[str, Any] = {}
        self.exported: list[int] = []
        self._tracer_provider: Any = None
        self._meter_provider: Any = None
        if mode is None:
            return
        for module in ("opentelemetry.trace", "opentelemetry.metrics"):  # as an application using the API would
            importlib.import_module(module)
        if mode == "api":
            return  # imported, no provider set: the library sees the API's proxies
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON  # noqa: PLC0415

        exported = self.exported

        class Counting(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                exported.append(len(spans))
                return SpanExportResult.SUCCESS

        self._tracer_provider = TracerProvider(sampler=ALWAYS_ON)
        # A queue deep enough that no span is dropped at 20,000 nodes (each node: its span and its request's).
        processor = BatchSpanProcessor(Counting(), max_queue_size=1 << 17, max_export_batch_size=512)
        self._tracer_provider.add_span_processor(processor)
        self.options["tracer_provider"] = self._tracer_provider
        if mode == "traces+metrics":
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

            self._meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            self.options["meter_provider"] = self._meter_provider

    def finish(self) -> dict[str, Any]:
        """Flush (the spans still queued are exported now, inside the measurement); the spans exported."""
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()
        return {"spans_exported": sum(self.exported)} if self._tracer_provider is not None else {}


def main() -> None:
    spec = json.loads(sys.argv[1])
    pin(spec.get("core"))
    ids = Path(spec["ids_file"]).read_text().split()
    if spec.get("count"):
        ids = ids[: spec["count"]]
    if spec.get("start_at"):  # several workers at once: all imports done, they start together
        time.sleep(max(0.0, spec["start_at"] - time.time()))
    spec["_telemetry"] = Telemetry(spec.get("telemetry"))  # imports and providers: not measured
    reset_peak_rss()
    baseline_rss = status_kib("VmRSS")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    wall = time.perf_counter()
    result = asyncio.run(RUNNERS[spec["contestant"]](spec, ids))
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    latencies = result.pop("latencies")
    result.update(
        nodes=len(ids),
        cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        wall=wall,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        peak_rss_growth_mib=max(0, status_kib("VmHWM") - baseline_rss) / 1024,
        library=batch_dealloc_async.__file__,
        started=started,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
