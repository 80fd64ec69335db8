"""A small aiohttp.web service that deallocates and starts Azure Batch pools: the library inside a web backend.

Try it against the local emulator (from the repository root)::

    python -m examples.web_service --emulator            # prints the URL and curl commands to paste

or against an account: ``--endpoint`` (or ``BATCH_ENDPOINT``) and a credential from the environment, read as
the CLI reads it (``BATCH_ACCOUNT_NAME``/``BATCH_ACCOUNT_KEY``, ``AZURE_TENANT_ID``/``AZURE_CLIENT_ID`` with
``AZURE_CLIENT_SECRET`` or ``AZURE_CLIENT_CERTIFICATE_PATH``, or ``--managed-identity``).

Routes:

- ``POST /pools/{pool_id}/deallocate`` and ``POST /pools/{pool_id}/start`` start a run in the background and
  answer ``202`` with its summary and ``Location: /runs/{id}``. The optional JSON body is
  ``{"nodes": [...], "wait": bool, "option": "requeue|terminate|taskcompletion|retaineddata", "deadline": s}``
  (no ``nodes``: the whole pool; ``option`` is for deallocate only). Bad JSON, an unknown key, an unknown
  option or an invalid id is a ``400``, and nothing is sent to the service. A pool with a run in progress
  answers ``409`` naming that run (and its ``Location``).
- ``GET /runs/{id}``: state (``running``, ``done``, ``cancelled``, ``failed``), counts by status so far,
  failures by error code, elapsed seconds, and the outcomes, paged (``?offset=0&limit=100``, limit 0..1000).
- ``GET /runs/{id}/events``: every outcome as it happens, as NDJSON, or as server-sent events when the
  request accepts ``text/event-stream``. It starts with the outcomes already produced (``?offset=`` or SSE's
  ``Last-Event-ID`` resumes later), and ends with one ``end`` record, the run's summary, once the run ends.
  Any number of subscribers; one that disconnects does not cancel the run.
- ``DELETE /runs/{id}`` cancels a run and answers ``200`` with its report. A finished run is left as it
  is and its report returned: DELETE is idempotent, so a client may retry it safely.
- ``GET /health`` answers ``{"status": "ok"}`` straight away.

The rules it demonstrates:

1. **One client per process, shared by every request.** :func:`make_app` opens one ``BatchDeallocClient``
   in a cleanup context and closes it on shutdown. Never one per request: each owns a connection pool, a
   token cache and the limiter below.
2. **Never ``asyncio.run`` (or anything blocking) in a handler.** The server's loop is already running: a
   handler starts the run as a task in that loop and answers at once. The task is owned by the registry
   (:class:`Runs`), which cancels and awaits it on shutdown: no fire-and-forget tasks.
3. **The client-wide limiter shares the account's quota between concurrent runs.** Every request of every
   run goes through the one client's adaptive limiter, so two runs together slow down to what the account
   allows instead of each being throttled on its own (``--max-rate`` keeps room for other work).
4. **Shutdown cancels the runs, and their reports stay.** ``on_shutdown`` cancels the runs in progress and
   waits for them before the client closes; their streams end with a ``cancelled`` summary, and the reports
   remain readable (``app[RUNS]``) until the process exits. A real service would persist or expire them:
   this one keeps every run in memory.

What a cancelled run reports: every outcome delivered before the cancellation (the library calls
``on_outcome`` once per node, as soon as the node's outcome is final, and never loses one to a cancellation;
with ``wait``, nodes accepted but not yet seen deallocated are delivered ``accepted`` as the run is cancelled).
The other nodes have no outcome: ``unfinished`` counts them (for a node list, ``unfinished_nodes`` names
them). They are not reported ``not_attempted``, because some of them may have had a request in flight that
the service carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from batch_dealloc_async import (
    AsyncTokenCredentialLike,
    BatchDeallocClient,
    BulkReport,
    NodeOutcome,
    OutcomeStatus,
    SharedKeyCredential,
    credential_from_environment,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

__all__ = [
    "CLIENT",
    "RUNS",
    "PoolBusyError",
    "Run",
    "RunSpec",
    "Runs",
    "main",
    "make_app",
    "serving",
]

_log = logging.getLogger(__name__)

Action = Literal["deallocate", "start"]
RunState = Literal["running", "done", "cancelled", "failed"]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_FAILURE_STATUSES: Final = frozenset({OutcomeStatus.FAILED, OutcomeStatus.TIMED_OUT})
_BODY_KEYS: Final = frozenset({"nodes", "wait", "option", "deadline"})


# ----------------------------------------------------------------------------------------------------- a run


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """What a POST asked for; its JSON types are checked here, its values (ids, option, deadline) by the library."""

    nodes: tuple[str, ...] | None = None
    wait: bool = False
    option: str | None = None
    deadline: float | None = None

    @classmethod
    def from_body(cls, action: Action, body: bytes) -> RunSpec:
        """Read a request body (empty: the defaults).

        Raises:
            ValueError: not JSON, not an object, an unknown key, or a value of the wrong type.
        """
        if not body.strip():
            return cls()
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        if unknown := sorted(set(data) - _BODY_KEYS):  # a typo ("node") must not become a whole-pool run
            raise ValueError(f"unknown keys {unknown}; expected some of {sorted(_BODY_KEYS)}")
        nodes, wait, option, deadline = (data.get(key) for key in ("nodes", "wait", "option", "deadline"))
        if nodes is not None and (not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes)):
            raise ValueError("nodes must be a list of node ids (strings)")
        if nodes == []:
            raise ValueError("nodes must not be empty; leave it out to act on the whole pool")
        if wait is not None and not isinstance(wait, bool):
            raise ValueError("wait must be true or false")
        if option is not None and (action != "deallocate" or not isinstance(option, str)):
            raise ValueError("option must be a string, and only deallocate takes one")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise ValueError("deadline must be a number of seconds")
        return cls(
            nodes=None if nodes is None else tuple(nodes),
            wait=bool(wait),
            option=option,
            deadline=None if deadline is None else float(deadline),
        )


class Run:
    """One bulk run: its outcomes in the order they ended, counted as they come, and a way to follow them.

    Outcomes are kept in a list (the report needs them all anyway); a subscriber reads it by index and waits
    on ``_changed``, an event that is set and replaced whenever something happens, so any number of
    subscribers follow one run without a queue each.
    """

    def __init__(self, pool_id: str, action: Action, spec: RunSpec) -> None:
        self.id = uuid.uuid4().hex
        self.pool_id = pool_id
        self.action: Action = action
        self.spec = spec
        self.state: RunState = "running"
        self.outcomes: list[NodeOutcome] = []
        self.total: int | None = None if spec.nodes is None else len(spec.nodes)
        self.report: BulkReport | None = None  # the library's report, once the run has ended by itself
        self.error: Exception | None = None
        self.task: asyncio.Task[None] | None = None
        self._counts: Counter[OutcomeStatus] = Counter()
        self._failures: Counter[str] = Counter()
        self._started = time.monotonic()
        self._ended: float | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, pool_id={self.pool_id!r}, action={self.action!r}, state={self.state!r})"

    @property
    def location(self) -> str:
        """The run's URL path."""
        return f"/runs/{self.id}"

    @property
    def ended(self) -> bool:
        """Whether the run has ended (done, cancelled or failed)."""
        return self.state != "running"

    def record(self, outcome: NodeOutcome) -> None:
        """The ``on_outcome`` callback: keep the outcome, count it, wake the subscribers (no await: none is lost)."""
        self.outcomes.append(outcome)
        self._counts[outcome.status] += 1
        if outcome.status in _FAILURE_STATUSES:  # grouped as BulkReport.failures_by_code groups them
            self._failures[outcome.error_code or outcome.status.value] += 1
        self._notify()

    def listed(self, _pool_id: str, eligible: int, others: int) -> None:
        """The ``on_listed`` callback of a whole-pool run: now the run knows how many nodes it covers."""
        self.total = eligible + others
        self._notify()

    def finish(self, state: RunState, error: Exception | None = None) -> None:
        """Mark the run ended and wake the subscribers, so that their streams end."""
        self.state = state
        self.error = error
        self._ended = time.monotonic()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, start: int = 0) -> AsyncIterator[tuple[int, list[NodeOutcome]]]:
        """Batches of outcomes from index ``start``, each with the index of its first outcome.

        First the outcomes so far, then the new ones as they come, until the run has ended.
        """
        index = start
        while True:
            changed = self._changed  # taken before looking, so a change after the look still wakes us
            if index < len(self.outcomes):
                batch = self.outcomes[index:]
                yield index, batch
                index += len(batch)
            elif self.ended:
                return
            else:
                await changed.wait()

    def summary(self) -> dict[str, object]:
        """The run's report without the outcomes: state, counts so far, failures by code, elapsed."""
        end = self._ended if self._ended is not None else time.monotonic()
        report = self.report
        summary: dict[str, object] = {
            "id": self.id,
            "pool_id": self.pool_id,
            "action": self.action,
            "state": self.state,
            "request": {
                "nodes": None if self.spec.nodes is None else len(self.spec.nodes),
                "wait": self.spec.wait,
                "option": self.spec.option,
                "deadline": self.spec.deadline,
            },
            "total": self.total,  # whole pool: unknown (null) until it has been listed
            "done": len(self.outcomes),
            "unfinished": None if self.total is None else self.total - len(self.outcomes),
            "counts": {status.value: self._counts[status] for status in OutcomeStatus},
            "failures_by_code": dict(self._failures.most_common()),
            "elapsed": round(end - self._started, 3),
            "error": None if self.error is None else str(self.error),
            # the service side, from the library's report: only a run that ended by itself has one
            "pool_errors": {} if report is None else {p: str(e) for p, e in report.pool_errors.items()},
            "requests": None if report is None else report.requests,
            "throttled": None if report is None else report.throttled,
            "location": self.location,
            "events": f"{self.location}/events",
        }
        if self.ended and self.spec.nodes is not None and len(self.outcomes) < len(self.spec.nodes):
            have = {o.node_id for o in self.outcomes}
            summary["unfinished_nodes"] = [n for n in self.spec.nodes if n not in have]
        return summary


