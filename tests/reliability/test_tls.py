"""TLS: certificates are verified by default; a custom CA (bundle path or SSLContext) is trusted when given."""

from __future__ import annotations

import ssl

import pytest
import trustme

from batch_dealloc_async import BatchDeallocClient, BatchTransportError, RetryPolicy
from batch_dealloc_async.emulator import BatchEmulator

ONE_TRY = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_emulator(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    async with BatchEmulator(pools={"p": 5}, seed=1, host="127.0.0.1", ssl_context=context) as emu:
        yield emu


async def test_untrusted_certificate_is_refused(tls_emulator) -> None:
    """By default the system's trust store is used: the emulator's private CA is refused, nothing is sent."""
    async with BatchDeallocClient(tls_emulator.endpoint, tls_emulator.credential(), retry=ONE_TRY) as client:
        with pytest.raises(BatchTransportError, match="cannot connect"):
            await client.deallocate_node("p", tls_emulator.node_ids("p")[0])
    assert tls_emulator.stats.total == 0


async def test_ca_bundle_path_is_trusted(tls_emulator, ca, tmp_path) -> None:
    """ssl= a CA bundle path: the connection is verified and the call succeeds over https."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    node = tls_emulator.node_ids("p", {"idle", "running"})[0]
    assert tls_emulator.endpoint.startswith("https://")
    async with BatchDeallocClient(tls_emulator.endpoint, tls_emulator.credential(), ssl=str(bundle)) as client:
        result = await client.deallocate_node("p", node)
    assert result.attempts == 1


async def test_ssl_context_is_trusted(tls_emulator, ca) -> None:
    """ssl= an SSLContext that trusts the CA works the same."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with BatchDeallocClient(tls_emulator.endpoint, tls_emulator.credential(), ssl=context) as client:
        nodes = [n async for n in client.list_nodes("p")]
    assert len(nodes) == 5


async def test_wrong_host_name_is_refused(ca) -> None:
    """A certificate for another name is refused even from a trusted CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("not-this-host.example").configure_cert(context)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with BatchEmulator(pools={"p": 1}, ssl_context=context) as emu:
        async with BatchDeallocClient(emu.endpoint, emu.credential(), ssl=trust, retry=ONE_TRY) as client:
            with pytest.raises(BatchTransportError):
                await client.deallocate_node("p", emu.node_ids("p")[0])
