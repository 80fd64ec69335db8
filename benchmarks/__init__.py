"""Benchmarks of batch-dealloc-async against a bare aiohttp loop and the official SDK (see run.py)."""
