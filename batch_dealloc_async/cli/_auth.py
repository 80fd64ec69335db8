"""Credentials for the CLI, from the environment names users already have (as azure-identity reads them)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import AsyncTokenCredentialLike, SharedKeyCredential, credential_from_environment

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
    if args.account_key:
        print(
            "warning: --account-key puts the key in your shell history and the process list; "
            "prefer the BATCH_ACCOUNT_KEY environment variable",
            file=sys.stderr,
        )
    try:
        return credential_from_environment(
            environ,
            managed_identity=args.managed_identity,
            account_name=args.account_name,
            account_key=args.account_key,
        )
    except ValueError as exc:
        raise UsageError(f"{exc} (--managed-identity)" if str(exc).startswith("no credentials") else str(exc)) from None
