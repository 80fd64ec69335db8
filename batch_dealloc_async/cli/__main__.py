"""``python -m batch_dealloc_async.cli``."""

import sys

from . import main

sys.exit(main())