# -------------------------------------------------------------------------------------------- the registry


class PoolBusyError(Exception):
    """A run is already in progress on the pool (``running`` is that run)."""

    def __init__(self, running: Run) -> None:
        super().__init__(f"pool {running.pool_id!r} has a run in progress: {running.id}")
        self.running = running


class Runs:
    """Every run of the process by id, the run in progress on each pool, and the tasks behind them.

    It owns every task it starts: :meth:`close` cancels the runs in progress and waits until they have ended.
    """

    def __init__(self, client: BatchDeallocClient) -> None:
        self._client = client
        self._runs: dict[str, Run] = {}
        self._active: dict[str, Run] = {}  # pool id -> its run in progress
        self._closing = False

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""
        return self._runs.get(run_id)

    async def start(self, pool_id: str, action: Action, spec: RunSpec) -> Run:
        """Start a run in the background and return it, once the library has checked its arguments.

        Raises:
            PoolBusyError: the pool has a run in progress.
            ValueError: the library refused an argument (a bad id, option or deadline); nothing was sent.
            RuntimeError: the service is shutting down.
        """
        if self._closing:
            raise RuntimeError("the service is shutting down")
        if (running := self._active.get(pool_id)) is not None:
            raise PoolBusyError(running)
        # Checked and claimed with no await in between: two requests cannot both start a run on one pool.
        run = Run(pool_id, action, spec)
        self._runs[run.id] = run
        self._active[pool_id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"web-service-run-{run.id}")
        # The library checks ids, option and deadline on the call's first step, before its first await (and so
        # before anything is sent). One turn of the loop runs that step: a bad argument is then a 400, not a
        # failed run.
        await asyncio.sleep(0)
        if isinstance(run.error, ValueError):
            del self._runs[run.id]
            raise run.error
        return run

    async def _drive(self, run: Run) -> None:
        try:
            run.report = await self._call(run)
        except asyncio.CancelledError:
            run.finish("cancelled")
            raise
        except ValueError as exc:  # refused before anything was sent: start() answers 400
            run.finish("failed", exc)
        except Exception as exc:  # noqa: BLE001 (a run's failure belongs in its report, not only in the log)
            _log.exception("run %s on pool %s failed", run.id, run.pool_id)
            run.finish("failed", exc)
        else:
            run.finish("done")
        finally:
            if self._active.get(run.pool_id) is run:
                del self._active[run.pool_id]

    async def _call(self, run: Run) -> BulkReport:
        client, spec, pool_id = self._client, run.spec, run.pool_id
        if run.action == "deallocate" and spec.nodes is None:
            return await client.deallocate_pool(
                pool_id,
                option=spec.option,
                wait=spec.wait,
                deadline=spec.deadline,
                on_outcome=run.record,
                on_listed=run.listed,
            )
        if run.action == "deallocate":
            return await client.deallocate_nodes(
                pool_id,
                spec.nodes or (),
                option=spec.option,
                wait=spec.wait,
                deadline=spec.deadline,
                on_outcome=run.record,
            )
        if spec.nodes is None:
            return await client.start_pool(
                pool_id, wait=spec.wait, deadline=spec.deadline, on_outcome=run.record, on_listed=run.listed
            )
        return await client.start_nodes(
            pool_id, spec.nodes, wait=spec.wait, deadline=spec.deadline, on_outcome=run.record
        )

    async def cancel(self, run: Run) -> None:
        """Cancel a run in progress and wait until it has ended (nothing happens to a run that has ended)."""
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.wait([run.task])

    async def close(self) -> None:
        """Refuse new runs, cancel those in progress, and wait until they have ended (idempotent)."""
        self._closing = True
        tasks = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


