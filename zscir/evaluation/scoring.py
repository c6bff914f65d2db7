"""Score a split's rankings with its benchmark's metrics (a registry by metric kind)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation import metrics


def _targets(split: EvalSplit) -> list[int]:
    return [split.gallery_index.get(q.targets[0], -1) for q in split.queries]


def score_circo(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    gts = [[split.gallery_index.get(t, -1) for t in q.targets] for q in split.queries]
    return metrics.circo_metrics(ranked, gts)


def score_cirr(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    if subset_ranked is None:
        raise ValueError(f"{split.name}: CIRR metrics need the subset rankings")
    return metrics.cirr_metrics(ranked, _targets(split), subset_ranked)


# cut-offs that differ from the metric family's: FineCIR reports R@1, R@10, R@50 on Fine-FashionIQ
FASHIONIQ_KS_BY_BENCHMARK = {"fine-fashioniq": (1, 10, 50)}


def fashioniq_ks(benchmark: str) -> tuple[int, ...]:
    return FASHIONIQ_KS_BY_BENCHMARK.get(benchmark, metrics.FASHIONIQ_KS)


def score_fashioniq(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    return metrics.fashioniq_metrics(ranked, _targets(split), ks=fashioniq_ks(split.benchmark))


SCORERS: dict[str, Callable[[EvalSplit, np.ndarray, np.ndarray | None], dict[str, float]]] = {
    "circo": score_circo,
    "cirr": score_cirr,
    "fashioniq": score_fashioniq,
}


def score_split(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, float] | None:
    """The split's metrics, or None when it has no ground truth (a test split)."""
    if not split.has_ground_truth:
        return None
    return SCORERS[split.kind](split, ranked, subset_ranked)
