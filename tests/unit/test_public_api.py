"""The package root exports a narrow, sorted API and imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import batch_dealloc_async


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and every public name of the root is in it."""
    assert batch_dealloc_async.__all__ == sorted(batch_dealloc_async.__all__)
    public = {n for n in dir(batch_dealloc_async) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(batch_dealloc_async, n)).__name__ == "module"}
    assert public - modules == set(batch_dealloc_async.__all__)


def test_import_does_not_load_emulator_rich_or_azure() -> None:
    """Importing the library never loads the emulator, rich or the Azure SDK."""
    code = (
        "import sys, batch_dealloc_async; "
        "bad = [m for m in sys.modules if m.startswith(('batch_dealloc_async.emulator', 'rich', 'azure'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
