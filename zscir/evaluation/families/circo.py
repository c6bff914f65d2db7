"""The CIRCO family (CIRCO and every split in its layout, the shapes world's included): mAP@k over all
ground truths and Recall@k of the annotated target; one submission file ``{query id: [top-50 ids]}``,
ids spelled as CIRCO's ``submission_examples`` spell them (JSON integers)."""

from __future__ import annotations

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation import metrics
from zscir.evaluation.families.base import Family, check_one_file, one_file_payloads, read_one_file


def score(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    gts = [[split.gallery_index.get(t, -1) for t in q.targets] for q in split.queries]
    return metrics.circo_metrics(ranked, gts)


def cutoffs(benchmark: str) -> dict:
    return {"mAP@k, R@k": list(metrics.CIRCO_KS)}


FAMILY = Family("circo", score=score, cutoffs=cutoffs, payloads=one_file_payloads, read=read_one_file,
                check=check_one_file)
