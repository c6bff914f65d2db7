"""What one client, or all of them together, may cost the server: the settings and the two gates.

- :class:`Admission`: at most ``workers + max_queue`` search requests (every POST) are held at
  once, from the first byte of their body to the last of their answer; one more is answered
  503 with ``Retry-After`` at once, so buffered bodies and waiting searches are bounded.
- :class:`RateLimiter`: a token bucket per client (the API key it presents, else its address),
  ``rate`` requests a second on average with bursts of ``burst``; over it, 429 with
  ``Retry-After``. The table of clients is bounded (the least recently seen are dropped).
- Time limits (``header_timeout``, ``body_timeout``) and the connection cap are enforced by the
  HTTP protocol (:mod:`zscir.serve.runner`) and the request guard (:mod:`zscir.serve.guard`).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass

from zscir.errors import ZscirError


@dataclass
class Limits:
    max_queue: int = 16             # search requests waiting beyond the --workers being answered
    rate: float = 50.0              # search requests per second per client (0: no rate limit)
    burst: int = 100                # requests a client may send at once before the rate applies
    header_timeout: float = 10.0    # seconds for a request's line and headers to arrive (slowloris)
    body_timeout: float = 30.0      # seconds for a request's whole body to arrive
    max_connections: int = 1000     # open connections; more are closed at once
    retry_after: int = 1            # seconds a refused client is told to wait
    max_clients: int = 10_000       # clients whose rate is tracked

    def check(self) -> "Limits":
        """Raise ZscirError naming the option when a value is out of range."""
        for option, value, low in (("--max-queue", self.max_queue, 0), ("--rate-burst", self.burst, 1),
                                   ("--max-connections", self.max_connections, 1)):
            if value < low:
                raise ZscirError(f"option {option} must be at least {low}, got {value}")
        for option, value in (("--header-timeout", self.header_timeout), ("--body-timeout", self.body_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise ZscirError(f"option {option} must be a positive number of seconds, got {value}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ZscirError(f"option --rate-limit must be a number of requests per second >= 0 (0: off), "
                             f"got {self.rate}")
        return self

    def as_metrics(self, workers: int) -> dict[str, float]:
        return {"workers": workers, "max_queue": self.max_queue, "rate": self.rate, "burst": self.burst,
                "header_timeout_seconds": self.header_timeout, "body_timeout_seconds": self.body_timeout,
                "max_connections": self.max_connections}


class Admission:
    """A counting gate: ``enter`` is True while fewer than ``capacity`` requests are inside."""

    def __init__(self, capacity: int):
        self.capacity, self.inside = capacity, 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.inside >= self.capacity:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


class RateLimiter:
    """Token buckets per client key; ``wait(key)`` is 0 when a request may go, else seconds until it may."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait
