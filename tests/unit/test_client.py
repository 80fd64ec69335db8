"""BatchDeallocClient against a scripted fake service (aioresponses): requests, retries, errors, lifecycle."""

from __future__ import annotations

import asyncio
import random
import re
import uuid

import aiohttp
import pytest
from aioresponses import aioresponses

from batch_dealloc_async import (
    AccessToken,
    AuthenticationError,
    BatchDeallocClient,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ConflictError,
    NotFoundError,
    RetryPolicy,
    ServerError,
    SharedKeyCredential,
    ThrottledError,
)
from batch_dealloc_async._auth import string_to_sign
from tests.conftest import ENDPOINT, REFERENCE_ACCOUNT, REFERENCE_KEY, FakeClock
from tests.unit.scripted import Script, accepted, error

DEALLOC_URL = f"{ENDPOINT}/pools/pool1/nodes/n1/deallocate"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def mock():
    with aioresponses() as m:
        yield m


def expected_signature(method: str, url: str, headers, body: bytes | None) -> str:
    path_and_query = url.split("batch.azure.com", 1)[1]
    path, _, query = path_and_query.partition("?")
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
    s = string_to_sign(
        method,
        REFERENCE_ACCOUNT,
        path,
        pairs,
        ocp_headers=[("ocp-date", headers["ocp-date"])],
        content_length="" if method == "GET" else str(len(body or b"")),
        content_type=headers.get("Content-Type", ""),
    )
    return SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY).authorization(s)


@pytest.mark.parametrize(
    ("option", "timeout", "query", "body"),
    [
        (None, None, "api-version=2025-06-01", None),
        ("requeue", None, "api-version=2025-06-01", b'{"nodeDeallocateOption": "requeue"}'),
        ("terminate", 10, "api-version=2025-06-01&timeOut=10", b'{"nodeDeallocateOption": "terminate"}'),
        ("taskcompletion", 30, "api-version=2025-06-01&timeOut=30", b'{"nodeDeallocateOption": "taskcompletion"}'),
        (None, 1, "api-version=2025-06-01&timeOut=1", None),
    ],
)
async def test_exact_request(mock, make_client, option, timeout, query, body) -> None:
    """Each option and timeout gives the service's exact method, URL, body, Content-Type and a valid signature."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1", option=option, timeout=timeout)
    (req,) = script.seen
    assert str(req.url) == f"{DEALLOC_URL}?{query}"
    assert req.data == body
    assert GUID.match(req.headers["client-request-id"])
    assert req.headers["return-client-request-id"] == "true"
    assert req.headers["ocp-date"] == "Sun, 01 Jun 2025 12:00:00 GMT"
    if body is None:
        assert "Content-Type" not in req.headers
    else:
        assert req.headers["Content-Type"] == "application/json; odata=minimalmetadata"
    assert req.headers["Authorization"] == expected_signature("POST", str(req.url), req.headers, body)
    assert result.attempts == 1
    assert result.request_id == "req-1"
    assert result.client_request_id == req.headers["client-request-id"]
    assert result.etag == "0x8DDA0"
    assert result.last_modified is not None
    assert result.last_modified.tzinfo is not None
    assert result.data_service_id is not None


async def test_given_client_request_id_and_no_echo_request(mock, make_client) -> None:
    """A caller's client-request-id is sent as given; return-client-request-id can be turned off."""
    script = Script([accepted()]).install(mock)
    crid = "9C4D50EE-2D56-4CD3-8152-34347DC9F2B0"
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1", client_request_id=crid, return_client_request_id=False)
    assert script.seen[0].headers["client-request-id"] == crid
    assert "return-client-request-id" not in script.seen[0].headers
    assert result.client_request_id == crid


