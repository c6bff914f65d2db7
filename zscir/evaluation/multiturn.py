"""Multi-turn splits (``EvalSplit.notes["multiturn"]``: each query's sequence and turn), scored turn by turn.

Two modes, both reported per turn (mAP@10 and R@10 on each turn's own ground truth):

- ``true_previous``: the reference is the true previous scene (the annotated
  reference): the split's ordinary ranking, grouped by turn;
- ``closed_loop``: turn 1 starts from the annotated reference, every later
  turn from the previous turn's top-1 answer (:func:`zscir.index.refine.refine_turns`,
  the loop :meth:`Retriever.refine` runs), so errors compound as in a dialog.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from zscir.benchmarks.base import EvalSplit, Query
from zscir.evaluation import metrics
from zscir.evaluation.features import CacheReport, GalleryFeatures, reference_features
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.ranking import query_vectors, rank_split
from zscir.models.composed import COSINE, Rule
from zscir.index.refine import refine_turns

TURN_METRICS = ("mAP@10", "R@10")
MODES = ("true_previous", "closed_loop")


def per_turn(split: EvalSplit, ranked: np.ndarray) -> dict[str, dict]:
    """turn -> {"queries", "mAP@10", "R@10"} of ``ranked`` (one row per query, gallery indices)."""
    turns = np.asarray(split.notes["multiturn"]["turn"])
    out = {}
    for t in sorted(set(turns.tolist())):
        idx = np.nonzero(turns == t)[0]
        gts = [[split.gallery_index.get(g, -1) for g in split.queries[i].targets] for i in idx]
        m = metrics.circo_metrics(ranked[idx], gts)
        out[str(t)] = {"queries": int(len(idx)), **{k: m[k] for k in TURN_METRICS}}
    return out


def sessions(split: EvalSplit) -> list[list[int]]:
    """Query indices of each sequence, in turn order."""
    notes = split.notes["multiturn"]
    by_seq: dict = {}
    for i, (s, t) in enumerate(zip(notes["sequence"], notes["turn"])):
        by_seq.setdefault(s, []).append((t, i))
    return [[i for _, i in sorted(turns)] for _, turns in sorted(by_seq.items())]


def closed_loop_ranking(qe, split: EvalSplit, gallery: GalleryFeatures, protocol: Protocol, cache_root: Path,
                        batch_size: int = 64, progress: bool = True, rule: Rule = COSINE,
                        columns: dict | None = None) -> np.ndarray:
    """[Q, top_k] rankings where each turn after the first starts from the previous turn's top-1.

    ``rule`` and ``columns``: the model's scoring rule as the split's own ranking fitted it, and the gallery
    columns it reads (a language-model method's several query vectors); the default is the cosine."""
    # any gallery image may become a reference: features (and tokens, if the model reads them) for all
    every = replace(split, queries=[Query(f"g{n}", g, ("",)) for n, g in enumerate(gallery.ids)])
    refs = reference_features(qe.backbone, every, gallery, qe.needs_tokens, cache_root, CacheReport(), batch_size,
                              progress)

    def search(ref_ids: list[str], query_idx: list[int]) -> list[list[int]]:
        sub = replace(split, queries=[replace(split.queries[i], reference=r) for r, i in zip(ref_ids, query_idx)])
        vectors, valid = query_vectors(qe, sub, refs, protocol, batch_size, progress=False)
        ranked, _ = rank_split(sub, vectors, valid, gallery, protocol, protocol.top_k, rule, columns)
        return [[int(j) for j in row if j >= 0] for row in ranked]

    seqs = sessions(split)
    firsts = [split.queries[s[0]].reference for s in seqs]
    found = refine_turns(search, firsts, seqs, as_reference=lambda j: split.gallery[j])
    out = np.full((len(split.queries), protocol.top_k), -1, dtype=np.int64)
    for seq, rankings in zip(seqs, found):
        for i, row in zip(seq, rankings):
            out[i, :len(row)] = row
    return out


def evaluate_multiturn(qe, split: EvalSplit, ranked: np.ndarray, gallery: GalleryFeatures, protocol: Protocol,
                       cache_root: Path, batch_size: int = 64, progress: bool = True, rule: Rule = COSINE,
                       columns: dict | None = None) -> dict:
    closed = closed_loop_ranking(qe, split, gallery, protocol, cache_root, batch_size, progress, rule, columns)
    true_prev, loop = per_turn(split, ranked), per_turn(split, closed)
    return {"metrics": list(TURN_METRICS), "modes": list(MODES),
            "turns": {t: {"queries": true_prev[t]["queries"],
                          "true_previous": {k: true_prev[t][k] for k in TURN_METRICS},
                          "closed_loop": {k: loop[t][k] for k in TURN_METRICS}} for t in true_prev}}
