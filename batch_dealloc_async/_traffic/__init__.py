"""Traffic control: how a client meets a shared, throttled, slow and sometimes failing service.

Six small parts, each testable alone (as botocore's ``retries/``): the window, the pacer, the rate meter,
the rate controller, the circuit breaker and the retry budget; :class:`AdaptiveLimiter` joins them.
"""

from ._limiter import AdaptiveLimiter, Feedback, TrafficObserver

__all__ = ["AdaptiveLimiter", "Feedback", "TrafficObserver"]
