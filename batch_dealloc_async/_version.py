"""The package's version, read once from its installed metadata (pyproject.toml is the one place it is written)."""

from __future__ import annotations

import functools
import importlib.metadata

__all__ = ["version"]


@functools.cache
def version() -> str:
    """The installed version of ``batch-dealloc-async`` (``0+unknown`` when run from a tree never installed)."""
    try:
        return importlib.metadata.version("batch-dealloc-async")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
