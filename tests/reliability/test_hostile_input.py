"""Property tests over what callers pass in: valid input keeps the request's shape, invalid input never leaves."""

from __future__ import annotations

import asyncio
import ipaddress
from base64 import b64encode
from urllib.parse import unquote, urlsplit

import pytest
from aioresponses import aioresponses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from batch_dealloc_async import BatchDeallocClient, RetryPolicy, SharedKeyCredential
from batch_dealloc_async import _request as rq
from tests.conftest import REFERENCE_KEY

ENDPOINT = rq.validate_endpoint("https://acct.westus.batch.azure.com")
ids = st.text(min_size=0, max_size=80) | st.sampled_from(["", ".", "..", "a/b", "a b", "%2F", "?x=1", "#f", "ü", "-"])
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(pool=ids, node=ids)
def test_valid_ids_never_change_the_paths_shape(pool: str, node: str) -> None:
    """An accepted id is exactly one path segment, decoded back unchanged; the rest are ValueError."""
    try:
        rq.validate_id("pool_id", pool, rq.POOL_ID_MAX)
        rq.validate_id("node_id", node, rq.NODE_ID_MAX)
    except ValueError:
        return
    request = rq.Request.build(ENDPOINT, "POST", ("pools", pool, "nodes", node, "deallocate"), [("api-version", "v")])
    url = URL(request.url, encoded=True)
    parts = url.raw_path.split("/")
    assert parts[0] == ""
    assert len(parts) == 6
    assert [unquote(p) for p in parts[1:]] == ["pools", pool, "nodes", node, "deallocate"]
    assert url.host == "acct.westus.batch.azure.com"
    assert url.raw_query_string == "api-version=v"
    assert urlsplit(request.url).path == request.path


@SETTINGS
@given(timeout=st.none() | st.integers(-100, 100) | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=4))
def test_timeouts_are_1_to_30_whole_seconds(timeout: object) -> None:
    """Only None or an int of 1..30 passes."""
    valid = timeout is None or (type(timeout) is int and 1 <= timeout <= 30)
    if valid:
        assert rq.validate_service_timeout(timeout) == timeout
    else:
        with pytest.raises(ValueError, match="timeout"):
            rq.validate_service_timeout(timeout)


@SETTINGS
@given(option=st.none() | st.text(max_size=20) | st.sampled_from(["requeue", "terminate", "taskcompletion"]))
def test_options_are_the_services_values(option: str | None) -> None:
    """An option is one of the service's values or a ValueError."""
    if option in {None, "requeue", "terminate", "taskcompletion"}:
        body = rq.deallocate_body(rq.resolve_option(option))
        assert body is None or option in body.decode()
    elif option == "retaineddata":
        with pytest.warns(DeprecationWarning, match="taskcompletion"):
            rq.resolve_option(option)
    else:
        with pytest.raises(ValueError, match="option"):
            rq.resolve_option(option)


hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "127.9.9.9", "example.com", "10.0.0.1", "acct.westus.batch.azure.com", ""]
)
endpoints = st.builds(
    lambda scheme, host, port, tail: f"{scheme}://{host}{port}{tail}",
    st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
    hosts,
    st.sampled_from(["", ":8080", ":0", ":x"]),
    st.sampled_from(["", "/", "/path", "?q=1", "#f"]),
) | st.text(max_size=40)


@SETTINGS
@given(endpoint=endpoints)
def test_plain_http_only_ever_goes_to_loopback(endpoint: str) -> None:
    """Every accepted endpoint is https, or http to a loopback host; nothing else is accepted."""
    try:
        parsed = rq.validate_endpoint(endpoint)
    except ValueError:
        return
    assert parsed.scheme in {"http", "https"}
    if parsed.scheme == "http":
        host = parsed.host
        assert host == "localhost" or ipaddress.ip_address(host).is_loopback
    assert urlsplit(parsed.base).path == ""


@settings(max_examples=40, deadline=None)
@given(pool=ids, node=ids, timeout=st.integers(-5, 40))
def test_bad_arguments_send_nothing(pool: str, node: str, timeout: int) -> None:
    """A call with any invalid argument raises ValueError and no request is made."""

    async def call() -> tuple[bool, int]:
        with aioresponses() as mock:
            credential = SharedKeyCredential("acct", REFERENCE_KEY)
            one_try = RetryPolicy(max_attempts=1)
            async with BatchDeallocClient("https://acct.westus.batch.azure.com", credential, retry=one_try) as client:
                try:
                    await client.deallocate_node(pool, node, timeout=timeout)
                except ValueError:
                    return True, len(mock.requests)
                except Exception:  # noqa: BLE001 (valid input reaches the (empty) mock and fails there)
                    return False, len(mock.requests)
        return False, 0

    refused, sent = asyncio.run(call())
    try:
        rq.validate_id("p", pool, rq.POOL_ID_MAX)
        rq.validate_id("n", node, rq.NODE_ID_MAX)
        rq.validate_service_timeout(timeout)
    except ValueError:
        assert refused
        assert sent == 0
    else:
        assert not refused


@SETTINGS
@given(
    name=st.text(max_size=20),
    key=st.text(max_size=60) | st.binary(max_size=40).map(lambda b: b64encode(b).decode()),
)
def test_credentials_never_echo_the_key(name: str, key: str) -> None:
    """A credential either builds (and its repr hides the key) or raises ValueError without the key."""
    try:
        credential = SharedKeyCredential(name, key)
    except ValueError as exc:
        assert len(key) < 4 or key not in str(exc)
        return
    assert len(key) < 4 or key not in repr(credential).replace(repr(name), "")
