"""Authentication: Shared Key signing, the token-credential protocol, and the client's token cache.

Two ways in, both behind one seam the client calls per attempt:

* :class:`SharedKeyCredential` signs each request (``Authorization: SharedKey account:signature``) by the
  documented algorithm (reference sheet section 6).
* Anything shaped like azure-core's ``AsyncTokenCredential`` (``await get_token(*scopes)`` returning an object
  with ``.token`` and ``.expires_on``) gives Bearer tokens. The msal-based credentials in :mod:`._identity`
  are such objects, and so is azure-identity's ``DefaultAzureCredential``. :class:`TokenCache` holds the
  token: single-flight acquisition, refresh ahead of expiry, invalidation after a ``401``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import math
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import attrs

from ._errors import AuthenticationError, CredentialError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._request import Request

__all__ = [
    "BATCH_SCOPE",
    "AccessToken",
    "AccessTokenLike",
    "AsyncTokenCredentialLike",
    "Authorizer",
    "BearerAuthorizer",
    "SharedKeyAuthorizer",
    "SharedKeyCredential",
    "TokenCache",
    "authorizer_for",
    "canonical_query",
    "compose_string_to_sign",
    "string_to_sign",
]

_log = logging.getLogger(__name__)

BATCH_SCOPE: Final = "https://batch.core.windows.net//.default"
"""The OAuth scope of the Batch data plane (the double slash is the service's own)."""


@runtime_checkable
class AccessTokenLike(Protocol):
    """What a token credential returns (azure-core's ``AccessToken`` satisfies it)."""

    @property
    def token(self) -> str:
        """The bearer token."""
        ...

    @property
    def expires_on(self) -> int:
        """Expiry as seconds since the Unix epoch."""
        ...


@runtime_checkable
class AsyncTokenCredentialLike(Protocol):
    """azure-core's ``AsyncTokenCredential`` protocol, reduced to what this library calls.

    azure-identity's async credentials (``DefaultAzureCredential`` and friends) satisfy it, so this
    package never depends on azure-identity.
    """

    async def get_token(self, *scopes: str) -> AccessTokenLike:
        """Return a token valid for ``scopes``."""
        ...


@attrs.frozen
class AccessToken:
    """A bearer token and its expiry (epoch seconds); the token never appears in the repr."""

    token: str = attrs.field(repr=False)
    expires_on: int


def string_to_sign(
    method: str,
    account_name: str,
    encoded_path: str,
    query: Iterable[tuple[str, str]],
    *,
    ocp_headers: Iterable[tuple[str, str]],
    content_length: str = "",
    content_type: str = "",
    lowercase_query_names: bool = True,
) -> str:
    """The Shared Key StringToSign of a Batch request.

    Args:
        method: The HTTP verb, upper case.
        account_name: The Batch account name.
        encoded_path: The URL path exactly as sent (percent-encoded).
        query: The query parameters as (name, URL-decoded value) pairs.
        ocp_headers: The ``ocp-*`` headers sent (``ocp-date`` at least).
        content_length: The Content-Length slot: the body's byte count, ``"0"`` for a bodiless POST, and
            empty for GET.
        content_type: The exact Content-Type header sent, or empty.
        lowercase_query_names: Lower-case parameter names as the docs and the Java SDK do; the Python
            SDK does not (it only matters for ``timeOut``).

    Returns:
        The string whose HMAC-SHA256 is the signature.
    """
    headers = "".join(f"{name}:{value}\n" for name, value in sorted((n.lower(), v) for n, v in ocp_headers))
    return compose_string_to_sign(
        method,
        account_name,
        encoded_path,
        canonical_query(tuple(query), lowercase_names=lowercase_query_names),
        ocp=headers,
        length=content_length,
        content_type=content_type,
    )


def compose_string_to_sign(
    method: str,
    account: str,
    path: str,
    query: str,
    *,
    ocp: str,
    length: str,
    content_type: str,
    date: str = "",
) -> str:
    """The one StringToSign builder (the client's signing, :func:`string_to_sign` and the emulator's check).

    Args:
        method: The HTTP verb.
        account: The account name.
        path: The encoded path.
        query: The canonical query (:func:`canonical_query`).
        ocp: The canonical ``ocp-*`` headers, each ``name:value`` and a newline, sorted.
        length: The Content-Length slot.
        content_type: The Content-Type slot.
        date: The Date slot (empty when ``ocp-date`` is sent).
    """
    # VERB, then 11 header slots (Content-Length is the 3rd, Content-Type the 5th, Date the 6th), each ended by
    # a newline; then the ocp-* headers and the canonical resource.
    return f"{method}\n\n\n{length}\n\n{content_type}\n{date}\n\n\n\n\n\n{ocp}/{account}{path}{query}"


@functools.lru_cache(maxsize=64)
def canonical_query(query: tuple[tuple[str, str], ...], *, lowercase_names: bool = True) -> str:
    r"""The canonicalised query part: ``\nname:value`` per parameter, sorted by name, multi-values joined.

    Cached: a bulk run sends thousands of requests with the same query.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        if value:
            grouped.setdefault(name.lower() if lowercase_names else name, []).append(value)
    return "".join(f"\n{name}:{','.join(sorted(values))}" for name, values in sorted(grouped.items()))


class SharedKeyCredential:
    """A Batch account name and key, used to sign every request (Shared Key authentication).

    Args:
        account_name: The Batch account name.
        account_key: The account's primary or secondary key (base64). It is kept decoded in memory and
            never shown in a repr, a log line or an error message.
        lowercase_query_names: See :func:`string_to_sign`; keep the default unless your endpoint expects
            the Python SDK's case-preserving form for ``timeOut``.
    """

    __slots__ = ("_key", "account_name", "lowercase_query_names")

    def __init__(self, account_name: str, account_key: str, *, lowercase_query_names: bool = True) -> None:
        if not isinstance(account_name, str) or not account_name or any(c in account_name for c in " :/\n\r\t"):
            raise ValueError("account_name must be a non-empty Batch account name")
        if not isinstance(account_key, str) or not account_key:
            raise ValueError("account_key must be a non-empty base64 string")
        try:
            key = base64.b64decode(account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("account_key is not valid base64") from None
        if not key:
            raise ValueError("account_key decodes to an empty key")
        self.account_name = account_name
        self.lowercase_query_names = lowercase_query_names
        self._key = key

    def __repr__(self) -> str:
        return f"SharedKeyCredential(account_name={self.account_name!r}, account_key=<redacted>)"

    def signature(self, string: str) -> str:
        """Base64 HMAC-SHA256 of ``string`` under the account key."""
        return base64.b64encode(hmac.new(self._key, string.encode(), hashlib.sha256).digest()).decode()

    def authorization(self, string: str) -> str:
        """The ``Authorization`` header value for a request whose StringToSign is ``string``."""
        return f"SharedKey {self.account_name}:{self.signature(string)}"


_DEFAULT_REFRESH_MARGIN: Final = 300.0  # seconds before expiry, as azure-core's bearer policy
_STILL_USABLE_MARGIN: Final = 30.0  # an old token this far from expiry may serve while another task refreshes


class TokenCache:
    """Holds one bearer token for a client: single-flight, refreshed ahead of expiry, dropped after a 401.

    Args:
        credential: Any :class:`AsyncTokenCredentialLike`.
        scope: The scope to ask for.
        wall_clock: Seconds since the epoch (``time.time``); injectable for tests.
        refresh_margin: Refresh this many seconds before ``expires_on``.
    """

    __slots__ = (
        "_credential",
        "_expires_on",
        "_lock",
        "_refresh_at",
        "_refresh_margin",
        "_scope",
        "_token",
        "_wall_clock",
    )

    def __init__(
        self,
        credential: AsyncTokenCredentialLike,
        *,
        scope: str,
        wall_clock: Callable[[], float],
        refresh_margin: float = _DEFAULT_REFRESH_MARGIN,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._wall_clock = wall_clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._refresh_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._refresh_margin = refresh_margin

    def __repr__(self) -> str:
        return f"TokenCache(credential={type(self._credential).__name__}, scope={self._scope!r})"

    async def get(self) -> str:
        """A valid token, acquiring or refreshing it when needed (one acquisition at a time)."""
        token = self._token
        now = self._wall_clock()
        if token is not None and now < self._refresh_at:
            return token
        if self._lock is None:
            self._lock = asyncio.Lock()
        if token is not None and self._lock.locked() and now < self._expires_on - _STILL_USABLE_MARGIN:
            return token  # a refresh is under way and the current token is still good
        async with self._lock:
            token = self._token
            now = self._wall_clock()
            if token is not None and now < self._refresh_at:
                return token
            return await self._acquire(token, now)

    async def _acquire(self, old: str | None, now: float) -> str:
        try:
            fresh = await self._credential.get_token(self._scope)
            token, expires_on = fresh.token, float(fresh.expires_on)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if old is not None and now < self._expires_on - _STILL_USABLE_MARGIN:
                _log.warning("token refresh failed (%s); using the current token until it expires", type(exc).__name__)
                return old
            if isinstance(exc, CredentialError):
                raise
            raise CredentialError(f"{type(exc).__name__} while acquiring a token for {self._scope}") from exc
        if not isinstance(token, str) or not token:
            raise CredentialError("the credential returned an empty token")
        if not math.isfinite(expires_on):
            expires_on = now + self._refresh_margin
        self._token = token
        self._expires_on = expires_on
        # A short-lived token is refreshed at half its life rather than at once, every time.
        lifetime = max(0.0, expires_on - now)
        self._refresh_at = expires_on - min(self._refresh_margin, lifetime / 2)
        _log.debug("acquired a token for %s, valid for %.0f s", self._scope, lifetime)
        return token

    def invalidate(self, token: str) -> None:
        """Drop ``token`` after the service refused it; a newer token (already refreshed) is kept."""
        if self._token == token:
            self._token = None
            self._refresh_at = 0.0


class Authorizer(Protocol):
    """How a request gets its ``Authorization`` header, and what a refusal means (httpx's auth flow, reduced).

    The wire layer calls :meth:`authorize` before every attempt (after the attempt's ``ocp-date`` is set) and,
    on a ``401``/``403``, asks :meth:`refused` whether to resend once at once (only when :attr:`resends`: an
    authorizer that never resends spares every attempt that check). The retry policy never sees authentication:
    its predicate has no side effects.
    """

    resends: bool

    async def authorize(self, request: Request, headers: dict[str, str]) -> str | None:
        """Set ``headers["Authorization"]``; return what was used (a token to drop if refused), or ``None``."""
        ...

    def refused(self, error: AuthenticationError, used: str | None) -> bool:
        """The service refused a request authorized with ``used``: True to resend once, with fresh credentials."""
        ...


class SharedKeyAuthorizer:
    """Signs each attempt with the account key; a refusal is final (there is nothing to refresh)."""

    __slots__ = ("_credential", "_lowercase")
    resends = False

    def __init__(self, credential: SharedKeyCredential) -> None:
        self._credential = credential
        self._lowercase = credential.lowercase_query_names

    def __repr__(self) -> str:
        return f"SharedKeyAuthorizer({self._credential!r})"

    async def authorize(self, request: Request, headers: dict[str, str]) -> str | None:
        """Sign: the body's length and type, the attempt's ``ocp-date``, the path and the query."""
        body = request.body
        length = "" if request.method == "GET" else str(len(body)) if body is not None else "0"
        to_sign = compose_string_to_sign(
            request.method,
            self._credential.account_name,
            request.path,
            canonical_query(request.query, lowercase_names=self._lowercase),
            ocp=f"ocp-date:{headers['ocp-date']}\n",
            length=length,
            content_type=headers.get("Content-Type", ""),
        )
        headers["Authorization"] = self._credential.authorization(to_sign)
        return None

    def refused(self, error: AuthenticationError, used: str | None) -> bool:
        """Never resend: the same key would be refused again."""
        del error, used
        return False


class BearerAuthorizer:
    """Bearer tokens from a :class:`TokenCache`; a 401 drops the token used and resends once with a fresh one."""

    __slots__ = ("_tokens",)
    resends = True

    def __init__(self, tokens: TokenCache) -> None:
        self._tokens = tokens

    def __repr__(self) -> str:
        return f"BearerAuthorizer({self._tokens!r})"

    async def authorize(self, request: Request, headers: dict[str, str]) -> str | None:
        """Set the cached (or a fresh) token."""
        del request
        token = await self._tokens.get()
        headers["Authorization"] = f"Bearer {token}"
        return token

    def refused(self, error: AuthenticationError, used: str | None) -> bool:
        """A 401 (or 403 AuthenticationFailed): the token may have expired or been revoked; drop it, resend once."""
        if error.status != 401 and error.code != "AuthenticationFailed":  # noqa: PLR2004 (HTTP status)
            return False
        if used is not None:
            self._tokens.invalidate(used)
        return True


def authorizer_for(credential: object, *, wall_clock: Callable[[], float]) -> Authorizer:
    """The authorizer of a credential: Shared Key signs, anything with ``get_token`` gives Bearer tokens.

    Raises:
        TypeError: neither.
    """
    if isinstance(credential, SharedKeyCredential):
        return SharedKeyAuthorizer(credential)
    if callable(getattr(credential, "get_token", None)):
        tokens = TokenCache(credential, scope=BATCH_SCOPE, wall_clock=wall_clock)  # type: ignore[arg-type]
        return BearerAuthorizer(tokens)
    raise TypeError("credential must be a SharedKeyCredential or have an async get_token(*scopes)")
