"""Paired bootstrap interval for the difference of two rows of one split, resampling queries.

    interval = paired_interval(a, b, resamples=1000, seed=0)   # a, b: per-query AP@10 of two rows

Rule: draw ``resamples`` sets of ``n`` query indices with replacement from
``numpy.random.default_rng(seed)`` (one ``integers(0, n, size=(resamples, n))`` call); each set gives
``mean(a[idx]) - mean(b[idx])`` (the same indices for both rows: paired); the interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of those differences (numpy's linear
interpolation). The seed and the number of resamples are recorded with every interval.
"""

from __future__ import annotations

import numpy as np

from zscir.errors import ZscirError
from zscir.evaluation.per_query import PER_QUERY_METRIC, scores_of

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


def paired_interval(a, b, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    level: float = LEVEL) -> dict:
    """The observed mean difference ``a - b`` and its paired percentile-bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ZscirError(f"paired bootstrap: expected two equal-length lists of per-query scores, "
                         f"got shapes {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    low, high = np.percentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"difference": float(a.mean() - b.mean()), "low": float(low), "high": float(high),
            "contains_zero": bool(low <= 0.0 <= high), "queries": len(a), "resamples": resamples, "seed": seed,
            "level": level}


def check_pair(pair: tuple[str, str] | None, names: list[str]) -> None:
    """Fail before any work when a --compare row is not one of the run's model rows."""
    for name in pair or ():
        if name not in names:
            raise ZscirError(f"--compare: no row {name!r} in this run; expected one of: {', '.join(names)}")


def _row(results: dict, name: str) -> dict:
    check_pair((name,), [m["name"] for m in results["models"]])
    return next(m for m in results["models"] if m["name"] == name)


def compare_rows(results: dict, pair: tuple[str, str], resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> dict:
    """``{"a", "b", "metric", "splits": {split: interval of a - b}}`` over the splits both rows have scores on."""
    a_row, b_row = _row(results, pair[0]), _row(results, pair[1])
    out = {"a": pair[0], "b": pair[1], "metric": PER_QUERY_METRIC, "resamples": resamples, "seed": seed,
           "level": LEVEL, "splits": {}}
    for split, ra in a_row["splits"].items():
        a, b = scores_of(ra), scores_of(b_row["splits"].get(split, {}))
        if a is not None and b is not None:
            out["splits"][split] = paired_interval(a, b, resamples, seed)
    return out


def parse_pair(text: str | None) -> tuple[str, str] | None:
    """``"A,B"`` -> ("A", "B"); the option's error names what was expected."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ZscirError(f"--compare: expected two different row names separated by a comma (e.g. "
                         f"shapes_fti,shapes_scot), got {text!r}")
    return parts[0], parts[1]