# ------------------------------------------------------------------------------------------------ handlers

CLIENT: Final = web.AppKey("client", BatchDeallocClient)
RUNS: Final = web.AppKey("runs", Runs)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _run_or_404(request: web.Request) -> Run:
    run = request.app[RUNS].get(request.match_info["run_id"])
    if run is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no run {request.match_info['run_id'][:64]!r}"}), content_type="application/json"
        )
    return run


def _query_int(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    text = request.query.get(name)
    value = default if text is None else int(text) if text.isascii() and text.isdigit() else -1
    if value < 0 or (maximum is not None and value > maximum):
        bound = f"0..{maximum}" if maximum is not None else "0 or more"
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be an integer, {bound}"}), content_type="application/json"
        )
    return value


async def _start(request: web.Request, action: Action) -> web.Response:
    try:
        spec = RunSpec.from_body(action, await request.read())
        run = await request.app[RUNS].start(request.match_info["pool_id"], action, spec)
    except PoolBusyError as busy:
        running = busy.running
        return web.json_response(
            {"error": str(busy), "running": running.id, "location": running.location},
            status=409,
            headers={"Location": running.location},
        )
    except ValueError as exc:
        return _error(400, str(exc))
    except RuntimeError as exc:
        return _error(503, str(exc))
    return web.json_response(run.summary(), status=202, headers={"Location": run.location})


