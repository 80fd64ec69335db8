"""``python -m batch_dealloc_async.emulator``."""

import sys

from ._main import main

sys.exit(main())
