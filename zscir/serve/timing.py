"""Per-stage timings of a search: the mapping network timed by forward hooks, per thread."""

from __future__ import annotations

import threading
import time


class MappingTimer:
    """Times a query encoder's mapping network (forward hooks), per thread, so text encoding = the rest."""

    def __init__(self, encoder):
        self.local = threading.local()
        network = getattr(encoder, "network", None)
        self.active = network is not None and hasattr(network, "register_forward_hook")
        if self.active:
            network.register_forward_pre_hook(self._start)
            network.register_forward_hook(self._stop)

    def _start(self, module, args):
        self.local.t0 = time.perf_counter()

    def _stop(self, module, args, output):
        self.local.seconds = getattr(self.local, "seconds", 0.0) + time.perf_counter() - self.local.t0

    def take(self) -> float | None:
        if not self.active:
            return None
        seconds, self.local.seconds = getattr(self.local, "seconds", 0.0), 0.0
        return seconds