async def deallocate(request: web.Request) -> web.Response:
    """``POST /pools/{pool_id}/deallocate``."""
    return await _start(request, "deallocate")


async def start(request: web.Request) -> web.Response:
    """``POST /pools/{pool_id}/start``."""
    return await _start(request, "start")


async def get_run(request: web.Request) -> web.Response:
    """``GET /runs/{run_id}?offset=&limit=``: the summary and one page of outcomes."""
    run = _run_or_404(request)
    offset = _query_int(request, "offset", 0)
    limit = _query_int(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    page = run.outcomes[offset : offset + limit]
    more = offset + len(page) < len(run.outcomes) and limit > 0
    body = {
        **run.summary(),
        "offset": offset,
        "limit": limit,
        "outcomes": [outcome.to_dict() for outcome in page],
        "next": f"{run.location}?offset={offset + len(page)}&limit={limit}" if more else None,
    }
    return web.json_response(body)


async def delete_run(request: web.Request) -> web.Response:
    """``DELETE /runs/{run_id}``: cancel the run (if still in progress); its report either way."""
    run = _run_or_404(request)
    await request.app[RUNS].cancel(run)
    return web.json_response(run.summary())


def _ndjson(record: Mapping[str, object]) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _sse(event: str, record: Mapping[str, object], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(record)}\n\n".encode()


async def run_events(request: web.Request) -> web.StreamResponse:
    """``GET /runs/{run_id}/events``: NDJSON, or server-sent events for ``Accept: text/event-stream``."""
    run = _run_or_404(request)
    sse = "text/event-stream" in request.headers.get("Accept", "")
    start_at = _query_int(request, "offset", 0)
    last_id = request.headers.get("Last-Event-ID", "")
    if (
        sse and last_id.isascii() and last_id.isdigit()
    ):  # an EventSource reconnecting: resume after the last event it saw
        start_at = int(last_id) + 1
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the events back
        }
    )
    await response.prepare(request)
    try:
        async for first, batch in run.follow(start_at):
            if sse:
                chunk = b"".join(_sse("outcome", o.to_dict(), first + i) for i, o in enumerate(batch))
            else:
                chunk = b"".join(
                    _ndjson({"event": "outcome", "index": first + i, **o.to_dict()}) for i, o in enumerate(batch)
                )
            await response.write(chunk)
        summary = run.summary()
        await response.write(_sse("end", summary) if sse else _ndjson({"event": "end", **summary}))
    except ConnectionResetError:
        # The subscriber left (noticed at the next write). Only this stream ends: the run is not ours to stop.
        _log.debug("a subscriber of run %s disconnected", run.id)
    return response