@pytest.mark.parametrize(
    "crid", ["{9C4D50EE-2D56-4CD3-8152-34347DC9F2B0}", "nope", "", "urn:uuid:9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"]
)
async def test_bad_client_request_id_is_value_error(mock, make_client, crid) -> None:
    """A client-request-id that is not a bare GUID is refused before any I/O."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        with pytest.raises(ValueError, match="GUID"):
            await client.deallocate_node("pool1", "n1", client_request_id=crid)
    assert script.seen == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_id": "", "node_id": "n"}, "pool_id"),
        ({"pool_id": "p", "node_id": "a/b"}, "node_id"),
        ({"pool_id": "p", "node_id": "n", "timeout": 31}, "timeout"),
        ({"pool_id": "p", "node_id": "n", "timeout": 0}, "timeout"),
        ({"pool_id": "p", "node_id": "n", "option": "delete"}, "option"),
    ],
)
async def test_bad_arguments_send_nothing(mock, make_client, kwargs, match) -> None:
    """Bad ids, timeouts and options raise ValueError and nothing goes on the wire."""
    script = Script([accepted()]).install(mock)
    async with make_client() as client:
        with pytest.raises(ValueError, match=match):
            await client.deallocate_node(**kwargs)
    assert script.seen == []


async def test_503_twice_then_202(mock, make_client, clock: FakeClock) -> None:
    """Three attempts, one client-request-id, a fresh ocp-date each time, delays honouring Retry-After."""
    script = Script(
        [error(503, "ServerBusy", **{"Retry-After": "2"}), error(503, "ServerBusy", **{"Retry-After": "5"}), accepted()]
    ).install(mock)
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.attempts == 3
    assert [s.headers["client-request-id"] for s in script.seen] == [result.client_request_id] * 3
    assert [s.headers["ocp-date"] for s in script.seen] == [
        "Sun, 01 Jun 2025 12:00:00 GMT",
        "Sun, 01 Jun 2025 12:00:02 GMT",
        "Sun, 01 Jun 2025 12:00:07 GMT",
    ]
    assert len({s.headers["Authorization"] for s in script.seen}) == 3  # re-signed every attempt
    assert clock.sleeps == [2.0, 5.0]
    assert client.stats.requests == 3
    assert client.stats.retries == 2
    assert client.stats.throttled == 2


async def test_429_without_retry_after_backs_off(mock, make_client, clock: FakeClock) -> None:
    """429 with no Retry-After still retries (the SDK does not), with full-jitter backoff."""
    script = Script([error(429, "TooManyRequests"), accepted()]).install(mock)
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.attempts == 2
    assert len(script.seen) == 2
    assert len(clock.sleeps) == 1
    assert 0.0 <= clock.sleeps[0] <= 0.5


class Highest(random.Random):
    """Full jitter at its ceiling: every backoff is the most the policy allows."""

    def uniform(self, a: float, b: float) -> float:
        del a
        return b


@pytest.mark.parametrize(("adaptive", "sleeps"), [(True, [0.5, 0.5, 0.5, 0.5]), (False, [0.5, 1.0, 2.0, 4.0])])
async def test_a_throttle_without_retry_after_backs_off_flat_when_paced(
    mock, make_client, clock: FakeClock, adaptive: bool, sleeps: list[float]
) -> None:
    """Paced by the adaptive limiter, ServerBusy retries wait up to backoff_base each time; unpaced, it doubles.

    The limiter answers congestion by cutting its rate, and a retry waits its turn at the pacer: a doubling backoff
    only lengthened bulk runs' tails (a node throttled three times in a row at random waited up to 3.5 s).
    """
    Script([error(503, "ServerBusy")] * 4 + [accepted()]).install(mock)
    async with make_client(adaptive=adaptive, rng=Highest(1)) as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.attempts == 5
    assert clock.sleeps == sleeps


async def test_ocp_date_given_is_used_only_on_the_first_attempt(mock, make_client) -> None:
    """A caller's ocp_date goes on attempt 1; retries carry a fresh date."""
    from datetime import UTC, datetime  # noqa: PLC0415

    script = Script([error(500, "InternalError"), accepted()]).install(mock)
    async with make_client() as client:
        await client.deallocate_node("pool1", "n1", ocp_date=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert script.seen[0].headers["ocp-date"] == "Thu, 02 Jan 2025 03:04:05 GMT"
    assert script.seen[1].headers["ocp-date"].endswith("2025 12:00:00 GMT") or script.seen[1].headers[
        "ocp-date"
    ].startswith("Sun, 01 Jun 2025")


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "InvalidQueryParameterValue", BatchServiceError),
        (403, "AuthenticationFailed", AuthenticationError),
        (404, "NodeNotFound", NotFoundError),
        (404, "PoolNotFound", NotFoundError),
        (409, "OperationInvalidForCurrentState", ConflictError),
        (412, "ConditionNotMet", BatchServiceError),
    ],
)
async def test_non_retryable_statuses_fail_at_once(mock, make_client, clock, status, code, cls) -> None:
    """4xx other than 429 are not retried and map to the class their meaning names."""
    script = Script([error(status, code)]).install(mock)
    async with make_client() as client:
        with pytest.raises(cls) as info:
            await client.deallocate_node("pool1", "n1")
    assert type(info.value) is cls
    assert len(script.seen) == 1
    assert clock.sleeps == []
    exc = info.value
    assert exc.status == status
    assert exc.code == code
    assert exc.attempts == 1
    assert exc.request_id == f"req-{status}"
    assert exc.client_request_id == script.seen[0].headers["client-request-id"]
    assert str(exc) == f"{status} {code}: it failed (request-id req-{status})"


