"""Planted secrets never show: not in any log record (DEBUG, every logger), repr, exception, report or CLI output."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import sys

import pytest

from batch_dealloc_async import (
    AccessToken,
    BatchDeallocClient,
    BatchDeallocError,
    ClientSecretCredential,
    RetryPolicy,
    SharedKeyCredential,
)
from batch_dealloc_async.emulator import BatchEmulator
from tests.unit.test_identity import CLIENT, TENANT, FakeIdentityProvider

KEY = base64.b64encode(secrets.token_bytes(64)).decode()
CLIENT_SECRET = "cs~" + secrets.token_urlsafe(24)
TOKEN_PREFIX = "tok-" + secrets.token_urlsafe(12)
PLANTED = [KEY, KEY[:24], CLIENT_SECRET, TOKEN_PREFIX]


def leaks(text: str) -> list[str]:
    return [s for s in PLANTED if s in text]


class PlantedTokens:
    def __init__(self) -> None:
        self.n = 0

    async def get_token(self, *scopes: str) -> AccessToken:
        self.n += 1
        return AccessToken(f"{TOKEN_PREFIX}-{self.n}", 2_000_000_000)


async def test_no_secret_in_logs_reprs_errors_or_reports(caplog) -> None:
    """Runs that succeed, fail, refresh tokens and use msal leave no planted secret anywhere."""
    caplog.set_level(logging.DEBUG)
    seen: list[object] = []
    async with BatchEmulator(pools={"p": 30, "q": 5}, seed=3, account_key=KEY, deallocate_delay=0.1) as emu:
        key_credential = SharedKeyCredential(emu.account_name, KEY)
        async with BatchDeallocClient(emu.endpoint, key_credential, retry=RetryPolicy(max_attempts=2)) as client:
            report = await client.deallocate_pool("p", wait=True, deadline=10)
            seen += [client, key_credential, report.to_dict(), report.outcomes]
            try:
                await client.deallocate_node("p", "missing")
            except BatchDeallocError as exc:
                seen += [exc, repr(exc)]
        wrong = SharedKeyCredential(emu.account_name, base64.b64encode(secrets.token_bytes(64)).decode())
        async with BatchDeallocClient(emu.endpoint, wrong, retry=RetryPolicy(max_attempts=1)) as client:
            denied = await client.deallocate_nodes("p", emu.node_ids("p")[:3])
            seen += [denied.to_dict(), [o.error for o in denied.outcomes]]
        tokens = PlantedTokens()
        emu.update(bearer_tokens={f"{TOKEN_PREFIX}-2"})  # the first token is refused: a 401 and a refresh
        async with BatchDeallocClient(emu.endpoint, tokens, retry=RetryPolicy(max_attempts=2)) as client:
            seen.append(await client.deallocate_node("q", emu.node_ids("q", {"idle", "running"})[0]))
            seen.append(client)
            assert tokens.n == 2
    refusing = FakeIdentityProvider(refuse=True)
    msal_credential = ClientSecretCredential(TENANT, CLIENT, CLIENT_SECRET, http_client=refusing)
    try:
        await msal_credential.get_token("https://batch.core.windows.net//.default")
    except BatchDeallocError as exc:
        seen += [exc, repr(exc), exc.__cause__]
    seen.append(msal_credential)
    texts = [record.getMessage() for record in caplog.records]
    texts += [repr(thing) for thing in seen] + [str(thing) for thing in seen]
    texts += [json.dumps(thing, default=str) for thing in seen if isinstance(thing, dict)]
    assert not [t for t in texts if leaks(t)]
    assert len(caplog.records) > 10  # DEBUG logging really was on


async def test_cli_never_prints_the_key() -> None:
    """The CLI with a key in the environment and on the command line prints it nowhere, even with --debug."""
    async with BatchEmulator(pools={"p": 3}, seed=3) as emu:  # its own key: ours is refused (exit 3)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCH_"))}
        env.update(BATCH_ACCOUNT_NAME=emu.account_name, BATCH_ACCOUNT_KEY=KEY)
        for extra in ([], ["--account-key", KEY]):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "batch_dealloc_async",
                "--debug",
                "deallocate",
                "--endpoint",
                emu.endpoint,
                "--pool",
                "p",
                "--all",
                "--output",
                "json",
                *extra,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 3
            assert not leaks(out.decode() + err.decode())


@pytest.mark.parametrize("thing", [SharedKeyCredential("a", KEY), AccessToken(f"{TOKEN_PREFIX}-x", 1)])
def test_reprs_redact(thing: object) -> None:
    """Credential and token reprs never carry the secret."""
    assert not leaks(repr(thing))
