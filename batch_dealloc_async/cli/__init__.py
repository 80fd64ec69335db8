"""``batch-dealloc``: deallocate nodes from the terminal, run the local emulator, or watch the demo.

Exit codes: 0 every eligible node done; 1 some nodes failed, timed out or were not attempted (or a pool could
not be listed); 2 usage error; 3 authentication or authorization failure; 130 interrupted (Ctrl-C prints the
partial summary and the outcomes so far).
"""

from ._exit import EXIT_AUTH, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_code
from ._main import build_parser, main

__all__ = ["EXIT_AUTH", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "exit_code", "main"]
