"""Score a split's rankings with its benchmark family's metrics (:mod:`zscir.evaluation.families`)."""

from __future__ import annotations

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation.families import get_family
from zscir.evaluation.families.fashioniq import FASHIONIQ_KS_BY_BENCHMARK, fashioniq_ks


def score_split(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, float] | None:
    """The split's metrics, or None when it has no ground truth (a test split)."""
    if not split.has_ground_truth:
        return None
    return get_family(split.kind).score(split, ranked, subset_ranked)


__all__ = ["FASHIONIQ_KS_BY_BENCHMARK", "fashioniq_ks", "score_split"]
