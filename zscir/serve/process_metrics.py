"""Process gauges for /metrics: resident memory, CPU seconds, open file descriptors, requests in flight and
searches waiting for a worker. Unlabelled series (bounded by construction); read when /metrics is asked for.

Linux reads /proc; elsewhere a gauge whose source is missing is left out rather than reported as 0.
"""

from __future__ import annotations

import os
import resource
import threading


class InFlight:
    """A thread-safe count of things in progress (requests being answered, searches waiting)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def update(metrics, in_flight: int, queued: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metrics.gauge("process_cpu_seconds_total", "User and system CPU seconds of the server process",
                  usage.ru_utime + usage.ru_stime)
    rss = _rss_bytes()
    if rss is not None:
        metrics.gauge("process_resident_memory_bytes", "Resident memory of the server process", rss)
    fds = _open_fds()
    if fds is not None:
        metrics.gauge("process_open_fds", "Open file descriptors of the server process", fds)
    metrics.gauge("zscir_requests_in_flight", "HTTP requests being answered now", in_flight)
    metrics.gauge("zscir_search_queue", "Searches waiting for a search worker", queued)
