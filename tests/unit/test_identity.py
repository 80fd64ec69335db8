"""msal-based credentials, driven through msal itself with a fake identity provider (msal's http_client seam)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from typing import Any
from urllib.parse import parse_qs

import pytest

from batch_dealloc_async import (
    CertificateCredential,
    ClientSecretCredential,
    CredentialError,
    ManagedIdentityCredential,
)
from batch_dealloc_async._auth import BATCH_SCOPE, TokenCache

SECRET = "planted-client-secret-Zq8~xyz"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "00000000-1111-2222-3333-444444444444"


class FakeResponse:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self.text = json.dumps(body)
        self.headers: dict[str, str] = {"Content-Type": "application/json"}

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}")


class FakeIdentityProvider:
    """Answers msal's OpenID discovery and token requests; records the threads msal ran on."""

    def __init__(self, *, refuse: bool = False, token: str = "at-123") -> None:
        self.refuse = refuse
        self.token = token
        self.token_requests: list[dict[str, list[str]]] = []
        self.threads: set[int] = set()

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        self.threads.add(threading.get_ident())
        if "openid-configuration" in url:
            base = f"https://login.microsoftonline.com/{TENANT}"
            return FakeResponse(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                },
            )
        if "discovery/instance" in url:
            hosts = ["login.microsoftonline.com", "login.windows.net"]
            return FakeResponse(
                200,
                {
                    "tenant_discovery_endpoint": f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration",
                    "metadata": [{"preferred_network": hosts[0], "preferred_cache": hosts[1], "aliases": hosts}],
                },
            )
        if "169.254.169.254" in url or "identity" in url:  # managed identity endpoint (IMDS)
            params = kwargs.get("params") or {}
            self.token_requests.append({k: [v] for k, v in params.items()})
            return FakeResponse(
                200, {"access_token": self.token, "expires_in": "3599", "resource": "x", "token_type": "Bearer"}
            )
        return FakeResponse(404, {})

    def post(self, url: str, data: Any = None, **kwargs: Any) -> FakeResponse:
        self.threads.add(threading.get_ident())
        form = parse_qs(data) if isinstance(data, str) else {k: [v] for k, v in (data or {}).items()}
        self.token_requests.append(form)
        if self.refuse:
            return FakeResponse(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.\nTrace ID: x",
                },
            )
        return FakeResponse(200, {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"})

    def close(self) -> None:
        pass


async def test_client_secret_credential_gets_a_token_off_the_event_loop() -> None:
    """Msal runs in a worker thread and gets the Batch scope token with the client secret."""
    idp = FakeIdentityProvider()
    cred = ClientSecretCredential(TENANT, CLIENT, SECRET, http_client=idp)
    token = await cred.get_token(BATCH_SCOPE)
    assert token.token == "at-123"
    assert token.expires_on > 0
    assert threading.get_ident() not in idp.threads
    (form,) = idp.token_requests
    assert form["client_secret"] == [SECRET]
    assert form["scope"][0].startswith("https://batch.core.windows.net//.default")
    # msal's own cache answers the second call: no new request
    await cred.get_token(BATCH_SCOPE)
    assert len(idp.token_requests) == 1


async def test_refused_secret_is_credential_error_without_the_secret(caplog) -> None:
    """An identity-provider refusal is a CredentialError naming the error, never the secret."""
    caplog.set_level(logging.DEBUG)
    cred = ClientSecretCredential(TENANT, CLIENT, SECRET, http_client=FakeIdentityProvider(refuse=True))
    with pytest.raises(CredentialError) as info:
        await cred.get_token(BATCH_SCOPE)
    assert "invalid_client" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(cred)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def _self_signed_pem() -> tuple[bytes, bytes]:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch-dealloc-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


async def test_certificate_credential_pem_file(tmp_path) -> None:
    """A PEM file holding key and certificate signs a client assertion (no secret is sent)."""
    key_pem, cert_pem = _self_signed_pem()
    path = tmp_path / "sp.pem"
    path.write_bytes(key_pem + cert_pem)
    idp = FakeIdentityProvider()
    cred = CertificateCredential(TENANT, CLIENT, certificate_path=path, http_client=idp)
    token = await cred.get_token(BATCH_SCOPE)
    assert token.token == "at-123"
    (form,) = idp.token_requests
    assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert "client_secret" not in form
    assert "PRIVATE KEY" not in repr(cred)


async def test_certificate_credential_pkcs12_data() -> None:
    """PKCS#12 bytes with a password work too."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: PLC0415

    key_pem, cert_pem = _self_signed_pem()
    key = serialization.load_pem_private_key(key_pem, None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    pfx = pkcs12.serialize_key_and_certificates(
        b"sp",
        key,
        cert,
        None,
        serialization.BestAvailableEncryption(b"pw"),  # type: ignore[arg-type]
    )
    cred = CertificateCredential(
        TENANT, CLIENT, certificate_data=pfx, password="pw", http_client=FakeIdentityProvider()
    )
    assert (await cred.get_token(BATCH_SCOPE)).token == "at-123"
    bad = CertificateCredential(
        TENANT, CLIENT, certificate_data=pfx, password="nope", http_client=FakeIdentityProvider()
    )
    with pytest.raises(CredentialError):
        await bad.get_token(BATCH_SCOPE)


async def test_managed_identity_asks_for_the_batch_resource() -> None:
    """Managed identity turns the scope into the resource https://batch.core.windows.net/."""
    idp = FakeIdentityProvider(token="mi-token")
    cred = ManagedIdentityCredential(client_id=CLIENT, http_client=idp)
    token = await cred.get_token(BATCH_SCOPE)
    assert token.token == "mi-token"
    (params,) = idp.token_requests
    assert params["resource"] == ["https://batch.core.windows.net/"]
    assert params["client_id"] == [CLIENT]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClientSecretCredential("", CLIENT, SECRET),
        lambda: ClientSecretCredential("tenant/../x", CLIENT, SECRET),
        lambda: ClientSecretCredential(TENANT, CLIENT, ""),
        lambda: ClientSecretCredential(TENANT, CLIENT, SECRET, authority_host="http://login"),
        lambda: CertificateCredential(TENANT, CLIENT),
        lambda: CertificateCredential(TENANT, CLIENT, certificate_path="a", certificate_data=b"b"),
        lambda: ManagedIdentityCredential(client_id="bad id"),
    ],
)
def test_bad_credential_arguments(make) -> None:
    """Bad identifiers and missing secrets are ValueErrors at construction, never echoing the secret."""
    with pytest.raises(ValueError) as info:
        make()
    assert SECRET not in str(info.value)


