"""Each query's own score, kept with a split's results: what the bootstrap and the per-edit-type table resample.

The score is AP@10 (CIRCO's definition, in percent, :func:`zscir.evaluation.metrics.average_precision_at`),
so the mean over a split's queries is its mAP@10. Families without an AP (CIRR, FashionIQ: recall only)
keep none. Values are rounded to :data:`DECIMALS` places when stored; every statistic computed from them
(:mod:`zscir.evaluation.bootstrap`, :mod:`zscir.evaluation.edit_types`) uses the stored values, so it can be
recomputed from ``results.json`` alone.
"""

from __future__ import annotations

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation import metrics

PER_QUERY_METRIC = "mAP@10"   # the metric whose per-query terms are kept
PER_QUERY_KEY = "AP@10"
K = 10
DECIMALS = 6


def _circo_ap(split: EvalSplit, ranked: np.ndarray) -> np.ndarray:
    gts = [[split.gallery_index.get(t, -1) for t in q.targets] for q in split.queries]
    n_pos = np.array([len(g) for g in gts], dtype=np.int64)
    return 100.0 * metrics.average_precision_at(metrics.hits(ranked, gts), n_pos, K)


PER_QUERY = {"circo": _circo_ap}   # metric family -> per-query AP@10


def per_query_scores(split: EvalSplit, ranked: np.ndarray) -> dict[str, list[float]] | None:
    """``{"AP@10": [one value per query]}``, or None (no ground truth, or a family without AP)."""
    score = PER_QUERY.get(split.kind)
    if score is None or not split.has_ground_truth:
        return None
    return {PER_QUERY_KEY: [round(float(x), DECIMALS) for x in score(split, np.asarray(ranked))]}


def scores_of(split_result: dict) -> np.ndarray | None:
    """The stored per-query AP@10 of one model's split result (None when it has none)."""
    values = (split_result.get("per_query") or {}).get(PER_QUERY_KEY)
    return None if values is None else np.asarray(values, dtype=np.float64)
