"""The CIRR family (CIRR, Fine-CIRR): Recall@k of ``target_hard`` and Recall_subset@k over the query's
``img_set``; two submission files as in CIRR's ``demo_files``,
``{"version": "rc2", "metric": "recall", pairid: [top-50 names]}`` and
``{"version": "rc2", "metric": "recall_subset", pairid: [top-3 names]}``; the reference is never in either."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation import metrics
from zscir.evaluation.families.base import (Family, Rankings, image_ids, list_problems, ranking_path, rows_of,
                                            targets_of)
from zscir.evaluation.metrics import TOP_K

CIRR_VERSION = "rc2"
SUBSET_K = 3
SUFFIXES = ("recall", "recall_subset")


def score(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    if subset_ranked is None:
        raise ValueError(f"{split.name}: CIRR metrics need the subset rankings")
    return metrics.cirr_metrics(ranked, targets_of(split), subset_ranked)


def cutoffs(benchmark: str) -> dict:
    return {"R@k": list(metrics.CIRR_KS), "R_subset@k": list(metrics.CIRR_SUBSET_KS)}


def payloads(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, dict]:
    recall = {"version": CIRR_VERSION, "metric": "recall"}
    subset = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for q, row, srow in zip(split.queries, ranked, subset_ranked):
        recall[q.qid] = image_ids(split, row[:TOP_K])
        subset[q.qid] = image_ids(split, srow[:SUBSET_K])
    return {"recall": recall, "recall_subset": subset}


def read(split: EvalSplit, out_dir: Path) -> Rankings:
    paths = [ranking_path(out_dir, split, s) for s in SUFFIXES]
    recall, subset = (json.loads(p.read_text()) for p in paths)
    return rows_of(split, recall, TOP_K, paths[0]), rows_of(split, subset, SUBSET_K, paths[1])


def check(split: EvalSplit, payloads: dict[str, dict]) -> list[str]:
    problems = []
    for suffix, payload in payloads.items():
        if payload.get("version") != CIRR_VERSION or payload.get("metric") != suffix:
            problems.append(f"{suffix}: version/metric fields should be {CIRR_VERSION!r}/{suffix!r}")
        if suffix == "recall_subset":
            want, available = SUBSET_K, lambda q: len(set(q.subset) - {q.reference})
        else:
            want, available = TOP_K, lambda q: len(split.gallery) - 1
        problems += list_problems(split, suffix, payload, want, available, excludes_reference=True)
    return problems


FAMILY = Family("cirr", score=score, cutoffs=cutoffs, payloads=payloads, read=read, check=check,
                subset_k=SUBSET_K, generation_style="contextual",
                protocol_notes={"cirr_subset": "Recall_subset@k ranks the query's img_set members other than the "
                                               "reference (the reference is always excluded, whatever "
                                               "remove_reference says)"})
