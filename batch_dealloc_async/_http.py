"""One HTTP exchange over aiohttp: a request out, a bounded answer back. The seam tests and simulations replace.

The wire layer (:mod:`._transport`) decides what to send and what an answer means; this module only moves
bytes. It owns the aiohttp session (or borrows the caller's), reads bodies within caps, and reports a failure
below HTTP as :class:`ExchangeError` saying whether the request may have reached the service.
"""

from __future__ import annotations

import ssl as ssl_module
from typing import TYPE_CHECKING, Final, Literal, Protocol

import aiohttp
import yarl

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

__all__ = ["ERROR_BODY_CAP", "SUCCESS_BODY_CAP", "AiohttpExchange", "Exchange", "ExchangeError", "Reply"]

ERROR_BODY_CAP: Final = 64 * 1024  # an error body beyond this is not read (a 50 MB HTML page stays on the wire)
SUCCESS_BODY_CAP: Final = 16 * 1024 * 1024  # a full page of 1,000 nodes is a few MB
_SKIP_WITHOUT_BODY: Final = frozenset({"Content-Type"})  # aiohttp would add application/octet-stream


class Reply:
    """A status, its headers (case-insensitive) and the body read (empty unless asked for, or an error's)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


ExchangeFailure = Literal["connect", "timeout", "io", "too_large"]


class ExchangeError(Exception):
    """No usable answer from the exchange.

    ``kind`` is ``connect`` (nothing reached the service), ``timeout``, ``io`` (reset, malformed answer) or
    ``too_large`` (a success body over the cap, not read).
    """

    def __init__(self, kind: ExchangeFailure, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail

    @property
    def sent(self) -> bool:
        """Whether the request may have reached the service (and so may have taken effect)."""
        return self.kind != "connect"


class Exchange(Protocol):
    """What the wire layer needs from HTTP: open, one exchange at a time per call, close."""

    async def open(self) -> None:
        """Prepare inside the running loop (e.g. create a session)."""

    async def close(self) -> None:
        """Release what ``open`` created (idempotent)."""

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        """Send one request and read its answer.

        Args:
            method: The HTTP verb.
            url: The absolute, already percent-encoded URL.
            headers: Every header to send (nothing is added but Host and Content-Length).
            body: The body, or ``None`` for none (and no Content-Type).
            timeout: Seconds for the whole exchange.
            expected: The success status; any other has its body read up to :data:`ERROR_BODY_CAP`.
            read_body: Read the body of a success (up to :data:`SUCCESS_BODY_CAP`).

        Raises:
            ExchangeError: no usable answer.
        """
        ...


def ssl_context(ssl: ssl_module.SSLContext | str | os.PathLike[str] | None) -> ssl_module.SSLContext | bool:
    """The ``ssl`` argument of aiohttp: verify against the system store, a context, or a CA bundle path."""
    if ssl is None:
        return True
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    return ssl_module.create_default_context(cafile=ssl)


class AiohttpExchange:
    """:class:`Exchange` over one aiohttp session: owned (connector sized to ``limit``) or the caller's.

    Args:
        session: The caller's session (never closed here), or ``None`` to own one.
        limit: Connections of an owned connector (the client's concurrency ceiling).
        ssl: See :func:`ssl_context`.
        netloc: The endpoint's host and port, for messages.
    """

    __slots__ = ("_limit", "_netloc", "_owns", "_session", "_ssl", "_timeouts")

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        *,
        limit: int,
        ssl: ssl_module.SSLContext | str | os.PathLike[str] | None,
        netloc: str,
    ) -> None:
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError("session must be an aiohttp.ClientSession")
        self._session = session
        self._owns = session is None
        self._limit = limit
        self._ssl = ssl_context(ssl)
        self._netloc = netloc
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The session in use (``None`` before an owned one is opened)."""
        return self._session

    async def open(self) -> None:
        """Create the owned session, inside the running loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, ssl=self._ssl, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        """Close an owned session; a session passed in is left open."""
        if self._owns and self._session is not None:
            await self._session.close()

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        """The common per-attempt values are built once; a deadline's remainder is not kept."""
        cached = self._timeouts.get(seconds)
        if cached is None:
            cached = aiohttp.ClientTimeout(total=seconds)
            if len(self._timeouts) < 8:  # noqa: PLR2004 (a bound, not a tuning knob)
                self._timeouts[seconds] = cached
        return cached

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        """See :meth:`Exchange.__call__`."""
        session = self._session
        assert session is not None  # noqa: S101 (the transport opens before it sends)
        try:
            async with session.request(
                method,
                yarl.URL(url, encoded=True),
                data=body,
                headers=headers,
                skip_auto_headers=_SKIP_WITHOUT_BODY if body is None else None,
                timeout=self._timeout(timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                if status != expected:
                    return Reply(status, response.headers, await _read_capped(response, ERROR_BODY_CAP))
                return Reply(status, response.headers, await _read_success(response) if read_body else b"")
        except aiohttp.ClientConnectorError as exc:
            raise ExchangeError("connect", f"cannot connect to {self._netloc} ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise ExchangeError("timeout", f"no response within {timeout:.1f} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ExchangeError("io", f"{type(exc).__name__} from {self._netloc}") from exc


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read at most ``cap`` bytes of a body; the rest stays unread and the connection is then dropped."""
    length = response.content_length
    if length is not None and length <= cap:
        return await response.read()
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        chunk = await response.content.read(cap - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


async def _read_success(response: aiohttp.ClientResponse) -> bytes:
    """A success's body, refused (unread, or once past the cap) when larger than any real page."""
    declared = response.content_length
    if declared is not None and declared > SUCCESS_BODY_CAP:
        body = b""
    else:
        body = await _read_capped(response, SUCCESS_BODY_CAP + 1)
    if len(body) > SUCCESS_BODY_CAP or (not body and declared):
        raise ExchangeError("too_large", f"the answer is larger than {SUCCESS_BODY_CAP // (1024 * 1024)} MiB; not read")
    return body
