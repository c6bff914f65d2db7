"""The one query interface: named query vectors, gallery feature columns, and the rule that scores them.

A query encoder turns a batch of :class:`QueryItem` (the reference image's features and identity, the
modification as annotated, the protocol's query texts) into named, normalised query vectors
(``{"query": [B, D]}``, or ``{"edits": [B, N, D], "captions": [B, N, D]}``...). Its :class:`Rule` scores
them against named gallery columns (``"image"``: the gallery's image features; ``"caption"``: text features
of gallery captions), exactly and in fp32:

    scores = encoder.rule.fit(all_vectors, columns).score(chunk_vectors, columns)   # [q, G]

The inversion methods and the baselines are the one-vector case: ``{"query": q}`` scored by :data:`COSINE`,
``q @ image.T``. ``fit`` lets a rule whose constants depend on every query of a split (LDRE's adaptive
ensemble weights) compute them once before the chunked scoring; the fitted rule's :meth:`Rule.describe`
records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

Vectors = dict[str, torch.Tensor]


class ImageRef(NamedTuple):
    """An image's identity as the benchmark names it (``id``) and its file (content key source), if any."""

    id: str
    path: Path | None = None


class QueryItem(NamedTuple):
    """One query as an encoder sees it."""

    texts: list[str]               # the protocol's query texts (the one-vector case: normalised mean of their features)
    captions: tuple[str, ...]      # the modification text(s) as annotated
    reference: ImageRef            # the reference image's identity, so that cached or imported captions are found


@dataclass
class SplitContext:
    """What an encoder may read about the split it encodes: set by the evaluator before a split's queries.

    style:       the benchmark family's generation style (a key of a method's template / weight tables)
    generations: captions and edits (:class:`zscir.models.training_free.generations.Generations`), or None
    """

    style: str = "structural"
    generations: object | None = None
    notes: dict = field(default_factory=dict)


class Rule:
    """Scores named query vectors against named gallery columns (both L2-normalised, fp32)."""

    columns: tuple[str, ...] = ("image",)

    def fit(self, vectors: Vectors, columns: Vectors) -> "Rule":
        """The rule with the constants it computes over all queries (most rules have none: itself)."""
        return self

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        """[B, D]: a query whose inner product with the ``"image"`` column ranks candidates for exact re-scoring by
        :meth:`score` (an approximate index over the image features serves it, :mod:`zscir.index.rescoring`)."""
        raise NotImplementedError(f"{type(self).__name__} names no candidate query")


@dataclass(frozen=True)
class Linear(Rule):
    """``sum(w * (vectors[v] @ columns[c].T))`` over the (v, c, w) terms, in their order."""

    terms: tuple[tuple[str, str, float], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for _, c, _ in self.terms))

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        total = None
        for v, c, w in self.terms:
            term = vectors[v] @ columns[c].T
            term = term if w == 1.0 else w * term
            total = term if total is None else total + term
        return total

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        """The image-column part of the rule: ``sum(w * vectors[v])`` over the terms that read ``"image"``."""
        return sum(w * vectors[v] for v, c, w in self.terms if c == "image")

    def describe(self) -> dict:
        return {"rule": "linear", "terms": [{"vector": v, "column": c, "weight": w} for v, c, w in self.terms]}


# the one-vector case: the query feature against the gallery's image features (cosine, both normalised)
COSINE = Linear((("query", "image", 1.0),))


def one_vector(encoder, ref, items: list[QueryItem]) -> Vectors:
    """``{"query": [B, D]}``: per item, the normalised mean of its texts' normalised features
    (``encoder.encode_queries(ref_rows, texts)``; FashionIQ's two caption orders give two texts); ``ref`` holds
    one row per item."""
    owner = torch.tensor([n for n, item in enumerate(items) for _ in item.texts])
    feats = encoder.encode_queries(ref[owner], [t for item in items for t in item.texts]).float().cpu()
    summed = torch.zeros(len(items), feats.shape[1]).index_add_(0, owner, feats)
    return {"query": torch.nn.functional.normalize(summed, dim=-1)}
