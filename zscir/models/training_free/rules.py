"""The scoring rules of LDRE and SEIZE (:class:`~zscir.models.composed.Rule`), as their official code computes them.

Vectors (each row L2-normalised, fp32):
  ``edits``    [Q, N, D]  the N edited captions, one feature each          (LDRE's adaptive ensemble)
  ``captions`` [Q, N, D]  the N reference captions they were edited from   (LDRE's adaptive ensemble)
  ``edited``   [Q, D]     normalise(mean of the N edited captions' raw text features)     (SEIZE)
  ``captioned`` [Q, D]    normalise(mean of the N reference captions' raw text features)  (SEIZE)
Column: ``image`` [G, D], the gallery's normalised image features.

LDRE's adaptive ensemble (``src/divergent_caption_ensemble.py``, ``--use_adaptive_ensemble``): for each caption
index i, over ALL queries of the split at once, the negative change ``relu(s_before - s_after)`` of every
gallery image (``s_after = edits_i @ image.T``, ``s_before = captions_i @ image.T``), its top ``topk`` values
per query, summed over the queries: ``neg_i``. Weights ``softmax(neg / max(neg) / temperature)`` over i (one
weight vector for the whole split); query ``sum_i w_i edits_i`` (not renormalised: ranks are the same); score
its dot product with the image features. Defaults as LDRE's ``args.py``: topk 5, temperature 0.04.

SEIZE (``src/semantic_editing_search.py``): ``d = s_after - s_before`` per gallery image with ``s_after`` from
``edited`` and ``s_before`` from ``captioned``; score ``s_after + neg * min(d, 0) + pos * max(d, 0)``;
defaults neg 2.1, pos 0.13 (SEIZE's ``args.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zscir.models.composed import Rule, Vectors

FIT_CHUNK = 256   # queries at once when fitting: 256 x 123k fp32 similarities = 126 MB per tensor


@dataclass(frozen=True)
class SeizeRule(Rule):
    neg: float = 2.1
    pos: float = 0.13
    columns = ("image",)

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        after = vectors["edited"] @ columns["image"].T
        before = vectors["captioned"] @ columns["image"].T
        d = after - before
        return after + self.neg * d.clamp(max=0) + self.pos * d.clamp(min=0)

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        return vectors["edited"]   # s_after: the similarity after the edit

    def describe(self) -> dict:
        return {"rule": "seize", "neg_factor": self.neg, "pos_factor": self.pos,
                "formula": "s_after + neg * min(s_after - s_before, 0) + pos * max(s_after - s_before, 0)",
                "s_after": "normalised mean of the N edited captions' text features, cosine with the image",
                "s_before": "normalised mean of the N reference captions' text features, cosine with the image"}


@dataclass(frozen=True)
class AdaptiveEnsemble(Rule):
    """LDRE's adaptive ensemble, not yet fitted: :meth:`fit` computes its weights over all queries."""

    topk: int = 5
    temperature: float = 0.04
    columns = ("image",)

    def negative_change(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        """[N]: per caption index, the sum over all queries of the top-k negative changes (float64 sums)."""
        edits, captions, image = vectors["edits"], vectors["captions"], columns["image"]
        total = torch.zeros(edits.shape[1], dtype=torch.float64)
        k = min(self.topk, image.shape[0])
        for start in range(0, edits.shape[0], FIT_CHUNK):
            e, c = edits[start:start + FIT_CHUNK], captions[start:start + FIT_CHUNK]
            for i in range(edits.shape[1]):
                neg = (c[:, i] @ image.T - e[:, i] @ image.T).clamp(min=0)
                total[i] += torch.topk(neg, k, dim=-1).values.double().sum()
        return total

    def fit(self, vectors: Vectors, columns: Vectors) -> "EnsembleWeights":
        neg = self.negative_change(vectors, columns).float()
        weights = torch.softmax(neg / neg.max() / self.temperature, dim=0)
        return EnsembleWeights(tuple(weights.tolist()), tuple(neg.tolist()), self.topk, self.temperature,
                               int(vectors["edits"].shape[0]))

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        raise RuntimeError("AdaptiveEnsemble.score: fit the rule on all queries first (Rule.fit)")

    def describe(self) -> dict:
        return {"rule": "ldre-adaptive-ensemble", "topk": self.topk, "temperature": self.temperature}


@dataclass(frozen=True)
class EnsembleWeights(Rule):
    """LDRE's adaptive ensemble fitted on a split: one weight per caption index."""

    weights: tuple[float, ...]
    negative_change: tuple[float, ...]
    topk: int
    temperature: float
    fitted_on: int
    columns = ("image",)

    def score(self, vectors: Vectors, columns: Vectors) -> torch.Tensor:
        return self.candidate_query(vectors) @ columns["image"].T

    def candidate_query(self, vectors: Vectors) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=vectors["edits"].dtype)
        return (vectors["edits"] * w[None, :, None]).sum(dim=1)

    def describe(self) -> dict:
        return {"rule": "ldre-adaptive-ensemble", "topk": self.topk, "temperature": self.temperature,
                "weights": list(self.weights), "negative_change": list(self.negative_change),
                "fitted_over": f"all {self.fitted_on} queries of the split at once (as LDRE's code): a query's "
                               "ranking depends on the other queries of its split"}
