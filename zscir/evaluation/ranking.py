"""Query features and rankings of one split: what the runner, the oracle rows and the multi-turn loop share.

Query vectors come from the encoder's one query interface (:mod:`zscir.models.composed`; the one-vector case
is the normalised mean over the protocol's query texts); scores are fp32, by the encoder's rule (cosine in
the one-vector case); rankings are stable top-k (ties by gallery order),
plus each query's subset ranking for families that have one (CIRR's img_set).
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from zscir.benchmarks.base import EvalSplit
from zscir.errors import ZscirError
from zscir.evaluation.families import get_family
from zscir.evaluation.features import GalleryFeatures, ReferenceFeatures
from zscir.evaluation.metrics import stable_topk, subset_ranking
from zscir.evaluation.protocol import Protocol
from zscir.models.composed import COSINE, ImageRef, QueryItem, Rule, one_vector

RANK_CHUNK = 256   # queries scored at once: 256 x 123k fp32 scores = 126 MB


def encode_queries(qe, split: EvalSplit, refs: ReferenceFeatures, protocol: Protocol, batch_size: int,
                   progress: bool):
    """[Q, D] normalised query features (a torch tensor) of a one-vector encoder and the mask of the queries that
    have them (see :func:`query_vectors` for every encoder)."""
    vectors, valid = query_vectors(qe, split, refs, protocol, batch_size, progress)
    if set(vectors) != {"query"}:
        raise ZscirError(f"{split.name}: the {getattr(qe, 'name', '?')} query encoder gives several query vectors "
                         f"({', '.join(vectors)}); this step takes one")
    return vectors["query"], valid


def query_vectors(qe, split: EvalSplit, refs: ReferenceFeatures, protocol: Protocol, batch_size: int,
                  progress: bool):
    """The encoder's named query vectors (``{"query": [Q, D]}`` in the one-vector case; torch tensors, one row per
    query, zero rows for queries without a reference feature) and the mask of the queries that have them."""
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it

    valid = np.array([q.reference in refs.row_of for q in split.queries], dtype=bool)
    todo = [q for q, ok in zip(split.queries, valid) if ok]
    chunks: dict[str, list] = {}
    # an encoder with only encode_queries(ref, texts) is the one-vector case
    encode = getattr(qe, "encode_items", None) or (lambda ref, items: one_vector(qe, ref, items))
    bar = tqdm(total=len(todo), unit="query", desc=f"queries {split.name}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        items = [QueryItem(protocol.query_texts(split, q, getattr(qe, "fiq_captions", None)), q.captions,
                           ImageRef(q.reference, split.images.get(q.reference))) for q in batch]
        for name, value in encode(refs.get([q.reference for q in batch]), items).items():
            chunks.setdefault(name, []).append(value.float().cpu())
        bar.update(len(batch))
    bar.close()
    out = {}
    for name, parts in (chunks or {"query": [torch.zeros(0, 1)]}).items():
        full = torch.cat(parts)
        out[name] = torch.zeros((len(split.queries),) + tuple(full.shape[1:]))
        out[name][torch.from_numpy(valid)] = full
    return out, valid


def rank_split(split: EvalSplit, queries, valid: np.ndarray, gallery: GalleryFeatures,
               protocol: Protocol, top_k: int, rule: Rule = COSINE,
               columns: Callable[[str, list], object] | dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-k gallery indices per query (and the family's subset ranking), in the split's gallery index space.

    ``queries``: the named query vectors (a [Q, D] tensor is the one-vector case ``{"query": ...}``), scored by
    ``rule`` against the gallery columns: ``"image"`` (the gallery's features) and any other column the rule
    reads, from ``columns(name, [ImageRef])`` (or all columns given as a dict, from :func:`gallery_columns`). The rule is fitted on the valid queries first (see
    :meth:`Rule.fit`); :func:`fitted_rule` gives it. Ranking runs over the gallery images that have features;
    ``gallery.positions`` is increasing, so ties are still broken by gallery order.
    """
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it

    vectors = queries if isinstance(queries, dict) else {"query": queries}
    cols = gallery_columns(split, gallery, rule, columns)
    fitted = fitted_rule(rule, vectors, valid, cols)
    reduced = np.full(len(split.gallery), -1, dtype=np.int64)
    reduced[gallery.positions] = np.arange(len(gallery.positions))

    def to_gallery(r: np.ndarray) -> np.ndarray:
        return np.where(r >= 0, gallery.positions[np.maximum(r, 0)], -1)

    exclude = np.full(len(split.queries), -1, dtype=np.int64)
    if protocol.remove_reference:
        exclude = np.array([reduced[split.gallery_index[q.reference]] if q.reference in split.gallery_index else -1
                            for q in split.queries], dtype=np.int64)
    ranked = np.full((len(split.queries), top_k), -1, dtype=np.int64)
    subset_k = get_family(split.kind).subset_k
    subset = np.full((len(split.queries), subset_k), -1, dtype=np.int64) if subset_k else None
    rows = np.nonzero(valid)[0]
    for start in range(0, len(rows), RANK_CHUNK):
        idx = rows[start:start + RANK_CHUNK]
        chunk = {name: v[torch.from_numpy(idx)] for name, v in vectors.items()}
        scores = fitted.score(chunk, cols).numpy()   # fp32 similarities by the encoder's rule
        ranked[idx] = to_gallery(stable_topk(scores, top_k, exclude[idx]))
        if subset is not None:
            members = [[reduced[split.gallery_index[m]] for m in split.queries[i].subset] for i in idx]
            # the subset excludes the reference whatever the protocol says for the full ranking
            ref = np.array([reduced[split.gallery_index[split.queries[i].reference]]
                            if split.queries[i].reference in split.gallery_index else -1 for i in idx])
            subset[idx] = to_gallery(subset_ranking(scores, members, ref, k=subset_k))
    return ranked, subset


def gallery_columns(split: EvalSplit, gallery: GalleryFeatures, rule: Rule,
                    columns: Callable[[str, list], object] | dict | None) -> dict:
    """The gallery columns ``rule`` reads: ``"image"`` (normalised image features) and the others from ``columns``."""
    if isinstance(columns, dict):
        return columns
    out = {"image": gallery.normalized()}
    for name in rule.columns:
        if name not in out:
            if columns is None:
                raise ZscirError(f"{split.name}: the scoring rule reads the gallery column {name!r}, which this "
                                 "evaluation does not have")
            out[name] = columns(name, [ImageRef(g, split.images.get(g)) for g in gallery.ids]).float()
    return out


def fitted_rule(rule: Rule, vectors: dict, valid: np.ndarray, columns: dict) -> Rule:
    """``rule`` fitted on the valid queries (rules without split-wide constants return themselves)."""
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it

    mask = torch.from_numpy(valid)
    return rule.fit({name: v[mask] for name, v in vectors.items()}, columns)
