"""The exceptions this library raises.

Bad arguments raise the builtin ``ValueError``/``TypeError`` before any I/O. Everything else derives
from :class:`BatchDeallocError`::

    BatchDeallocError
    ├── CredentialError            a token could not be acquired (msal, managed identity, your credential)
    ├── BatchServiceError          the service answered with a status other than the expected one
    │   ├── AuthenticationError    401, 403: bad key, bad or expired token, missing permissions
    │   ├── NotFoundError          404: PoolNotFound, NodeNotFound, ...
    │   ├── ConflictError          409: the node is not in a state that allows the operation
    │   ├── ThrottledError         429, and 503 carrying Retry-After or ServerBusy: slow down
    │   └── ServerError            500, 502, 504, other 5xx: the service failed
    ├── BatchTransportError        no usable answer after retries: connection refused or reset, bad body
    │   └── BatchTimeoutError      the client-side timeout or the call's deadline ran out (also a TimeoutError)
    ├── ServiceDownError           the service failed every request for a while: the client stopped sending
    └── NodeStateError             a node a run waited for ended in a state it cannot go on from (starttaskfailed)

No message, repr or attribute of these classes holds a key, a secret or a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import BatchError

__all__ = [
    "AuthenticationError",
    "BatchDeallocError",
    "BatchServiceError",
    "BatchTimeoutError",
    "BatchTransportError",
    "ConflictError",
    "CredentialError",
    "NodeStateError",
    "NotFoundError",
    "ServerError",
    "ServiceDownError",
    "ThrottledError",
    "service_error_class",
]


class BatchDeallocError(Exception):
    """Base class of every error this library raises after validating its arguments."""


class CredentialError(BatchDeallocError):
    """A credential could not produce a token (the identity provider refused, or could not be reached)."""


class BatchServiceError(BatchDeallocError):
    """The service answered with an unexpected status.

    Attributes:
        status: The HTTP status code.
        error: The parsed ``BatchError`` body, or ``None`` when the body was not one.
        code: ``error.code`` when present, else ``None``.
        request_id: The service's ``request-id`` response header.
        client_request_id: The ``client-request-id`` this call sent.
        attempts: How many requests the call sent in all.
        retry_after: The server's ``Retry-After`` hint in seconds, when it sent one.
        snippet: The start of the body (at most 200 characters) when it was not a ``BatchError``.
    """

    def __init__(
        self,
        *,
        status: int,
        error: BatchError | None,
        request_id: str | None,
        client_request_id: str,
        attempts: int = 1,
        retry_after: float | None = None,
        snippet: str = "",
    ) -> None:
        self.status = status
        self.error = error
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.attempts = attempts
        self.retry_after = retry_after
        self.snippet = snippet
        super().__init__()

    @property
    def code(self) -> str | None:
        """The service's error code, e.g. ``NodeNotFound``."""
        return self.error.code if self.error is not None else None

    def __str__(self) -> str:
        code = self.code or "UnknownError"
        text = (self.error.summary if self.error is not None else "") or self.snippet or "no error body"
        return f"{self.status} {code}: {text} (request-id {self.request_id or 'none'})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, request_id={self.request_id!r}, "
            f"client_request_id={self.client_request_id!r}, attempts={self.attempts})"
        )


class AuthenticationError(BatchServiceError):
    """401 or 403: the key or token was refused, or the identity lacks permission."""


class NotFoundError(BatchServiceError):
    """404: the pool or node does not exist."""


class ConflictError(BatchServiceError):
    """409: the node (or pool) is not in a state that allows the operation."""


class ThrottledError(BatchServiceError):
    """429, or 503 with ``Retry-After``/``ServerBusy``: the account is sending too many requests."""


class ServerError(BatchServiceError):
    """A 5xx status that is not throttling."""


class BatchTransportError(BatchDeallocError):
    """No usable answer: the connection failed, was reset, or the response could not be read.

    Attributes:
        client_request_id: The ``client-request-id`` this call sent.
        attempts: How many requests the call sent in all.
    """

    def __init__(self, message: str, *, client_request_id: str, attempts: int = 1) -> None:
        self.client_request_id = client_request_id
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.args[0]} (client-request-id {self.client_request_id}, attempts {self.attempts})"


class BatchTimeoutError(BatchTransportError, TimeoutError):
    """An attempt ran past its client-side timeout, or the call ran past its deadline."""


class ServiceDownError(BatchDeallocError):
    """The service failed every request (5xx, refused connections, timeouts) for a while; calls stopped waiting.

    The client's circuit breaker held requests and sent single probes meanwhile; this is raised to the calls that
    were waiting, and at once to new ones, until a probe finds the service answering again.

    Attributes:
        last_error: The service's last error (what to quote in a support case).
        client_request_id: The ``client-request-id`` of the call that gave up ("" before any attempt).
        attempts: Requests the call had sent (0: none; a bulk run reports the node ``not_attempted``).
    """

    def __init__(
        self,
        message: str,
        *,
        last_error: BaseException | None,
        client_request_id: str = "",
        attempts: int = 0,
    ) -> None:
        self.last_error = last_error
        self.client_request_id = client_request_id
        self.attempts = attempts
        super().__init__(message)

    @property
    def code(self) -> str | None:
        """The last error's service code (``InternalError``...), when it had one."""
        return getattr(self.last_error, "code", None)

    def __str__(self) -> str:
        last = f"; last error: {self.last_error}" if self.last_error is not None else ""
        return f"{self.args[0]}{last}"


class NodeStateError(BatchDeallocError):
    """A node a run waited for ended in a state it will not leave by itself (a start task failed, the VM unusable).

    Attributes:
        pool_id: The node's pool.
        node_id: The node.
        state: The state it was seen in (``starttaskfailed``, ``unusable``).
        code: ``StartTaskFailed`` or ``NodeUnusable`` (``NodeState<state>`` for any other).
    """

    _CODES: Final = {"starttaskfailed": "StartTaskFailed", "unusable": "NodeUnusable"}

    def __init__(self, *, pool_id: str, node_id: str, state: str) -> None:
        self.pool_id = pool_id
        self.node_id = node_id
        self.state = state
        self.code = self._CODES.get(state, f"NodeState{state.capitalize()}")
        super().__init__(f"node {pool_id}/{node_id} ended {state} ({self.code}) after our request")


_BY_STATUS: Final[Mapping[int, type[BatchServiceError]]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    429: ThrottledError,
}
_THROTTLE_CODES: Final = frozenset({"ServerBusy", "TooManyRequests"})


def service_error_class(status: int, code: str | None, *, has_retry_after: bool) -> type[BatchServiceError]:
    """Pick the exception class a status means.

    A 503 is throttling when it says so (``ServerBusy``, or a ``Retry-After``); otherwise a server error.
    """
    if status == 503 and (has_retry_after or code in _THROTTLE_CODES):  # noqa: PLR2004 (HTTP status)
        return ThrottledError
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    return ServerError if status >= 500 else BatchServiceError  # noqa: PLR2004 (HTTP status class)
