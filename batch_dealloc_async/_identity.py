"""Microsoft Entra ID credentials built on msal.

msal is synchronous and may do network I/O (authority discovery, token requests), so every msal call runs
in a worker thread through :func:`asyncio.to_thread`: the event loop never blocks. Each credential builds
its msal application lazily, once, inside that thread. msal keeps its own in-memory token cache; the
client's :class:`~batch_dealloc_async._auth.TokenCache` sits in front of it and makes acquisitions
single-flight, so a burst of calls costs one trip to a worker thread.

Secrets (client secret, private key, certificate password) are kept in private attributes and never appear
in a repr, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._auth import AccessToken
from ._errors import CredentialError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CertificateCredential", "ClientSecretCredential", "ManagedIdentityCredential"]

DEFAULT_AUTHORITY_HOST: Final = "https://login.microsoftonline.com"
_TENANT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,127}$")
_PEM_BLOCK_RE: Final = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not _TENANT_RE.match(value):
        raise ValueError(f"{name} must be a GUID or a domain name")
    return value


def _describe(exc: Exception) -> str:
    """The identity provider's error code and first description line (msal errors carry them), or the type."""
    error = getattr(exc, "error", None)
    if isinstance(error, str) and error:
        description = str(getattr(exc, "error_description", "") or "").split("\n", 1)[0][:300]
        return f"{error}: {description}".rstrip(": ")
    return type(exc).__name__


def _token_from_result(result: object, what: str) -> AccessToken:
    """Turn an msal result dict into an :class:`AccessToken`, or raise :class:`CredentialError`."""
    if not isinstance(result, dict):
        raise CredentialError(f"{what}: msal returned no result")
    token = result.get("access_token")
    if not isinstance(token, str) or not token:
        error = str(result.get("error") or "unknown_error")
        description = str(result.get("error_description") or "").split("\n", 1)[0][:300]
        raise CredentialError(f"{what} failed: {error}: {description}".rstrip(": "))
    expires_in = result.get("expires_in")
    try:
        lifetime = int(expires_in) if expires_in is not None else 3600
    except (TypeError, ValueError):
        lifetime = 3600
    return AccessToken(token, int(time.time()) + max(0, lifetime))


class _LazyApp:
    """Builds an msal application once, in whichever worker thread first needs it."""

    __slots__ = ("_app", "_factory", "_lock")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:  # noqa: ANN401 (msal ships no type hints)
        with self._lock:
            if self._app is None:
                self._app = self._factory()
            return self._app


class _ConfidentialClient:
    """Shared part of the two confidential-client credentials."""

    __slots__ = ("_app", "_authority", "client_id", "tenant_id")

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        credential: Callable[[], object],
        *,
        authority_host: str,
        http_client: object | None,
    ) -> None:
        self.tenant_id = _check_id("tenant_id", tenant_id)
        self.client_id = _check_id("client_id", client_id)
        if not isinstance(authority_host, str) or not authority_host.startswith("https://"):
            raise ValueError("authority_host must be an https URL")
        self._authority = f"{authority_host.rstrip('/')}/{tenant_id}"

        def build() -> Any:  # noqa: ANN401 (msal ships no type hints)
            kwargs: dict[str, Any] = {"authority": self._authority, "client_credential": credential()}
            if http_client is not None:
                kwargs["http_client"] = http_client
            import msal  # noqa: PLC0415 (imported by the first token request: a Shared Key user never pays for it)

            return msal.ConfidentialClientApplication(client_id, **kwargs)

        self._app = _LazyApp(build)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tenant_id={self.tenant_id!r}, client_id={self.client_id!r})"

    def _acquire(self, scopes: tuple[str, ...]) -> AccessToken:
        what = f"token request for client {self.client_id}"
        try:
            result = self._app.get().acquire_token_for_client(scopes=list(scopes))
        except CredentialError:
            raise
        except Exception as exc:
            raise CredentialError(f"{what} failed: {_describe(exc)}") from exc
        return _token_from_result(result, what)

    async def get_token(self, *scopes: str, **_: object) -> AccessToken:
        """Acquire a token for ``scopes`` from Microsoft Entra ID without blocking the event loop.

        Raises:
            CredentialError: msal could not get a token (wrong secret, unknown tenant, no network).
        """
        if not scopes:
            raise ValueError("at least one scope is required")
        return await asyncio.to_thread(self._acquire, scopes)


class ClientSecretCredential(_ConfidentialClient):
    """A service principal authenticating with a client secret (msal confidential client).

    Args:
        tenant_id: The Microsoft Entra tenant (GUID or domain).
        client_id: The application (client) id.
        client_secret: The client secret; never shown in a repr or an error.
        authority_host: The login host, for sovereign clouds.
        http_client: Passed to msal (a ``requests.Session``-like object), e.g. for a proxy.
    """

    __slots__ = ("_secret",)

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        *,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        http_client: object | None = None,
    ) -> None:
        if not isinstance(client_secret, str) or not client_secret:
            raise ValueError("client_secret must be a non-empty string")
        self._secret = client_secret
        super().__init__(
            tenant_id, client_id, lambda: self._secret, authority_host=authority_host, http_client=http_client
        )


