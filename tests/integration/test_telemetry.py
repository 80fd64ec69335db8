"""OpenTelemetry against the emulator: a real run's spans, no planted secret recorded, the package without it."""

from __future__ import annotations

import base64
import contextlib
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from batch_dealloc_async import (
    BatchDeallocClient,
    BatchDeallocError,
    ClientSecretCredential,
    OutcomeStatus,
    RetryPolicy,
    SharedKeyCredential,
)
from batch_dealloc_async.emulator import BatchEmulator
from tests.otel_recorder import Recorder
from tests.reliability.test_secrets import CLIENT_SECRET, KEY, TOKEN_PREFIX, PlantedTokens, leaks
from tests.unit.test_identity import CLIENT, TENANT, FakeIdentityProvider

ROOT: Final = Path(__file__).resolve().parents[2]
FAST_RETRY: Final = RetryPolicy(backoff_base=0.01, backoff_cap=0.05, max_retry_after=0.2, max_attempts=3)


async def test_a_bulk_run_over_real_sockets_has_the_spans_of_its_requests() -> None:
    """Deallocate a pool and wait: listings, polls and node actions are CLIENT spans with the emulator's address."""
    recorded = Recorder()
    async with BatchEmulator(pools={"p": 20}, seed=5, deallocate_delay=0.2) as emu:
        port = urlsplit(emu.endpoint).port
        options = recorded.providers()
        async with BatchDeallocClient(emu.endpoint, emu.credential(), retry=FAST_RETRY, **options) as client:
            report = await client.deallocate_pool("p", wait=True, deadline=30)
    recorded.shutdown()
    spans = list(recorded.exporter.get_finished_spans())
    (call,) = [s for s in spans if s.name == "BatchDeallocClient.deallocate_pool"]
    assert call.attributes is not None
    done = report.counts[OutcomeStatus.DEALLOCATED]
    assert done > 0
    assert call.attributes["batch.outcomes.deallocated"] == done
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(attempts) == report.requests
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == port
        assert isinstance(attempt.attributes["http.response.status_code"], int)
        assert attempt.attributes["az.service_request_id"]
    nodes = [s for s in spans if s.name == "deallocate node"]
    assert len(nodes) == done
    assert {s.parent.span_id for s in nodes if s.parent} == {call.context.span_id}
    polls = [s for s in attempts if s.parent is not None and s.parent.span_id == call.context.span_id]
    assert len(polls) == 2 + report.poll_requests  # the two listings, then the polls


async def test_no_planted_secret_in_any_span_event_or_metric() -> None:
    """Keys, a refused key, refreshed tokens and a refused client secret: no secret in any recorded attribute."""
    recorded = Recorder()
    options = recorded.providers()
    async with BatchEmulator(pools={"p": 12, "q": 5}, seed=3, account_key=KEY, deallocate_delay=0.1) as emu:
        key_credential = SharedKeyCredential(emu.account_name, KEY)
        async with BatchDeallocClient(emu.endpoint, key_credential, retry=FAST_RETRY, **options) as client:
            await client.deallocate_pool("p", wait=True, deadline=10)
            with contextlib.suppress(BatchDeallocError):
                await client.deallocate_node("p", "missing")
        wrong = SharedKeyCredential(emu.account_name, base64.b64encode(secrets.token_bytes(64)).decode())
        async with BatchDeallocClient(emu.endpoint, wrong, retry=FAST_RETRY, **options) as client:
            denied = await client.deallocate_nodes("p", emu.node_ids("p")[:3])
            assert not denied.ok
        tokens = PlantedTokens()
        emu.update(bearer_tokens={f"{TOKEN_PREFIX}-2"})  # the first token is refused: a 401 and a refresh
        async with BatchDeallocClient(emu.endpoint, tokens, retry=FAST_RETRY, **options) as client:
            await client.deallocate_node("q", emu.node_ids("q", {"idle", "running"})[0])
        assert tokens.n == 2
        msal_credential = ClientSecretCredential(
            TENANT, CLIENT, CLIENT_SECRET, http_client=FakeIdentityProvider(refuse=True)
        )
        async with BatchDeallocClient(emu.endpoint, msal_credential, retry=FAST_RETRY, **options) as client:
            with contextlib.suppress(BatchDeallocError):
                await client.get_node("q", emu.node_ids("q")[0])
    recorded.shutdown()
    texts = recorded.texts()
    assert len(texts) > 50
    assert any("401" in t for t in texts)  # the refused token's attempt is recorded...
    assert any("CredentialError" in t for t in texts)  # ...and so is the refused client secret
    assert [t for t in texts if leaks(t)] == []
    assert [t for t in texts if "SharedKey " in t or "Bearer " in t] == []


def test_the_package_works_without_opentelemetry() -> None:
    """With every opentelemetry module unimportable, a client deallocates nodes against the emulator as ever."""
    code = """
import asyncio, importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
from batch_dealloc_async import BatchDeallocClient, OutcomeStatus
from batch_dealloc_async.emulator import BatchEmulator

async def main() -> None:
    async with BatchEmulator(pools={"p": 10}, seed=2) as emu:
        async with BatchDeallocClient(emu.endpoint, emu.credential()) as client:
            await client.deallocate_node("p", emu.node_ids("p", {"idle", "running"})[0])
            report = await client.deallocate_pool("p")
            assert report.counts[OutcomeStatus.ACCEPTED] >= 1, report.counts
            assert client.limiter.observer is None
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]

asyncio.run(main())
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
