"""The credential named by the environment, as azure-identity's variables and the CLI name it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._auth import AsyncTokenCredentialLike, SharedKeyCredential
from ._identity import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["credential_from_environment"]


def credential_from_environment(
    environ: Mapping[str, str] | None = None,
    *,
    managed_identity: bool = False,
    account_name: str | None = None,
    account_key: str | None = None,
) -> SharedKeyCredential | AsyncTokenCredentialLike:
    """The credential the environment names, in the CLI's order.

    A managed identity when asked (``AZURE_CLIENT_ID`` picks a user-assigned one); then Shared Key
    (``BATCH_ACCOUNT_NAME``, ``BATCH_ACCOUNT_KEY``; ``account_name``/``account_key`` override them); then a
    service principal's secret (``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``); then its
    certificate (``AZURE_CLIENT_CERTIFICATE_PATH``, ``AZURE_CLIENT_CERTIFICATE_PASSWORD``).

    Args:
        environ: The variables (default ``os.environ``).
        managed_identity: Use the managed identity of the host.
        account_name: The Batch account's name, instead of ``BATCH_ACCOUNT_NAME``.
        account_key: Its key, instead of ``BATCH_ACCOUNT_KEY``.

    Raises:
        ValueError: nothing usable is set, or a value is malformed (the message never holds a secret).
    """
    env = os.environ if environ is None else environ
    name = account_name or env.get("BATCH_ACCOUNT_NAME")
    key = account_key or env.get("BATCH_ACCOUNT_KEY")
    try:
        if managed_identity:
            return ManagedIdentityCredential(client_id=env.get("AZURE_CLIENT_ID") or None)
        if name and key:
            return SharedKeyCredential(name, key)
        tenant, client = env.get("AZURE_TENANT_ID"), env.get("AZURE_CLIENT_ID")
        if tenant and client and env.get("AZURE_CLIENT_SECRET"):
            return ClientSecretCredential(tenant, client, env["AZURE_CLIENT_SECRET"])
        if tenant and client and env.get("AZURE_CLIENT_CERTIFICATE_PATH"):
            return CertificateCredential(
                tenant,
                client,
                certificate_path=env["AZURE_CLIENT_CERTIFICATE_PATH"],
                password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
            )
    except ValueError as exc:
        raise ValueError(f"bad credential settings: {exc}") from None
    if key and not name:
        raise ValueError("BATCH_ACCOUNT_KEY is set but not BATCH_ACCOUNT_NAME (or the account name)")
    raise ValueError(
        "no credentials: set BATCH_ACCOUNT_NAME and BATCH_ACCOUNT_KEY (Shared Key), or AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH (a service principal), "
        "or use the host's managed identity"
    )