class SlowCredential:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after
        self.now = 1000.0

    async def get_token(self, *scopes: str) -> Any:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("identity provider down")
        from batch_dealloc_async import AccessToken  # noqa: PLC0415

        return AccessToken(f"t{self.calls}", int(self.now + 600))


async def test_token_cache_single_flight_and_invalidate() -> None:
    """Concurrent cold gets make one acquisition; invalidating a stale token keeps a newer one."""
    cred = SlowCredential()
    cache = TokenCache(cred, scope=BATCH_SCOPE, wall_clock=lambda: cred.now)
    tokens = await asyncio.gather(*(cache.get() for _ in range(200)))
    assert set(tokens) == {"t1"}
    assert cred.calls == 1
    cache.invalidate("t1")
    cache.invalidate("t1")
    assert await cache.get() == "t2"
    cache.invalidate("t1")  # an old token's 401 arriving late must not drop t2
    assert await cache.get() == "t2"
    assert cred.calls == 2


async def test_token_cache_keeps_a_valid_token_when_refresh_fails() -> None:
    """A failed refresh inside the margin falls back to the still-valid token; once expired it raises."""
    cred = SlowCredential(fail_after=1)
    cache = TokenCache(cred, scope=BATCH_SCOPE, wall_clock=lambda: cred.now)
    assert await cache.get() == "t1"
    cred.now += 400  # inside the refresh window (600 s token, refresh at half life), still valid
    assert await cache.get() == "t1"
    cred.now += 300  # expired
    with pytest.raises(CredentialError, match="RuntimeError"):
        await cache.get()
    assert "t1" not in repr(cache)