@pytest.mark.parametrize(
    ("step", "cls"),
    [
        (error(500, "InternalError"), ServerError),
        (error(502, "BadGateway"), ServerError),
        (error(504, "GatewayTimeout"), ServerError),
        (error(429, "TooManyRequests", **{"Retry-After": "1"}), ThrottledError),
        (error(503, "ServerBusy"), ThrottledError),
        (aiohttp.ServerDisconnectedError(), BatchTransportError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), BatchTransportError),
        (TimeoutError(), BatchTimeoutError),
    ],
)
async def test_exhausted_retries_raise_with_attempt_count(mock, make_client, clock, step, cls) -> None:
    """Retryable failures retry up to max_attempts, then raise the last error with the attempt count."""
    script = Script([step]).install(mock)
    async with make_client(retry=RetryPolicy(max_attempts=4)) as client:
        with pytest.raises(cls) as info:
            await client.deallocate_node("pool1", "n1")
    assert len(script.seen) == 4
    assert info.value.attempts == 4
    assert len(clock.sleeps) == 3
    assert len({s.headers["client-request-id"] for s in script.seen}) == 1


async def test_unreadable_error_bodies_still_give_typed_errors(mock, make_client) -> None:
    """An HTML 502 page or truncated JSON still gives a ServerError with status and a short snippet."""
    html = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body></html>"
    script = Script([(502, {}, html), (500, {}, '{"code": "Internal'), (404, {"request-id": "r"}, "not json")])
    script.install(mock)
    async with make_client(retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(ServerError) as info:
            await client.deallocate_node("pool1", "n1")
        assert info.value.status == 500
        assert info.value.error is None
        assert info.value.snippet == '{"code": "Internal'
        with pytest.raises(NotFoundError) as nf:
            await client.deallocate_node("pool1", "n1")
    assert str(nf.value) == "404 UnknownError: not json (request-id r)"


async def test_deadline_stops_instead_of_sleeping_past_it(mock, make_client, clock) -> None:
    """A Retry-After that would end past the call's deadline ends the call at once with the throttle error."""
    script = Script([error(429, "TooManyRequests", **{"Retry-After": "50"})]).install(mock)
    async with make_client(retry=RetryPolicy(deadline=30)) as client:
        with pytest.raises(ThrottledError) as info:
            await client.deallocate_node("pool1", "n1")
    assert len(script.seen) == 1
    assert clock.sleeps == []
    assert info.value.retry_after == 50


async def test_retry_after_is_capped_by_policy(mock, make_client, clock) -> None:
    """A huge Retry-After is cut to max_retry_after."""
    Script([error(429, "TooManyRequests", **{"Retry-After": "100000"}), accepted()]).install(mock)
    async with make_client(retry=RetryPolicy(max_retry_after=20, deadline=100)) as client:
        await client.deallocate_node("pool1", "n1")
    assert clock.sleeps == [20.0]


async def test_ambiguous_attempt_then_409_is_reconciled(mock, make_client) -> None:
    """A reset (maybe applied) then 409: Get Node shows deallocating, so the call succeeds, reconciled."""
    post = Script([aiohttp.ServerDisconnectedError(), error(409, "OperationInvalidForCurrentState")]).install(mock)
    get = Script([(200, {"request-id": "get-1", "ETag": "0x9"}, '{"id": "n1", "state": "deallocating"}')]).install(
        mock, "GET"
    )
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.reconciled is True
    assert result.attempts == 2
    assert result.request_id == "get-1"
    assert len(post.seen) == 2
    assert len(get.seen) == 1
    assert get.seen[0].url.path == "/pools/pool1/nodes/n1"
    assert dict(get.seen[0].url.query) == {"api-version": "2025-06-01", "$select": "id,state"}


async def test_ambiguous_then_409_with_node_in_other_state_is_conflict(mock, make_client) -> None:
    """If Get Node shows a state deallocation did not cause, the 409 stands."""
    Script([error(500, "InternalError"), error(409, "OperationInvalidForCurrentState")]).install(mock)
    Script([(200, {}, '{"id": "n1", "state": "starting"}')]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError):
            await client.deallocate_node("pool1", "n1")


async def test_409_without_earlier_ambiguity_is_not_reconciled(mock, make_client) -> None:
    """A 409 on a clean first attempt is a conflict; no Get Node is sent."""
    Script([error(409, "OperationInvalidForCurrentState")]).install(mock)
    get = Script([(200, {}, '{"id": "n1", "state": "deallocated"}')]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError):
            await client.deallocate_node("pool1", "n1")
    assert get.seen == []


async def test_throttle_then_409_is_not_ambiguous(mock, make_client) -> None:
    """A 429 was never processed, so a following 409 is a plain conflict."""
    Script(
        [error(429, "TooManyRequests", **{"Retry-After": "1"}), error(409, "OperationInvalidForCurrentState")]
    ).install(mock)
    get = Script([(200, {}, '{"id": "n1", "state": "deallocated"}')]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(ConflictError):
            await client.deallocate_node("pool1", "n1")
    assert get.seen == []


async def test_echoed_client_request_id_is_checked(mock, make_client) -> None:
    """A response echoing another client-request-id is not trusted: retried, then reconciled by 409 + Get."""
    Script(
        [accepted(**{"client-request-id": str(uuid.uuid4())}), error(409, "OperationInvalidForCurrentState")]
    ).install(mock)
    Script([(200, {}, '{"id": "n1", "state": "deallocating"}')]).install(mock, "GET")
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.reconciled is True


async def test_matching_echo_is_accepted(mock, make_client) -> None:
    """The echoed id matching ours (any case) is fine."""
    crid = "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"
    Script([accepted(**{"client-request-id": crid.upper()})]).install(mock)
    async with make_client() as client:
        result = await client.deallocate_node("pool1", "n1", client_request_id=crid)
    assert result.attempts == 1


class CountingCredential:
    """An azure-core-shaped async credential that hands out numbered tokens slowly."""

    def __init__(self, lifetime: float = 3600, clock: FakeClock | None = None) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.clock = clock

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        assert scopes == ("https://batch.core.windows.net//.default",)
        self.calls += 1
        await asyncio.sleep(0.01)  # let every other caller pile up behind the lock
        now = self.clock.time() if self.clock else 1748779200.0
        return AccessToken(f"token-{self.calls}", int(now + self.lifetime))


async def test_bearer_single_flight_for_a_burst(mock, make_client, clock) -> None:
    """200 concurrent calls on a cold cache make exactly one token acquisition, and all carry that token."""
    script = Script([accepted()]).install(mock)
    credential = CountingCredential(clock=clock)
    async with make_client(credential=credential, max_concurrency=200) as client:
        results = await asyncio.gather(*(client.deallocate_node("pool1", f"n{i}") for i in range(200)))
    assert len(results) == 200
    assert credential.calls == 1
    assert {s.headers["Authorization"] for s in script.seen} == {"Bearer token-1"}


async def test_token_refreshed_ahead_of_expiry(mock, make_client, clock) -> None:
    """A token is replaced before it expires (300 s margin), not after a 401."""
    script = Script([accepted()]).install(mock)
    credential = CountingCredential(lifetime=3600, clock=clock)
    async with make_client(credential=credential) as client:
        await client.deallocate_node("pool1", "n1")
        clock.advance(3600 - 299)
        await client.deallocate_node("pool1", "n1")
    assert credential.calls == 2
    assert [s.headers["Authorization"] for s in script.seen] == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize(("status", "code"), [(401, "InvalidAuthenticationInfo"), (403, "AuthenticationFailed")])
async def test_401_forces_one_refresh_and_one_retry(mock, make_client, clock, status, code) -> None:
    """A refused bearer token is dropped, a new one fetched, and the request resent once at once."""
    script = Script([error(status, code), accepted()]).install(mock)
    credential = CountingCredential(clock=clock)
    async with make_client(credential=credential) as client:
        result = await client.deallocate_node("pool1", "n1")
    assert result.attempts == 2
    assert credential.calls == 2
    assert [s.headers["Authorization"] for s in script.seen] == ["Bearer token-1", "Bearer token-2"]
    # Resent at once, by the authorizer (not through the retry loop's backoff): at most its turn in the opening's
    # pace (32 requests per 0.1 s until a success tells the round trip).
    assert all(sleep <= 1 / 320 for sleep in clock.sleeps)


async def test_401_twice_raises(mock, make_client, clock) -> None:
    """Only one refresh per call: a second 401 is an AuthenticationError."""
    script = Script([error(401, "InvalidAuthenticationInfo")]).install(mock)
    credential = CountingCredential(clock=clock)
    async with make_client(credential=credential) as client:
        with pytest.raises(AuthenticationError):
            await client.deallocate_node("pool1", "n1")
    assert len(script.seen) == 2
    assert credential.calls == 2


async def test_shared_key_403_is_not_retried(mock, make_client) -> None:
    """With Shared Key there is no token to refresh: 403 fails at once."""
    script = Script([error(403, "AuthenticationFailed")]).install(mock)
    async with make_client() as client:
        with pytest.raises(AuthenticationError):
            await client.deallocate_node("pool1", "n1")
    assert len(script.seen) == 1


async def test_owned_session_closed_and_given_session_left_open(mock, make_client) -> None:
    """The client closes the session it made, never one it was given."""
    Script([accepted()]).install(mock)
    async with make_client() as client:
        await client.deallocate_node("pool1", "n1")
        owned = client.session
    assert owned is not None
    assert owned.closed
    async with aiohttp.ClientSession() as session:
        async with make_client(session=session) as client:
            await client.deallocate_node("pool1", "n1")
        assert not session.closed


async def test_lifecycle_errors(make_client) -> None:
    """Using a client outside 'async with', or reopening it, is a clear RuntimeError; close is idempotent."""
    client = make_client()
    with pytest.raises(RuntimeError, match="not opened"):
        await client.deallocate_node("pool1", "n1")
    async with client:
        pass
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.deallocate_node("pool1", "n1")
    with pytest.raises(RuntimeError, match="reopened"):
        async with client:
            pass


def test_constructor_checks_arguments(shared_key) -> None:
    """Bad endpoints, credentials and limits fail at construction, without an event loop."""
    with pytest.raises(ValueError, match="plain http"):
        BatchDeallocClient("http://example.com", shared_key)
    with pytest.raises(TypeError, match="credential"):
        BatchDeallocClient(ENDPOINT, "key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        BatchDeallocClient(ENDPOINT, shared_key, max_concurrency=0)
    with pytest.raises(ValueError, match="api_version"):
        BatchDeallocClient(ENDPOINT, shared_key, api_version="2025-06-01&x=1")


async def test_get_and_list_nodes(mock, make_client) -> None:
    """get_node and list_nodes follow the service's shapes, page through odata.nextLink and stay on the endpoint."""
    page1 = (
        '{"odata.metadata": "m", "value": [{"id": "a", "state": "idle"}, {"id": "b", "state": "running"}],'
        f' "odata.nextLink": "{ENDPOINT}/pools/pool1/nodes?api-version=2025-06-01&$skiptoken=t2&maxresults=2"}}'
    )
    page2 = '{"value": [{"id": "c", "state": "idle", "futureField": 1}]}'
    script = Script([(200, {}, page1), (200, {}, page2)]).install(mock, "GET")
    async with make_client() as client:
        nodes = [n async for n in client.list_nodes("pool1", states=("idle", "running"), max_results=2)]
    assert [(n.id, n.state) for n in nodes] == [("a", "idle"), ("b", "running"), ("c", "idle")]
    # aioresponses normalises URLs, so compare decoded queries; the exact bytes are checked over a real socket.
    first, second = (dict(s.url.query) for s in script.seen)
    assert first == {
        "api-version": "2025-06-01",
        "$select": "id,state",
        "maxresults": "2",
        "$filter": "(state eq 'idle') or (state eq 'running')",
    }
    assert second == {"api-version": "2025-06-01", "$skiptoken": "t2", "maxresults": "2"}


async def test_list_refuses_next_link_to_another_host(mock, make_client) -> None:
    """A next link pointing elsewhere ends the listing with a transport error; no credential leaves."""
    page = '{"value": [], "odata.nextLink": "https://evil.example.com/pools/p/nodes?x=1"}'
    script = Script([(200, {}, page)]).install(mock, "GET")
    async with make_client() as client:
        with pytest.raises(BatchTransportError, match="another host"):
            [n async for n in client.list_nodes("pool1")]
    assert len(script.seen) == 1


async def test_malformed_success_body_is_transport_error(mock, make_client) -> None:
    """A 200 whose body is not a node is a typed error, not a cattrs exception."""
    Script([(200, {}, '{"state": "idle"}')]).install(mock, "GET")
    async with make_client(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(BatchTransportError, match="not a valid BatchNode"):
            await client.get_node("pool1", "n1")


async def test_bulk_runs_never_give_a_node_up_for_throttling(mock, make_client, clock) -> None:
    """Throttled attempts of a bulk run do not use up max_attempts: the service named when to come back.

    A single call keeps the plain count (test_exhausted_retries_raise_with_attempt_count).
    """
    throttled = error(429, "TooManyRequests", **{"Retry-After": "1"})
    script = Script([throttled] * 6 + [accepted()]).install(mock)
    async with make_client(retry=RetryPolicy(max_attempts=3)) as client:
        report = await client.deallocate_nodes("pool1", ["n1"])
    (outcome,) = report.outcomes
    assert outcome.status == "accepted"
    assert outcome.attempts == 7
    assert len(script.seen) == 7
    assert len({s.headers["client-request-id"] for s in script.seen}) == 1


async def test_bulk_throttling_is_bounded_by_the_deadline(mock, make_client, clock) -> None:
    """A service that throttles forever still ends the node: failed with the throttle error at the deadline."""
    throttled = error(429, "TooManyRequests", **{"Retry-After": "5"})
    script = Script([throttled]).install(mock)
    async with make_client(retry=RetryPolicy(max_attempts=3, deadline=60)) as client:
        report = await client.deallocate_nodes("pool1", ["n1"])
    (outcome,) = report.outcomes
    assert outcome.status == "failed"
    assert isinstance(outcome.error, ThrottledError)
    assert 3 < len(script.seen) <= 13  # more than max_attempts, and no sleep past the 60 s deadline
    assert outcome.attempts == len(script.seen)


async def test_bulk_server_errors_still_use_up_max_attempts(mock, make_client, clock) -> None:
    script = Script([error(500, "InternalError")]).install(mock)
    async with make_client(retry=RetryPolicy(max_attempts=3)) as client:
        report = await client.deallocate_nodes("pool1", ["n1"])
    assert report.outcomes[0].status == "failed"
    assert len(script.seen) == 3
