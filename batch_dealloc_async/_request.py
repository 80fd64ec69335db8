"""Pure request building and response reading: argument checks, URLs, dates, header parsing. No I/O."""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import json
import math
import re
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote, urlsplit

import attrs
import cattrs

from ._converter import dump_json, load_model
from ._models import BatchError, BatchNodeDeallocateOption, BatchNodeDeallocateOptions

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_API_VERSION",
    "MAX_PAGE_SIZE",
    "MAX_SERVICE_TIMEOUT",
    "NODE_ID_MAX",
    "POOL_ID_MAX",
    "STATE_SELECT",
    "Endpoint",
    "Request",
    "RequestFactory",
    "check_client_request_id",
    "deallocate_body",
    "encode_query",
    "format_http_date",
    "parse_error_body",
    "parse_http_date",
    "parse_http_date_cached",
    "quote_segment",
    "resolve_option",
    "state_filter",
    "validate_deadline",
    "validate_endpoint",
    "validate_id",
    "validate_node_id",
    "validate_pool_id",
    "validate_select",
    "validate_service_timeout",
]

DEFAULT_API_VERSION: Final = "2025-06-01"
CONTENT_TYPE: Final = "application/json; odata=minimalmetadata"
MAX_SERVICE_TIMEOUT: Final = 30
POOL_ID_MAX: Final = 64  # documented: "cannot contain more than 64 characters"
NODE_ID_MAX: Final = 256  # service-made ids are about 70 characters; leave ample room
MAX_PAGE_SIZE: Final = 1000  # the service's maximum (and default) maxresults
STATE_SELECT: Final = "id,state"  # every listing and state check reads only these
_GUID_RE: Final = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
_BAD_ID_CHARS: Final = re.compile(r"[\x00-\x20\x7f-\x9f/\\\u2028\u2029\ufeff]|\s")
_CONTROL_OR_SPACE: Final = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")
_API_VERSION_RE: Final = re.compile(r"^[0-9A-Za-z.\-]{1,32}$")
_SNIPPET_LEN: Final = 200


def validate_id(kind: str, value: object, max_len: int) -> str:
    r"""Check a pool or node id: a non-empty string the service could accept as one path segment.

    Raises:
        ValueError: empty, too long, whitespace or control characters, ``/`` or ``\\``, or only dots.
    """
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{kind} is longer than {max_len} characters")
    if _BAD_ID_CHARS.search(value):
        raise ValueError(f"{kind} {value[:80]!r} contains whitespace, a control character, '/' or '\\'")
    if value.strip(".") == "":
        raise ValueError(f"{kind} {value!r} is only dots")
    return value


def validate_pool_id(value: object) -> str:
    """:func:`validate_id` for a pool id."""
    return validate_id("pool_id", value, POOL_ID_MAX)


def validate_node_id(value: object) -> str:
    """:func:`validate_id` for a node id."""
    return validate_id("node_id", value, NODE_ID_MAX)


def validate_deadline(deadline: object, name: str = "deadline") -> float | None:
    """``None`` or a positive, finite number of seconds.

    Raises:
        ValueError: anything else.
    """
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
        raise ValueError(f"{name} must be a positive number of seconds, got {deadline!r}")
    if deadline <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {deadline!r}")
    return float(deadline)


def check_client_request_id(value: object) -> str | None:
    """``None`` or a GUID without braces (the service's format for ``client-request-id``).

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _GUID_RE.match(value):
        raise ValueError("client_request_id must be a GUID without braces, e.g. 9C4D50EE-2D56-4CD3-8152-34347DC9F2B0")
    return value


def validate_select(select: object) -> str | None:
    """The ``$select`` value for property names (``None`` for all properties).

    Raises:
        ValueError: not property names.
    """
    if select is None:
        return None
    fields = [select] if isinstance(select, str) else list(select)  # type: ignore[call-overload]
    if not fields or not all(isinstance(f, str) and f.replace("/", "").isalnum() for f in fields):
        raise ValueError(f"select must be property names such as ('id', 'state'), got {select!r}")
    return ",".join(fields)


def validate_service_timeout(timeout: object) -> int | None:
    """Check the service-side ``timeOut``: ``None`` (service default, 30 s) or an int of 1..30 seconds.

    Raises:
        ValueError: anything else (a bool, a float, 0, 31, ...).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_SERVICE_TIMEOUT:
        raise ValueError(f"timeout must be an int of 1..{MAX_SERVICE_TIMEOUT} seconds, got {timeout!r}")
    return timeout


