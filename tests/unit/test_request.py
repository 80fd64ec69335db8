"""Pure request building: argument checks, URL encoding, dates, error bodies."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest

from batch_dealloc_async import BatchNodeDeallocateOption, BatchNodeDeallocateOptions
from batch_dealloc_async import _request as rq


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "a b", "a\tb", "a\nb", "a\x00b", "a\\b", ".", "..", "...", "x" * 65, "a\u2028b", "\ufeffa", 7, None],
)
def test_bad_pool_ids_raise_value_error(bad: object) -> None:
    """Ids the service can never accept are refused before any I/O."""
    with pytest.raises(ValueError, match="pool_id"):
        rq.validate_id("pool_id", bad, rq.POOL_ID_MAX)


@pytest.mark.parametrize("good", ["pool-1", "a", "x" * 64, "tvm-1695681911_1-20161122t193202z", "a.b", "ü%?#"])
def test_good_ids_pass(good: str) -> None:
    """Plain ids, dots inside, and characters that only need encoding pass."""
    assert rq.validate_id("pool_id", good, rq.POOL_ID_MAX) == good


def test_segments_are_percent_encoded_with_nothing_safe() -> None:
    """Every reserved character is encoded, so an id can never change the path's shape."""
    endpoint = rq.validate_endpoint("https://acct.region.batch.azure.com")
    req = rq.Request.build(endpoint, "POST", ("pools", "p%?#&", "nodes", "ü.x", "deallocate"), [("api-version", "v")])
    assert req.path == "/pools/p%25%3F%23%26/nodes/%C3%BC.x/deallocate"
    assert req.url == "https://acct.region.batch.azure.com/pools/p%25%3F%23%26/nodes/%C3%BC.x/deallocate?api-version=v"


@pytest.mark.parametrize("timeout", [1, 15, 30])
def test_valid_service_timeouts(timeout: int) -> None:
    """1..30 seconds are valid."""
    assert rq.validate_service_timeout(timeout) == timeout


@pytest.mark.parametrize("timeout", [0, -1, 31, 3600, 1.5, 10.0, True, "10", float("nan")])
def test_invalid_service_timeouts(timeout: object) -> None:
    """Anything but an int of 1..30 is a ValueError."""
    with pytest.raises(ValueError, match="timeout"):
        rq.validate_service_timeout(timeout)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://acct.westus.batch.azure.com",
        "https://acct.westus.batch.azure.com/",
        "http://127.0.0.1:8080",
        "http://localhost:1234",
        "http://[::1]:8080",
    ],
)
def test_valid_endpoints(endpoint: str) -> None:
    """Https anywhere, plain http only on loopback."""
    parsed = rq.validate_endpoint(endpoint)
    assert not parsed.base.endswith("/")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://acct.westus.batch.azure.com",
        "http://10.0.0.1",
        "ftp://acct",
        "acct.westus.batch.azure.com",
        "https://acct/path",
        "https://acct?x=1",
        "https://acct#f",
        "https://user:pw@acct",
        "https://acct:notaport",
        "https://",
        "",
        "https://ac ct",
        None,
    ],
)
def test_invalid_endpoints(endpoint: object) -> None:
    """Anything else is refused, including plain http to a remote host."""
    with pytest.raises(ValueError, match="endpoint"):
        rq.validate_endpoint(endpoint)


@pytest.mark.parametrize(
    ("option", "body"),
    [
        (None, None),
        ("requeue", b'{"nodeDeallocateOption": "requeue"}'),
        (BatchNodeDeallocateOption.TERMINATE, b'{"nodeDeallocateOption": "terminate"}'),
        ("taskcompletion", b'{"nodeDeallocateOption": "taskcompletion"}'),
        (
            BatchNodeDeallocateOptions(node_deallocate_option=BatchNodeDeallocateOption.REQUEUE),
            b'{"nodeDeallocateOption": "requeue"}',
        ),
        (BatchNodeDeallocateOptions(), None),
    ],
)
def test_option_to_body(option: object, body: bytes | None) -> None:
    """Each option becomes the exact body the SDK sends; no option means no body."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rq.deallocate_body(rq.resolve_option(option)) == body  # type: ignore[arg-type]


def test_retaineddata_warns_deprecation() -> None:
    """Retaineddata still works but emits a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="taskcompletion"):
        resolved = rq.resolve_option("retaineddata")
    assert rq.deallocate_body(resolved) == b'{"nodeDeallocateOption": "retaineddata"}'


@pytest.mark.parametrize("bad", ["Requeue", "delete", "", 3])
def test_unknown_option_is_value_error(bad: object) -> None:
    """A value the service does not define is refused."""
    with pytest.raises(ValueError, match="option"):
        rq.resolve_option(bad)  # type: ignore[arg-type]


def test_http_date_round_trip() -> None:
    """ocp-date is RFC 7231 and Last-Modified parses to an aware UTC datetime."""
    assert rq.format_http_date(1748779200.0) == "Sun, 01 Jun 2025 12:00:00 GMT"
    assert rq.parse_http_date("Sun, 01 Jun 2025 12:00:00 GMT") == datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert rq.parse_http_date("garbage") is None
    assert rq.parse_http_date("") is None
    assert rq.parse_http_date(None) is None


def test_error_body_parsing() -> None:
    """A BatchError parses; other bodies give a short printable snippet."""
    error, snippet = rq.parse_error_body(
        b'{"odata.metadata":"m","code":"NodeNotFound","message":{"lang":"en-US","value":"gone\\nRequestId:1"},'
        b'"values":[{"key":"k","value":"v"}]}',
        "application/json",
    )
    assert error is not None
    assert (error.code, error.summary, error.values[0].key) == ("NodeNotFound", "gone", "k")
    assert snippet == ""
    for body in (
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"code": "Tru',
        b"[1,2]",
        b"\xff\xfe\x00",
        b'{"a": 1}',
    ):
        error, snippet = rq.parse_error_body(body, "text/html")
        assert error is None
        assert snippet.isprintable()
        assert len(snippet) <= 200
    _, snippet = rq.parse_error_body(b"x" * 100_000, None)
    assert len(snippet) == 200


def test_next_link_must_stay_on_the_endpoint() -> None:
    """A next link to another host is refused, so credentials never leave the account's endpoint."""
    endpoint = rq.validate_endpoint("https://acct.region.batch.azure.com")
    req = rq.Request.from_link(
        endpoint, "https://acct.region.batch.azure.com/pools/p/nodes?api-version=old&$skiptoken=abc%3D", "2025-06-01"
    )
    assert req.query == (("api-version", "2025-06-01"), ("$skiptoken", "abc="))
    assert req.url == "https://acct.region.batch.azure.com/pools/p/nodes?api-version=2025-06-01&$skiptoken=abc%3D"
    with pytest.raises(ValueError, match="another host"):
        rq.Request.from_link(endpoint, "https://evil.example.com/pools/p/nodes?x=1", "2025-06-01")
