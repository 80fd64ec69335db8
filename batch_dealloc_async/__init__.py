"""Deallocate Azure Batch compute nodes from asyncio: one node, many nodes or whole pools.

The public API is what ``__all__`` lists; every module behind it is private.
"""

from ._actions import DEALLOCATE_STATES, START_STATES
from ._auth import AccessToken, AccessTokenLike, AsyncTokenCredentialLike, SharedKeyCredential
from ._client import BatchDeallocClient, BatchNodesClient
from ._environment import credential_from_environment
from ._errors import (
    AuthenticationError,
    BatchDeallocError,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ConflictError,
    CredentialError,
    NodeStateError,
    NotFoundError,
    ServerError,
    ServiceDownError,
    ThrottledError,
)
from ._http import Exchange, ExchangeError, Reply
from ._identity import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from ._models import (
    BatchError,
    BatchErrorDetail,
    BatchErrorMessage,
    BatchNode,
    BatchNodeDeallocateOption,
    BatchNodeDeallocateOptions,
    BatchNodeListResult,
    BatchNodeState,
    DeallocateResult,
    StartResult,
)
from ._outcomes import BulkReport, ClientStats, NodeOutcome, OutcomeStatus
from ._retry import RetryPolicy
from ._traffic import AdaptiveLimiter


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata (pyproject.toml is its one source)."""
    if name == "__version__":
        from ._version import version  # noqa: PLC0415 (only when asked for)

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AccessToken",
    "AccessTokenLike",
    "AdaptiveLimiter",
    "AsyncTokenCredentialLike",
    "AuthenticationError",
    "BatchDeallocClient",
    "BatchDeallocError",
    "BatchError",
    "BatchErrorDetail",
    "BatchErrorMessage",
    "BatchNode",
    "BatchNodeDeallocateOption",
    "BatchNodeDeallocateOptions",
    "BatchNodeListResult",
    "BatchNodeState",
    "BatchNodesClient",
    "BatchServiceError",
    "BatchTimeoutError",
    "BatchTransportError",
    "BulkReport",
    "CertificateCredential",
    "ClientSecretCredential",
    "ClientStats",
    "ConflictError",
    "CredentialError",
    "DEALLOCATE_STATES",
    "DeallocateResult",
    "Exchange",
    "ExchangeError",
    "ManagedIdentityCredential",
    "NodeOutcome",
    "NodeStateError",
    "NotFoundError",
    "OutcomeStatus",
    "Reply",
    "RetryPolicy",
    "START_STATES",
    "ServerError",
    "ServiceDownError",
    "SharedKeyCredential",
    "StartResult",
    "ThrottledError",
    "credential_from_environment",
]
