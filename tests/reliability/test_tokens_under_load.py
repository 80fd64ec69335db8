"""Token expiry under load: tokens that live a few seconds, a bulk run of many; every request carries a valid one."""

from __future__ import annotations

import asyncio
import time

from batch_dealloc_async import AccessToken, BatchDeallocClient
from batch_dealloc_async.emulator import BatchEmulator

LIFETIME = 3  # seconds


def valid(token: str) -> bool:
    """Tokens are 'tok-<n>-<expiry>'; the emulator accepts one only before its expiry."""
    try:
        _, _, expiry = token.split("-")
        return time.time() < float(expiry)
    except ValueError:
        return False


class ShortLivedTokens:
    def __init__(self) -> None:
        self.issued = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def get_token(self, *scopes: str) -> AccessToken:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # an identity provider takes a while
            self.issued += 1
            expiry = int(time.time()) + LIFETIME
            return AccessToken(f"tok-{self.issued}-{expiry}", expiry)
        finally:
            self.in_flight -= 1


async def test_short_lived_tokens_during_a_long_bulk_run() -> None:
    """No request is refused for its token, tokens are renewed ahead of expiry, one acquisition at a time."""
    async with BatchEmulator(
        pools={"p": 4000}, seed=5, token_validator=valid, throttle_rps=500, throttle_burst=50, state_mix={"idle": 1.0}
    ) as emu:
        tokens = ShortLivedTokens()
        async with BatchDeallocClient(emu.endpoint, tokens, max_concurrency=128) as client:
            report = await client.deallocate_pool("p")
        assert report.counts["accepted"] == 4000
        assert emu.stats.auth_failures == 0
        assert report.elapsed > 2 * LIFETIME  # the run outlived several tokens
        assert tokens.issued >= 3
        assert tokens.most_in_flight == 1
