"""Type-checked by mypy (never run): the public API used the way a user would."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from batch_dealloc_async import (
    BatchDeallocClient,
    BatchNodeDeallocateOption,
    ClientSecretCredential,
    ConflictError,
    DeallocateResult,
    RetryPolicy,
    SharedKeyCredential,
    credential_from_environment,
)


class AzureCoreAccessToken(NamedTuple):
    """Shaped like azure.core.credentials.AccessToken."""

    token: str
    expires_on: int


class AzureIdentityLikeCredential:
    """Shaped like azure.identity.aio.DefaultAzureCredential."""

    async def get_token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None, **kwargs: object
    ) -> AzureCoreAccessToken:
        return AzureCoreAccessToken("t", 0)


async def single_node() -> DeallocateResult:
    key = SharedKeyCredential("acct", "a2V5")
    async with BatchDeallocClient("https://acct.westus.batch.azure.com", key, retry=RetryPolicy(max_attempts=3)) as c:
        try:
            return await c.deallocate_node("pool", "node", option=BatchNodeDeallocateOption.TERMINATE, timeout=10)
        except ConflictError as exc:
            _ = (exc.code, exc.request_id)
            raise


async def with_tokens() -> None:
    for credential in (AzureIdentityLikeCredential(), ClientSecretCredential("tenant", "client", "secret")):
        async with BatchDeallocClient("https://acct.westus.batch.azure.com", credential) as client:
            result = await client.deallocate_node("pool", "node")
            _ = (result.attempts, result.last_modified)


async def from_the_environment() -> None:
    credential = credential_from_environment({"BATCH_ACCOUNT_NAME": "acct", "BATCH_ACCOUNT_KEY": "a2V5"})
    async with BatchDeallocClient("https://acct.westus.batch.azure.com", credential) as client:
        report = await client.start_pool("pool", wait=True)
        _ = report.counts


async def with_opentelemetry() -> None:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 (the test extra's SDK)
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    key = SharedKeyCredential("acct", "a2V5")
    endpoint = "https://acct.westus.batch.azure.com"
    async with BatchDeallocClient(
        endpoint, key, tracer_provider=TracerProvider(), meter_provider=MeterProvider()
    ) as client:
        report = await client.deallocate_pool("pool")
        _ = report.counts


asyncio.run(single_node())
