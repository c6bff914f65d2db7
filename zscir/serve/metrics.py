"""Counters, gauges and histograms written in the Prometheus text exposition format (version 0.0.4).

Small on purpose: the server needs a handful of labelled series, thread-safe,
with no extra dependency.

    m = Metrics()
    m.counter("zscir_requests_total", "HTTP requests", route="/search", status="200")
    m.observe("zscir_stage_seconds", "time per stage", 0.012, stage="search")
    text = m.render()
"""

from __future__ import annotations

import bisect
import math
import threading

# seconds: 0.5 ms ... 10 s, about 2.5x apart (a tiny model answers in milliseconds, a large one in seconds)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: dict[str, str], extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = sorted(labels.items()) + list(extra)
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in items)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}       # name -> (type, help)
        self._series: dict[str, dict[tuple, object]] = {}  # name -> {sorted label items: value}

    def _family(self, name: str, kind: str, help_text: str) -> dict:
        known = self._help.get(name)
        if known is None:
            self._help[name] = (kind, help_text)
            self._series[name] = {}
        elif known[0] != kind:
            raise ValueError(f"metric {name} is a {known[0]}, not a {kind}")
        return self._series[name]

    def counter(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            series = self._family(name, "counter", help_text)
            key = tuple(sorted(labels.items()))
            series[key] = series.get(key, 0.0) + amount

    def gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        with self._lock:
            self._family(name, "gauge", help_text)[tuple(sorted(labels.items()))] = float(value)

    def observe(self, name: str, help_text: str, value: float, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                **labels: str) -> None:
        with self._lock:
            series = self._family(name, "histogram", help_text)
            key = tuple(sorted(labels.items()))
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Histogram(buckets)
            hist.observe(value)

    def value(self, name: str, **labels: str) -> float | None:
        """A counter's or gauge's current value (a histogram's count), or None; for tests and the bench."""
        with self._lock:
            v = self._series.get(name, {}).get(tuple(sorted(labels.items())))
            return float(sum(v.counts)) if isinstance(v, _Histogram) else v

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help_text) in sorted(self._help.items()):
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                for key, v in sorted(self._series[name].items()):
                    labels = dict(key)
                    if isinstance(v, _Histogram):
                        cumulative = 0
                        for bound, count in zip((*v.buckets, math.inf), v.counts):
                            cumulative += count
                            lines.append(f"{name}_bucket{_labels(labels, (('le', _number(bound)),))} {cumulative}")
                        lines.append(f"{name}_sum{_labels(labels)} {_number(v.sum)}")
                        lines.append(f"{name}_count{_labels(labels)} {cumulative}")
                    else:
                        lines.append(f"{name}{_labels(labels)} {_number(v)}")
        return "\n".join(lines) + "\n"