def resolve_option(
    option: BatchNodeDeallocateOption | BatchNodeDeallocateOptions | str | None, *, stacklevel: int = 3
) -> BatchNodeDeallocateOption | None:
    """Normalise the ``option`` argument; warns when the deprecated ``retaineddata`` is chosen.

    Raises:
        ValueError: a string that is not one of the service's values.
    """
    if isinstance(option, BatchNodeDeallocateOptions):
        option = option.node_deallocate_option
    if option is None:
        return None
    if not isinstance(option, str):
        raise ValueError(f"option must be a BatchNodeDeallocateOption, got {type(option).__name__}")
    try:
        resolved = BatchNodeDeallocateOption(option)
    except ValueError:
        choices = ", ".join(o.value for o in BatchNodeDeallocateOption)
        raise ValueError(f"option must be one of {choices}; got {option[:40]!r}") from None
    if resolved is BatchNodeDeallocateOption.RETAINED_DATA:
        warnings.warn(
            "the 'retaineddata' deallocate option is deprecated by the service; use 'taskcompletion'",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
    return resolved


def deallocate_body(option: BatchNodeDeallocateOption | None) -> bytes | None:
    """The request body for ``option``: ``None`` (no body, the service applies requeue) or the JSON bytes."""
    if option is None:
        return None
    return dump_json(BatchNodeDeallocateOptions(node_deallocate_option=option))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class Endpoint:
    """A checked service endpoint: ``scheme://host[:port]`` with no path, query or credentials."""

    base: str
    scheme: str
    host: str
    netloc: str

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` points at this endpoint (a next link must not send our credentials elsewhere)."""
        parts = urlsplit(url)
        return parts.scheme.lower() == self.scheme and parts.netloc.lower() == self.netloc


def validate_endpoint(endpoint: object) -> Endpoint:
    """Check the account endpoint: https, or plain http only for a loopback host (the local emulator).

    Raises:
        ValueError: not a URL, another scheme, plain http to a remote host, a path, query, fragment or
            user info.
    """
    if not isinstance(endpoint, str) or not endpoint or _CONTROL_OR_SPACE.search(endpoint):
        raise ValueError("endpoint must be a URL such as https://myaccount.westus.batch.azure.com")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise ValueError(f"endpoint {endpoint[:100]!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"} or not host:
        raise ValueError(f"endpoint {endpoint[:100]!r} must be an https URL with a host")
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(f"endpoint {endpoint[:100]!r}: plain http is allowed only for a loopback host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint must not carry user info")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"endpoint {endpoint[:100]!r} must not have a path, query or fragment")
    netloc = parts.netloc.lower()
    return Endpoint(base=f"{scheme}://{netloc}", scheme=scheme, host=host, netloc=netloc)


def validate_api_version(api_version: object) -> str:
    """Check ``api_version`` is a plausible version string (it goes into every URL).

    Raises:
        ValueError: empty or with characters no api-version has.
    """
    if not isinstance(api_version, str) or not _API_VERSION_RE.match(api_version):
        raise ValueError(f"api_version {api_version!r} is not a valid api-version")
    return api_version


def encode_query(query: Iterable[tuple[str, str]]) -> str:
    """The query string: names as they are (``$filter``), values percent-encoded (commas kept)."""
    return "&".join(f"{name}={quote(value, safe=',')}" for name, value in query)


def quote_segment(segment: str) -> str:
    """Percent-encode one path segment with nothing kept safe (``/`` too), as the SDK does."""
    return quote(segment, safe="")


@attrs.frozen
class Request:
    """One call's request, fixed across its attempts (headers that change per attempt are not here).

    Attributes:
        method: HTTP verb.
        url: The absolute URL, already percent-encoded.
        path: The encoded path (for Shared Key).
        query: The query as (name, decoded value) pairs (for Shared Key).
        body: The body bytes, or ``None`` for no body (and no Content-Type).
    """

    method: str
    url: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: bytes | None = None

    @classmethod
    def build(
        cls,
        endpoint: Endpoint,
        method: str,
        segments: Iterable[str],
        query: Iterable[tuple[str, str]],
        body: bytes | None = None,
    ) -> Request:
        """Percent-encode every path segment (nothing kept safe, as the SDK does) and assemble the URL."""
        path = "".join("/" + quote_segment(segment) for segment in segments)
        pairs = tuple(query)
        return cls(method, f"{endpoint.base}{path}?{encode_query(pairs)}", path, pairs, body)

    @classmethod
    def from_link(cls, endpoint: Endpoint, link: str, api_version: str) -> Request:
        """A GET of a server-given ``odata.nextLink``: its own query kept, ``api-version`` overwritten.

        Raises:
            ValueError: the link points at another host or scheme.
        """
        if not endpoint.same_origin(link):
            raise ValueError("the service's next link points at another host; refusing to follow it")
        parts = urlsplit(link)
        pairs = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True) if n != "api-version"]
        pairs.insert(0, ("api-version", api_version))
        path = parts.path or "/"
        return cls("GET", f"{endpoint.base}{path}?{encode_query(pairs)}", path, tuple(pairs))


def format_http_date(timestamp: float) -> str:
    """RFC 7231 IMF-fixdate, e.g. ``Sun, 01 Jun 2025 12:00:00 GMT``."""
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value: str | None) -> datetime | None:
    """An RFC 7231 date header as an aware UTC datetime; ``None`` when absent or malformed."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


@functools.lru_cache(maxsize=8)
def parse_http_date_cached(value: str | None) -> datetime | None:
    """:func:`parse_http_date`, remembering the last few: responses within one second share the header."""
    return parse_http_date(value)


def _snippet(body: bytes) -> str:
    text = body[: _SNIPPET_LEN * 4].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())[:_SNIPPET_LEN]


def parse_error_body(body: bytes, content_type: str | None) -> tuple[BatchError | None, str]:
    """Read a ``BatchError`` body; anything else gives ``(None, snippet)`` with a short, printable snippet."""
    del content_type  # the service labels errors application/json; proxies lie, so try JSON regardless
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, _snippet(body)
    if not isinstance(data, dict):
        return None, _snippet(body)
    try:
        error = load_model(data, BatchError)
    except (cattrs.BaseValidationError, ValueError, TypeError, AttributeError):
        return None, _snippet(body)
    if error.code is None and error.message is None:
        return None, _snippet(body)
    return error, ""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header, ``None`` when absent or empty."""
    value = headers.get(name)
    return value or None


def state_filter(states: Iterable[str]) -> str:
    """An OData ``$filter`` selecting nodes in any of ``states``, e.g. ``(state eq 'idle') or (state eq 'running')``.

    Raises:
        ValueError: no states, or a state that is not a lower-case word.
    """
    names = [states] if isinstance(states, str) else list(states)
    if not names or not all(isinstance(s, str) and s.isalpha() and s.islower() for s in names):
        raise ValueError(f"states must be node states such as ('idle', 'running'), got {states!r}")
    unique = list(dict.fromkeys(names))
    if len(unique) == 1:
        return f"state eq '{unique[0]}'"
    return " or ".join(f"(state eq '{s}')" for s in unique)


class RequestFactory:
    """Builds one client's requests, remembering what a bulk run repeats (pool paths, the action queries).

    Args:
        endpoint: The checked endpoint.
        api_version: The api-version every request carries.
    """

    __slots__ = ("_action_queries", "_endpoint", "_pool_prefixes", "api_version")

    _MAX_POOLS: Final = 1024  # pool paths remembered; more pools are built each time

    def __init__(self, endpoint: Endpoint, api_version: str) -> None:
        self._endpoint = endpoint
        self.api_version = api_version
        self._pool_prefixes: dict[str, str] = {}
        self._action_queries: dict[int | None, tuple[tuple[tuple[str, str], ...], str]] = {}

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint requests go to."""
        return self._endpoint

    def node_action(self, pool_id: str, node_id: str, verb: str, body: bytes | None, timeout: int | None) -> Request:
        """``POST .../pools/{poolId}/nodes/{nodeId}/{verb}`` with the service ``timeOut``, if any."""
        prefix = self._pool_prefixes.get(pool_id)
        if prefix is None:
            prefix = f"/pools/{quote_segment(pool_id)}/nodes/"
            if len(self._pool_prefixes) < self._MAX_POOLS:
                self._pool_prefixes[pool_id] = prefix
        query = self._action_queries.get(timeout)
        if query is None:
            pairs = [("api-version", self.api_version)]
            if timeout is not None:
                pairs.append(("timeOut", str(timeout)))
            query = self._action_queries[timeout] = (tuple(pairs), encode_query(pairs))
        path = f"{prefix}{quote_segment(node_id)}/{verb}"
        return Request("POST", f"{self._endpoint.base}{path}?{query[1]}", path, query[0], body)

    def read_query(self, select: str | None, timeout: int | None) -> list[tuple[str, str]]:
        """The query of a read: api-version, then ``$select`` and ``timeOut`` when given."""
        query = [("api-version", self.api_version)]
        if select is not None:
            query.append(("$select", select))
        if timeout is not None:
            query.append(("timeOut", str(timeout)))
        return query

    def get_node(
        self, pool_id: str, node_id: str, *, select: str | None = STATE_SELECT, timeout: int | None = None
    ) -> Request:
        """``GET .../pools/{poolId}/nodes/{nodeId}``, by default only the id and state."""
        query = self.read_query(select, timeout)
        return Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes", node_id), query)

    def list_nodes(
        self,
        pool_id: str,
        *,
        filter_: str | None,
        select: str | None = STATE_SELECT,
        page_size: int = MAX_PAGE_SIZE,
        timeout: int | None = None,
    ) -> Request:
        """``GET .../pools/{poolId}/nodes``: the first page of a listing."""
        query = self.read_query(select, timeout)
        query.append(("maxresults", str(page_size)))
        if filter_ is not None:
            query.append(("$filter", filter_))
        return Request.build(self._endpoint, "GET", ("pools", pool_id, "nodes"), query)

    def next_page(self, link: str) -> Request:
        """The request for a listing's ``odata.nextLink``.

        Raises:
            ValueError: the link points at another host or scheme.
        """
        return Request.from_link(self._endpoint, link, self.api_version)
