"""Query features and rankings of one split: what the runner, the oracle rows and the multi-turn loop share.

Query features are the normalised mean over the protocol's query texts; scores
are fp32 cosine similarities; rankings are stable top-k (ties by gallery order),
plus each query's subset ranking for families that have one (CIRR's img_set).
"""

from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation.families import get_family
from zscir.evaluation.features import GalleryFeatures, ReferenceFeatures
from zscir.evaluation.metrics import stable_topk, subset_ranking
from zscir.evaluation.protocol import Protocol

RANK_CHUNK = 256   # queries scored at once: 256 x 123k fp32 scores = 126 MB


def encode_queries(qe, split: EvalSplit, refs: ReferenceFeatures, protocol: Protocol, batch_size: int,
                   progress: bool):
    """[Q, D] normalised query features (a torch tensor) and a mask of the queries that have them."""
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it
    import torch.nn.functional as F

    valid = np.array([q.reference in refs.row_of for q in split.queries], dtype=bool)
    todo = [q for q, ok in zip(split.queries, valid) if ok]
    chunks = []
    bar = tqdm(total=len(todo), unit="query", desc=f"queries {split.name}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        texts = [protocol.query_texts(split, q, getattr(qe, "fiq_captions", None)) for q in batch]
        owner = torch.tensor([n for n, ts in enumerate(texts) for _ in ts])
        flat_texts = [t for ts in texts for t in ts]
        ref_ids = [batch[n].reference for n in owner.tolist()]
        feats = qe.encode_queries(refs.get(ref_ids), flat_texts).float().cpu()
        # several texts per query (FashionIQ's two caption orders): mean of normalised features, renormalised
        summed = torch.zeros(len(batch), feats.shape[1]).index_add_(0, owner, feats)
        chunks.append(F.normalize(summed, dim=-1))
        bar.update(len(batch))
    bar.close()
    dim = chunks[0].shape[1] if chunks else 1
    out = torch.zeros(len(split.queries), dim)
    if chunks:
        out[torch.from_numpy(valid)] = torch.cat(chunks)
    return out, valid


def rank_split(split: EvalSplit, queries, valid: np.ndarray, gallery: GalleryFeatures,
               protocol: Protocol, top_k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-k gallery indices per query (and the family's subset ranking), in the split's gallery index space.

    ``queries`` is a [Q, D] torch tensor. Ranking runs over the gallery images that
    have features; ``gallery.positions`` is increasing, so ties are still broken by gallery order.
    """
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it

    g = gallery.normalized()
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
        scores = (queries[torch.from_numpy(idx)] @ g.T).numpy()   # fp32 cosine similarities
        ranked[idx] = to_gallery(stable_topk(scores, top_k, exclude[idx]))
        if subset is not None:
            members = [[reduced[split.gallery_index[m]] for m in split.queries[i].subset] for i in idx]
            # the subset excludes the reference whatever the protocol says for the full ranking
            ref = np.array([reduced[split.gallery_index[split.queries[i].reference]]
                            if split.queries[i].reference in split.gallery_index else -1 for i in idx])
            subset[idx] = to_gallery(subset_ranking(scores, members, ref, k=subset_k))
    return ranked, subset
