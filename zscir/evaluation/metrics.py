"""Exact retrieval metrics of CIRCO, CIRR and FashionIQ.

Rankings are integer arrays ``ranked[q, j]`` = gallery index at rank ``j``
(0-based), padded with -1 when a query has fewer than ``k`` ranked images.
They come from :func:`stable_topk`: similarities in fp32, descending, ties
broken by gallery order (the lower gallery index first), which is what a stable
sort of the negated scores gives. Every metric is in percent, as papers report.

- CIRCO: AP@k = (sum over ranks j <= k that hold a ground truth of precision@j)
  / min(k, number of ground truths); mAP@k is its mean. Recall@k counts the
  annotated target (the first ground truth) in the top k.
- CIRR: Recall@k of ``target_hard`` with the reference removed from the ranking;
  Recall_subset@k over the query's ``img_set`` members other than the reference,
  ranked by the same scores and tie-break.
- FashionIQ: Recall@k of the target, per category; averaged over categories by
  the caller.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zscir.errors import ZscirError

TOP_K = 50
CIRCO_KS = (5, 10, 25, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)


# ---------------------------------------------------------------- ranking
def stable_topk(scores: np.ndarray, k: int = TOP_K, exclude: np.ndarray | None = None) -> np.ndarray:
    """Top-``k`` gallery indices per row of ``scores`` [Q, G], best first, ties by gallery order.

    ``exclude`` [Q] holds a gallery index to leave out of each row's ranking
    (-1 for none). Rows with fewer than ``k`` candidates are padded with -1.
    Exact: equal to ``np.argsort(-scores, kind="stable")[:, :k]`` without sorting whole rows.
    """
    neg = -np.asarray(scores, dtype=np.float32)   # negation is exact in fp32
    if neg.ndim != 2:
        raise ValueError(f"scores must be [queries, gallery], got shape {neg.shape}")
    if not np.isfinite(neg).all():
        raise ZscirError("similarity scores contain NaN or infinity: the model produced invalid features")
    n_q, n_g = neg.shape
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        rows = np.nonzero(exclude >= 0)[0]
        neg[rows, exclude[rows]] = np.inf   # sorts after every real score; cut below
    out = np.full((n_q, k), -1, dtype=np.int64)
    kk = min(k, n_g)
    if kk == 0 or n_q == 0:
        return out
    if kk == n_g:
        top = np.argsort(neg, axis=1, kind="stable")
    else:
        part = np.argpartition(neg, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(neg, part, axis=1)
        kth = vals.max(axis=1)
        # argpartition picks arbitrarily among scores equal to the k-th one; those rows are redone exactly
        tied = (neg <= kth[:, None]).sum(axis=1) > kk
        order = np.lexsort((part, vals), axis=-1)   # by score, then by gallery index
        top = np.take_along_axis(part, order, axis=1)
        for i in np.nonzero(tied)[0]:
            cand = np.flatnonzero(neg[i] <= kth[i])   # ascending gallery index
            top[i] = cand[np.argsort(neg[i, cand], kind="stable")[:kk]]
    top_vals = np.take_along_axis(neg, top, axis=1)
    out[:, :kk] = np.where(np.isinf(top_vals), -1, top)
    return out


def subset_ranking(scores: np.ndarray, subsets: Sequence[Sequence[int]], exclude: np.ndarray | None = None,
                   k: int | None = None) -> np.ndarray:
    """Rank each query's subset members (gallery indices) by score, ties by gallery order.

    The reference (``exclude``) and duplicate members are dropped; rows are padded with -1.
    Equal to filtering the full stable ranking down to the members, as CIRR's official code does.
    """
    scores = np.asarray(scores, dtype=np.float32)
    rows = []
    for q, members in enumerate(subsets):
        m = np.unique(np.asarray(members, dtype=np.int64))   # sorted: gallery order
        m = m[m >= 0]
        if exclude is not None:
            m = m[m != exclude[q]]
        rows.append(m[np.argsort(-scores[q, m], kind="stable")])
    width = k if k is not None else max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for q, r in enumerate(rows):
        out[q, :min(width, len(r))] = r[:width]
    return out


# ---------------------------------------------------------------- hits
def _pad(lists: Sequence[Sequence[int]]) -> np.ndarray:
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), -2, dtype=np.int64)   # -2 never equals a rank entry
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out


def hits(ranked: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """bool [Q, K]: ranked[q, j] is one of query q's positives (gallery indices; -1 = absent, never a hit)."""
    ranked = np.asarray(ranked, dtype=np.int64)
    pos = _pad([[p for p in ps if p >= 0] for ps in positives])
    return (ranked[:, :, None] == pos[:, None, :]).any(axis=-1) & (ranked >= 0)


def recall_at(ranked: np.ndarray, targets: Sequence[int], ks: Sequence[int], prefix: str = "R") -> dict[str, float]:
    h = hits(ranked, [[t] for t in targets])
    return {f"{prefix}@{k}": 100.0 * float(h[:, :k].any(axis=1).mean()) if len(h) else 0.0 for k in ks}


def average_precision_at(h: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query from a hit matrix; the denominator is min(k, number of positives)."""
    h = h[:, :k].astype(np.float64)
    precision = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    return (precision * h).sum(axis=1) / np.minimum(k, np.maximum(n_positives, 1))


# ---------------------------------------------------------------- per benchmark
def circo_metrics(ranked: np.ndarray, ground_truths: Sequence[Sequence[int]],
                  ks: Sequence[int] = CIRCO_KS) -> dict[str, float]:
    """mAP@k over all ground truths and Recall@k of the first (annotated target).

    ``ground_truths[q]`` lists gallery indices, the target first; -1 marks a ground
    truth that is not in the gallery (never found, still counted in the denominator).
    """
    h = hits(ranked, ground_truths)
    n_pos = np.array([len(g) for g in ground_truths], dtype=np.int64)
    out = {f"mAP@{k}": 100.0 * float(average_precision_at(h, n_pos, k).mean()) if len(h) else 0.0 for k in ks}
    out.update(recall_at(ranked, [g[0] for g in ground_truths], ks))
    return out


def cirr_metrics(ranked: np.ndarray, targets: Sequence[int], subset_ranked: np.ndarray,
                 ks: Sequence[int] = CIRR_KS, subset_ks: Sequence[int] = CIRR_SUBSET_KS) -> dict[str, float]:
    out = recall_at(ranked, targets, ks)
    out.update(recall_at(subset_ranked, targets, subset_ks, prefix="R_subset"))
    return out


def fashioniq_metrics(ranked: np.ndarray, targets: Sequence[int], ks: Sequence[int] = FASHIONIQ_KS) -> dict[str, float]:
    return recall_at(ranked, targets, ks)


def fashioniq_average(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each recall over the categories, and the mean of R@10 and R@50 (the usual headline)."""
    keys = list(next(iter(per_category.values())))
    out = {k: float(np.mean([m[k] for m in per_category.values()])) for k in keys}
    if "R@10" in out and "R@50" in out:
        out["avg"] = (out["R@10"] + out["R@50"]) / 2
    return out