async def health(_request: web.Request) -> web.Response:
    """``GET /health``."""
    return web.json_response({"status": "ok"})


# ------------------------------------------------------------------------------------------------- the app


def make_app(
    endpoint: str,
    credential: SharedKeyCredential | AsyncTokenCredentialLike,
    *,
    max_concurrency: int | None = None,
    max_rate: float | None = None,
) -> web.Application:
    """The service: one client for the whole application, opened on startup and closed on shutdown.

    Args:
        endpoint: The Batch account URL.
        credential: Any credential the client takes.
        max_concurrency: The client's ceiling on requests in flight (``None``: the library's default).
        max_rate: A ceiling in requests per second for everything the service sends, so that its runs leave
            room in the account's quota for other work (``None``: no ceiling).

    Raises:
        ValueError: a bad endpoint or limit (checked here, before the server starts).
    """
    options: dict[str, Any] = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
    # Built now (no I/O: it only checks and stores), opened in the server's loop by the cleanup context.
    client = BatchDeallocClient(endpoint, credential, max_rate=max_rate, **options)

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with client:
            app[CLIENT] = client
            app[RUNS] = Runs(client)
            yield
            await app[RUNS].close()  # normally done by on_shutdown already; never close the client under a run

    async def cancel_runs(app: web.Application) -> None:
        # on_shutdown runs before the server waits for its handlers: the runs end, so their streams end too.
        if RUNS in app:
            await app[RUNS].close()

    app = web.Application()
    app.cleanup_ctx.append(client_context)
    app.on_shutdown.append(cancel_runs)
    app.add_routes(
        [
            web.post("/pools/{pool_id}/deallocate", deallocate),
            web.post("/pools/{pool_id}/start", start),
            web.get("/runs/{run_id}", get_run),
            web.delete("/runs/{run_id}", delete_run),
            web.get("/runs/{run_id}/events", run_events),
            web.get("/health", health),
        ]
    )
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port) and yield its base URL; shut down cleanly on exit."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()  # on_shutdown (cancel the runs), then the handlers, then the client


