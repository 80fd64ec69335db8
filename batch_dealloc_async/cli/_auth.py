"""Credentials for the CLI, from the environment names users already have (as azure-identity reads them)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .. import (
    AsyncTokenCredentialLike,
    CertificateCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    SharedKeyCredential,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

__all__ = ["UsageError", "credential_from"]


class UsageError(Exception):
    """A problem with the command line or the environment; the CLI exits 2 with this message."""


def credential_from(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SharedKeyCredential | AsyncTokenCredentialLike:
    """Pick the credential: explicit flags first, then Shared Key, client secret, certificate from the environment.

    Raises:
        UsageError: nothing usable was given, or a value is malformed (the message never holds a secret).
    """
    env = os.environ if environ is None else environ
    name = args.account_name or env.get("BATCH_ACCOUNT_NAME")
    key = env.get("BATCH_ACCOUNT_KEY")
    if args.account_key:
        print(
            "warning: --account-key puts the key in your shell history and the process list; "
            "prefer the BATCH_ACCOUNT_KEY environment variable",
            file=sys.stderr,
        )
        key = args.account_key
    try:
        if args.managed_identity:
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
        raise UsageError(f"bad credential settings: {exc}") from None
    if key and not name:
        raise UsageError("BATCH_ACCOUNT_KEY is set but not BATCH_ACCOUNT_NAME (or --account-name)")
    raise UsageError(
        "no credentials: set BATCH_ACCOUNT_NAME and BATCH_ACCOUNT_KEY (Shared Key), or AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH (a service principal), "
        "or pass --managed-identity"
    )
