"""Deallocate Azure Batch compute nodes from asyncio: one node, many nodes or whole pools.

The public API is what ``__all__`` lists; every module behind it is private.
"""

from ._auth import AccessToken, AccessTokenLike, AsyncTokenCredentialLike, SharedKeyCredential
from ._client import BatchDeallocClient
from ._errors import (
    AuthenticationError,
    BatchDeallocError,
    BatchServiceError,
    BatchTimeoutError,
    BatchTransportError,
    ConflictError,
    CredentialError,
    NotFoundError,
    ServerError,
    ThrottledError,
)
from ._identity import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from ._limiter import AdaptiveLimiter
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
)
from ._outcomes import BulkReport, ClientStats, NodeOutcome, OutcomeStatus
from ._retry import RetryPolicy

__version__ = "0.1.0"

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
    "BatchServiceError",
    "BatchTimeoutError",
    "BatchTransportError",
    "BulkReport",
    "CertificateCredential",
    "ClientSecretCredential",
    "ClientStats",
    "ConflictError",
    "CredentialError",
    "DeallocateResult",
    "ManagedIdentityCredential",
    "NodeOutcome",
    "NotFoundError",
    "OutcomeStatus",
    "RetryPolicy",
    "ServerError",
    "SharedKeyCredential",
    "ThrottledError",
]