# ---------------------------------------------------------------------------------------- the command line


def _banner(url: str, detail: str) -> str:
    return "\n".join(
        [
            f"listening on {url}",  # the first line, which scripts and tests read
            detail,
            "try:",
            f"  curl -si -X POST {url}/pools/pool-a/deallocate -d '{{\"wait\": true}}'",
            f"  curl -sN {url}/runs/RUN_ID/events",
            f"  curl -sN -H 'Accept: text/event-stream' {url}/runs/RUN_ID/events",
            f"  curl -s '{url}/runs/RUN_ID?offset=0&limit=5'",
            f"  curl -si -X DELETE {url}/runs/RUN_ID",
            f"  curl -si -X POST {url}/pools/pool-a/start -d '{{\"wait\": true}}'",
            "Ctrl-C stops (running runs are cancelled first)",
        ]
    )


async def _serve_until_stopped(app: web.Application, host: str, port: int, detail: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
            loop.add_signal_handler(signum, stop.set)
    async with serving(app, host, port) as url:
        sys.stdout.write(_banner(url, detail) + "\n")
        sys.stdout.flush()
        await stop.wait()


async def _run_with_emulator(args: argparse.Namespace) -> None:
    from batch_dealloc_async.emulator import BatchEmulator  # noqa: PLC0415 (only the --emulator mode needs it)

    pools = {"pool-a": args.nodes, "pool-b": args.nodes}
    async with BatchEmulator(pools=pools, seed=1, throttle_rps=300, throttle_burst=40, deallocate_delay=2.0) as emu:
        app = make_app(emu.endpoint, emu.credential(), max_concurrency=args.max_concurrency, max_rate=args.max_rate)
        detail = f"emulator at {emu.endpoint}: pool-a and pool-b, {args.nodes} nodes each, throttled at 300 requests/s"
        await _serve_until_stopped(app, args.host, args.port, detail)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.web_service``."""
    parser = argparse.ArgumentParser(prog="python -m examples.web_service", description=__doc__.split("\n")[0])
    parser.add_argument("--emulator", action="store_true", help="serve against an in-process emulator")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: a free one; default 8080)")
    parser.add_argument("--nodes", type=int, default=300, help="--emulator: nodes per pool (default 300)")
    parser.add_argument("--endpoint", default=None, help="the Batch account URL (default: BATCH_ENDPOINT)")
    parser.add_argument("--managed-identity", action="store_true", help="use the managed identity (AZURE_CLIENT_ID)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="the client's ceiling on requests in flight")
    parser.add_argument("--max-rate", type=float, default=None, help="a ceiling in requests/s for the whole service")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Start-up is over: keep the objects of the imports out of every later collection. A full collection walks
    # every tracked object and is the loop's longest pause during a large run (README, "In a web backend").
    gc.freeze()
    try:
        if args.emulator:
            asyncio.run(_run_with_emulator(args))
            return 0
        endpoint = args.endpoint or os.environ.get("BATCH_ENDPOINT")
        if not endpoint:
            parser.error("give --endpoint or set BATCH_ENDPOINT (or use --emulator)")
        try:
            credential = credential_from_environment(managed_identity=args.managed_identity)
            app = make_app(endpoint, credential, max_concurrency=args.max_concurrency, max_rate=args.max_rate)
        except ValueError as exc:
            parser.error(str(exc))
        asyncio.run(_serve_until_stopped(app, args.host, args.port, f"Batch account at {endpoint}"))
    except KeyboardInterrupt:  # Ctrl-C where signal handlers are not available
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
