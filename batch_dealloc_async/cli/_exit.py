"""The command's exit codes, and the code a run's report means."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import AuthenticationError, CredentialError

if TYPE_CHECKING:
    from .. import BulkReport

__all__ = ["EXIT_AUTH", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "exit_code"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_INTERRUPTED: Final = 130


def exit_code(report: BulkReport) -> int:
    """0, 1 or 3 for a finished (or interrupted) run's report."""
    errors = [o.error for o in report.outcomes if o.error is not None and not o.ok]
    errors.extend(report.pool_errors.values())
    if any(isinstance(e, AuthenticationError | CredentialError) for e in errors):
        return EXIT_AUTH
    return EXIT_OK if report.ok else EXIT_FAILED