def _load_certificate(data: bytes, password: bytes | None) -> dict[str, str]:
    """PEM (key and certificate) or PKCS#12 bytes -> msal's ``client_credential`` dict."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 (only certificate users pay for it)
    from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: PLC0415

    if b"-----BEGIN" in data:
        blocks = {m.group(1).decode(): m.group(0) for m in _PEM_BLOCK_RE.finditer(data)}
        cert = blocks.get("CERTIFICATE")
        key_pem = next((v for k, v in blocks.items() if k.endswith("PRIVATE KEY")), None)
        if cert is None or key_pem is None:
            raise ValueError("the PEM certificate must hold both a private key and a certificate")
        key = serialization.load_pem_private_key(key_pem, password)
    else:
        try:
            loaded_key, loaded_cert, _ = pkcs12.load_key_and_certificates(data, password)
        except ValueError:
            raise ValueError("the certificate is neither PEM nor PKCS#12, or the password is wrong") from None
        if loaded_key is None or loaded_cert is None:
            raise ValueError("the PKCS#12 certificate must hold both a private key and a certificate")
        key = loaded_key
        cert = loaded_cert.public_bytes(serialization.Encoding.PEM)
    private_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"private_key": private_key.decode(), "public_certificate": cert.decode()}


class CertificateCredential(_ConfidentialClient):
    """A service principal authenticating with a certificate (msal confidential client).

    Give exactly one of ``certificate_path`` and ``certificate_data``: PEM holding the private key and the
    certificate (as azure-identity's ``AZURE_CLIENT_CERTIFICATE_PATH`` does), or PKCS#12 (``.pfx``).

    Args:
        tenant_id: The Microsoft Entra tenant (GUID or domain).
        client_id: The application (client) id.
        certificate_path: Path of the PEM or PKCS#12 file; read when the first token is needed.
        certificate_data: The same content as bytes.
        password: The password of an encrypted key or PKCS#12 file; never shown.
        authority_host: The login host, for sovereign clouds.
        http_client: Passed to msal (a ``requests.Session``-like object), e.g. for a proxy.
    """

    __slots__ = ("_password",)

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        *,
        certificate_path: str | Path | None = None,
        certificate_data: bytes | None = None,
        password: str | bytes | None = None,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        http_client: object | None = None,
    ) -> None:
        if (certificate_path is None) == (certificate_data is None):
            raise ValueError("give exactly one of certificate_path and certificate_data")
        self._password = password.encode() if isinstance(password, str) else password
        path = Path(certificate_path) if certificate_path is not None else None

        def credential() -> dict[str, str]:
            data = path.read_bytes() if path is not None else certificate_data
            assert data is not None  # noqa: S101 (one of the two was checked above)
            return _load_certificate(data, self._password)

        super().__init__(tenant_id, client_id, credential, authority_host=authority_host, http_client=http_client)


class ManagedIdentityCredential:
    """An Azure managed identity (msal ``ManagedIdentityClient``): system-assigned, or user-assigned by client id.

    Args:
        client_id: The client id of a user-assigned identity; ``None`` for the system-assigned one.
        http_client: A ``requests.Session``-like object for msal; a new ``requests.Session`` by default.
    """

    __slots__ = ("_app", "client_id")

    def __init__(self, client_id: str | None = None, *, http_client: object | None = None) -> None:
        self.client_id = None if client_id is None else _check_id("client_id", client_id)

        def build() -> Any:  # noqa: ANN401 (msal ships no type hints)
            import msal  # noqa: PLC0415 (imported by the first token request)

            identity: Any = (
                msal.SystemAssignedManagedIdentity()
                if client_id is None
                else msal.UserAssignedManagedIdentity(client_id=client_id)
            )
            if http_client is None:
                import requests  # noqa: PLC0415 (msal's own dependency; only managed identity needs it here)

                return msal.ManagedIdentityClient(identity, http_client=requests.Session())
            return msal.ManagedIdentityClient(identity, http_client=http_client)

        self._app = _LazyApp(build)

    def __repr__(self) -> str:
        return f"ManagedIdentityCredential(client_id={self.client_id!r})"

    def _acquire(self, resource: str) -> AccessToken:
        what = "managed identity token request"
        try:
            result = self._app.get().acquire_token_for_client(resource=resource)
        except Exception as exc:
            raise CredentialError(f"{what} failed: {_describe(exc)}") from exc
        return _token_from_result(result, what)

    async def get_token(self, *scopes: str, **_: object) -> AccessToken:
        """Acquire a token for the one scope given (managed identity takes a resource, not scopes).

        Raises:
            CredentialError: no managed identity endpoint answered, or it refused.
        """
        if len(scopes) != 1:
            raise ValueError("managed identity takes exactly one scope")
        resource = scopes[0].removesuffix("/.default")
        return await asyncio.to_thread(self._acquire, resource)
