"""``python -m batch_dealloc_async``: the ``batch-dealloc`` command."""

import sys

from .cli import main

sys.exit(main())
