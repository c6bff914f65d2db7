"""From a query to the hits a request asked for: the query vector per kind of query, then the ranking
with the metadata filter, near-duplicate collapse, offset paging and files gone from disk.

Kinds of query, by what the request gives (:data:`QUERY_KINDS`):
    composed   image + text: the model's own composition
    text       text alone: the text path of the model's backbone (the ``text`` baseline), refused for
               the ``image`` baseline, which has no text path
    image      image alone: the reference's own features (the ``image`` baseline), refused for the
               ``text`` baseline, which has no image path

Scoring: the query's rule (:func:`query_rule`, the rule `zscir eval` and `zscir retrieve` score by). The
cosine of a CLIP model is the index's own inner product, ranked below. Any other rule (a BLIP-2 backbone's
max over query tokens, a trained BLIP-2 head's own score, a language-model method's several vectors and
columns) ranks by :func:`zscir.index.rescoring.rank_rows` over the index's columns, as the Retriever does:
a text-only or image-only query scores its one vector by the model's one-vector rule (the encoder's own
when it gives one vector, else its backbone's layout rule, :mod:`zscir.models.query_tokens`).

Ranking rule (cosine): candidates come in order of exact score; a candidate is taken unless it is the
reference itself, fails the filter, has a file that is gone (counted as ``dropped_missing``), or is
a near duplicate (cosine >= the threshold) of a higher hit kept. ``offset`` skips the first taken hits.
A filter is applied before top-k: when it selects at most :data:`FILTER_EXACT_MAX` images they are
scored exactly, one by one; otherwise the index is asked for more candidates (re-ranked exactly
from the fp16 vectors) four times wider each round until enough pass or the gallery is exhausted,
and then every selected image is scored exactly. Either way the answer equals a brute-force filter
over exact scores, whatever the index kind.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from zscir.index.queries import read_reference
from zscir.index.rescoring import IndexColumns, rank_rows
from zscir.models import prompts
from zscir.models.composed import COSINE, Rule
from zscir.models.query import QueryEncoder
from zscir.models.query_tokens import layout_rule

FILTER_EXACT_MAX = 200_000   # a filter selecting at most this many images scores them all exactly
WIDEN = 4


@dataclass
class Ranked:
    hits: list[tuple[int, float]] = field(default_factory=list)   # (row, exact score), best first
    dropped_missing: int = 0
    dropped_duplicates: int = 0


def query_kind(has_image: bool, has_text: bool) -> str:
    return {(True, True): "composed", (False, True): "text", (True, False): "image"}[(has_image, has_text)]


# the baseline each model lacks a path for: kind -> encoder names that cannot answer it, and why
REFUSED = {"text": {"image": "the 'image' model ranks by the reference alone: it needs an image"},
           "image": {"text": "the 'text' model ranks by the text alone: it needs a text"}}


@torch.no_grad()
def query_vector(retriever, kind: str, image, text: str | None, timings: dict) -> tuple[np.ndarray, str | None, object]:
    """(the normalised query [1, D], the reference's content key, the decoded reference or path) for one query."""
    laps = _Laps(timings)
    encoder = retriever.encoder
    if kind == "text":
        q = F.normalize(encoder.backbone.encode_text([prompts.clean_text(text)]).float(), dim=-1)
        laps("query_encoder")
        return q.cpu().numpy(), None, None
    decoded, key = read_reference(image)
    laps("decode")
    ref = retriever.encode_references([decoded])
    laps("image_encoder")
    if kind == "image":
        q = F.normalize(encoder.backbone.image_query(ref).float(), dim=-1)
    else:
        q = encoder.encode_queries(ref, [text]).float()
    laps("query_encoder")
    return q.cpu().numpy(), key, image


def query_rule(encoder, kind: str) -> Rule:
    """The rule that scores a ``kind`` query of ``encoder`` (module doc)."""
    if kind == "composed" or type(encoder).encode_items is QueryEncoder.encode_items:
        return encoder.rule
    return layout_rule(encoder.backbone)


def rank_by_rule(index, rule: Rule, q: np.ndarray, k: int, offset: int = 0,
                 exclude: set[int] | frozenset = frozenset(), columns: IndexColumns | None = None) -> Ranked:
    """The hits ranked ``offset + 1`` to ``offset + k`` for the one query vector ``q`` [1, D] by ``rule`` over the
    index's columns (``columns``: the retriever's, loaded once), leaving out the rows of ``exclude``."""
    columns = columns if columns is not None else IndexColumns(index)
    (hits,) = rank_rows(rule, {"query": torch.from_numpy(np.asarray(q, dtype=np.float32))}, columns, index,
                        offset + k, [set(exclude)])
    return Ranked([(row, score) for score, row in hits][offset:])


def by_rule(retriever, kind: str) -> bool:
    """Whether a ``kind`` query ranks by the model's rule rather than by the index's inner product (a composed
    query: as the Retriever decides, :func:`zscir.index.retriever.multi_column`)."""
    return retriever.multi if kind == "composed" else query_rule(retriever.encoder, kind) is not COSINE


def vectors_of(index) -> np.ndarray | None:
    """The index's normalised fp16 vectors in row order (every kind keeps them)."""
    return getattr(index.searcher or index.index, "vectors", None)


def rank(index, q: np.ndarray, k: int, offset: int = 0, exclude: set[int] | frozenset = frozenset(),
         allowed: np.ndarray | None = None, dedupe: float | None = None,
         exists: Callable[[str], bool] = os.path.exists) -> Ranked:
    """The hits ranked ``offset + 1`` to ``offset + k`` under the rule above."""
    n, want = len(index), offset + k
    vectors = vectors_of(index)
    if allowed is not None and len(allowed) <= FILTER_EXACT_MAX:
        return _take(index, _exact(vectors, q, allowed), want, offset, exclude, None, dedupe, exists, vectors)
    fetch = min(n, max(16, 2 * (want + len(exclude))))
    while True:
        scores, rows = index.search(q, fetch)
        candidates = [(int(r), float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]
        ranked = _take(index, candidates, want, offset, exclude, allowed, dedupe, exists, vectors)
        if len(ranked.hits) >= k or (fetch >= n and len(candidates) >= n):
            return ranked
        if fetch >= n:  # an approximate index left rows unvisited: score every (selected) image exactly
            rows_all = np.arange(n) if allowed is None else allowed
            return _take(index, _exact(vectors, q, rows_all), want, offset, exclude, None, dedupe, exists, vectors)
        fetch = min(n, fetch * WIDEN)


def _exact(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray) -> list[tuple[int, float]]:
    if len(rows) == 0:
        return []
    scores = np.asarray(vectors[rows], dtype=np.float32) @ q[0].astype(np.float32)
    order = np.lexsort((rows, -scores))   # best first; ties by row, as a stable exact search orders them
    return [(int(rows[i]), float(scores[i])) for i in order]


def _take(index, candidates, want, offset, exclude, allowed, dedupe, exists, vectors) -> Ranked:
    out = Ranked()
    allowed_set = None if allowed is None else set(allowed.tolist())
    kept_vectors: list[np.ndarray] = []
    for row, score in candidates:
        if row in exclude or (allowed_set is not None and row not in allowed_set):
            continue
        path = index.paths[row]
        if path and not exists(path):
            out.dropped_missing += 1
            continue
        if dedupe is not None:
            v = np.asarray(vectors[row], dtype=np.float32)
            if kept_vectors and float(np.max(np.stack(kept_vectors) @ v)) >= dedupe:
                out.dropped_duplicates += 1
                continue
            kept_vectors.append(v)
        out.hits.append((row, score))
        if len(out.hits) >= want:
            break
    out.hits = out.hits[offset:]
    return out


class _Laps:
    def __init__(self, timings: dict):
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now
