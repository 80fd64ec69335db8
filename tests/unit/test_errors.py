"""The error tree: classes by meaning, readable str(), no secrets."""

from __future__ import annotations

import pytest

from batch_dealloc_async import (
    AuthenticationError,
    BatchDeallocError,
    BatchError,
    BatchErrorMessage,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ConflictError,
    NotFoundError,
    ServerError,
    ThrottledError,
)
from batch_dealloc_async._errors import service_error_class


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "cls"),
    [
        (400, "InvalidQueryParameterValue", False, BatchServiceError),
        (401, None, False, AuthenticationError),
        (403, "AuthenticationFailed", False, AuthenticationError),
        (404, "NodeNotFound", False, NotFoundError),
        (409, "OperationInvalidForCurrentState", False, ConflictError),
        (429, "TooManyRequests", False, ThrottledError),
        (503, "ServerBusy", False, ThrottledError),
        (503, None, True, ThrottledError),
        (503, "ServiceUnavailable", False, ServerError),
        (500, "InternalError", False, ServerError),
        (502, None, False, ServerError),
        (599, None, False, ServerError),
        (418, None, False, BatchServiceError),
        (302, None, False, BatchServiceError),
    ],
)
def test_status_mapping(status: int, code: str | None, retry_after: bool, cls: type) -> None:
    """One table maps statuses (and 503's throttling signs) to classes callers catch by meaning."""
    assert service_error_class(status, code, has_retry_after=retry_after) is cls


def test_str_and_repr() -> None:
    """str() reads '409 code: first message line (request-id ...)'; repr names the fields."""
    err = ConflictError(
        status=409,
        error=BatchError(
            code="OperationInvalidForCurrentState",
            message=BatchErrorMessage(lang="en-US", value="The node is starting.\nRequestId:r\nTime:t"),
        ),
        request_id="req-9",
        client_request_id="c",
        attempts=2,
    )
    assert str(err) == "409 OperationInvalidForCurrentState: The node is starting. (request-id req-9)"
    assert "attempts=2" in repr(err)
    assert isinstance(err, BatchDeallocError)


def test_transport_errors() -> None:
    """Timeouts are both BatchTransportError and the builtin TimeoutError."""
    err = BatchTimeoutError("no response", client_request_id="c", attempts=3)
    assert isinstance(err, BatchTransportError)
    assert isinstance(err, TimeoutError)
    assert str(err) == "no response (client-request-id c, attempts 3)"
