"""Worked examples of batch-dealloc-async; run them from the repository root (``python -m examples.<name>``)."""
