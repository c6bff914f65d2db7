"""Scoring rules by the backbone's image layout: one feature per image (CLIP) or ``Q`` query features (BLIP-2).

A backbone names its layout (``backbone.image_layout``); :data:`LAYOUT_RULES` gives the rule that scores a
one-vector query (``{"query": [B, D]}``) against the gallery's ``"image"`` column in that layout:

- ``"pooled"`` (open_clip): :data:`~zscir.models.composed.COSINE`, ``q @ image.T``;
- ``"query_tokens"`` (BLIP-2, :mod:`zscir.backbone.blip2`): each gallery row holds the image's ``Q`` query
  features flattened (``Q * D``); the score is the largest dot product over them, as BLIP-2's image-text
  contrastive head scores a text against an image (:class:`MaxOverQueryTokens`).

A trained BLIP-2 head scores by its own rule over such rows (:mod:`zscir.models.blip2_query`): FineCIR by
:class:`MaxOverQueryTokens`, FashionBLIP-2 by :class:`MultiHeadMaxOverQueryTokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from zscir.models.composed import COSINE, Rule, Vectors

GALLERY_CHUNK = 4096   # gallery rows scored at once: 256 queries x 4096 x 32 tokens fp32 = 134 MB


@dataclass(frozen=True)
class MaxOverQueryTokens(Rule):
    """``max_t (query . image_t)`` over the ``tokens`` query features of each gallery row (each re-normalised,
    so a row normalised as a whole scores the same as its query features)."""

    tokens: int

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        query, gallery = vectors["query"].float(), columns["image"].float()
        out = torch.empty(query.shape[0], gallery.shape[0])
        for start in range(0, gallery.shape[0], GALLERY_CHUNK):
            part = gallery[start:start + GALLERY_CHUNK]
            part = F.normalize(part.reshape(part.shape[0], self.tokens, -1), dim=-1)
            scores = query @ part.reshape(-1, part.shape[-1]).T
            out[:, start:start + part.shape[0]] = scores.reshape(query.shape[0], part.shape[0], self.tokens).amax(-1)
        return out

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        """[B, Q * D]: the query repeated once per query token, so that an index's inner product with a flattened
        row is the sum over tokens (the mean-token score, up to a constant) to fetch candidates for the max."""
        return vectors["query"].repeat(1, self.tokens)

    def describe(self) -> dict:
        return {"rule": "max-over-query-tokens", "query_tokens": self.tokens, "vector": "query", "column": "image"}


@dataclass(frozen=True)
class MultiHeadMaxOverQueryTokens(Rule):
    """FashionBLIP-2's multi-head query-candidate matching (:mod:`zscir.models.blip2_heads.fashionblip2`) over the
    same rows: the query and each of the ``tokens`` query features are cut into ``heads`` slices of ``D / heads``,
    each slice L2-normalised; per head the best query token's slice cosine; the score is the mean over heads."""

    tokens: int
    heads: int

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        query, gallery = vectors["query"].float(), columns["image"].float()
        q = F.normalize(query.reshape(query.shape[0], self.heads, -1), dim=-1)            # [B, H, D/H]
        out = torch.empty(query.shape[0], gallery.shape[0])
        for start in range(0, gallery.shape[0], GALLERY_CHUNK):
            part = gallery[start:start + GALLERY_CHUNK]
            part = F.normalize(part.reshape(part.shape[0], self.tokens, self.heads, -1), dim=-1)   # [G, Q, H, D/H]
            out[:, start:start + part.shape[0]] = torch.einsum("bhd,gqhd->bghq", q, part).amax(-1).mean(-1)
        return out

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        """As :meth:`MaxOverQueryTokens.candidate_query`: the query repeated once per query token."""
        return vectors["query"].repeat(1, self.tokens)

    def describe(self) -> dict:
        return {"rule": "multi-head-max-over-query-tokens", "query_tokens": self.tokens, "heads": self.heads,
                "vector": "query", "column": "image"}


# backbone.image_layout -> (backbone -> the rule of the one-vector baselines)
LAYOUT_RULES: dict[str, Callable[[object], Rule]] = {
    "pooled": lambda backbone: COSINE,
    "query_tokens": lambda backbone: MaxOverQueryTokens(int(backbone.num_query_tokens)),
}


def layout_rule(backbone) -> Rule:
    """The rule scoring a one-vector query against ``backbone``'s gallery rows."""
    return LAYOUT_RULES[backbone.image_layout](backbone)
