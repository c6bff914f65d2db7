"""``zscir eval --itm-rerank K``: a split's rankings with each query's top ``K`` re-ordered by ITM.

The rule and the text are :mod:`zscir.models.itm_rerank`'s. The first stage ranks ``max(K, top_k)`` images
(:func:`first_stage_k`), so ``K`` may exceed the stored rankings' length; after re-ranking they are cut to
the protocol's ``top_k``. A family's subset ranking (CIRR's img_set) is re-ranked by the same rule within
the subset. The gallery features (and so the feature cache) are the first stage's, untouched.
"""

from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation.protocol import Protocol
from zscir.models.itm_rerank import ItmRerank


def first_stage_k(rerank: ItmRerank | None, top_k: int) -> int:
    """How many images the first stage ranks per query."""
    return top_k if rerank is None else max(top_k, int(rerank.k))


def _reordered(row: np.ndarray, rerank: ItmRerank, probs) -> np.ndarray:
    """A ranking row (gallery indices, -1 padded) with its first ``k`` re-ordered."""
    filled = [int(g) for g in row if g >= 0]
    out = np.full_like(row, -1)
    out[:len(filled)] = rerank.reorder(filled, probs)
    return out


def rerank_split(rerank: ItmRerank, qe, split: EvalSplit, protocol: Protocol, ranked: np.ndarray,
                 subset: np.ndarray | None, valid: np.ndarray, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """``ranked`` [Q, >= top_k] and ``subset`` (gallery indices) re-ranked for the valid queries; ``ranked`` cut
    to ``protocol.top_k``."""
    ranked, subset = ranked.copy(), None if subset is None else subset.copy()
    fiq_rule = getattr(qe, "fiq_captions", None)
    rows = np.nonzero(valid)[0]

    def file_of(g: int) -> tuple[str, str]:
        image_id = split.gallery[g]
        return image_id, split.images[image_id]

    for i in tqdm(rows, unit="query", desc=f"itm rerank {split.name}", disable=not progress, dynamic_ncols=True,
                  file=sys.stderr):
        probs = rerank.probabilities(qe.backbone, protocol.query_texts(split, split.queries[i], fiq_rule), file_of)
        ranked[i] = _reordered(ranked[i], rerank, probs)
        if subset is not None:
            subset[i] = _reordered(subset[i], rerank, probs)
    return ranked[:, :protocol.top_k], subset
