"""Optional image-text matching (ITM) re-ranking of a query's top candidates (``--itm-rerank K``).

The rule, for every query model it is applied to (``zscir eval``, ``zscir retrieve``):

1. the first stage ranks the gallery by the query model's own rule (BLIP-2's ITC max over query tokens for
   the image / text / sum baselines, a trained head's own score for FineCIR and FashionBLIP-2);
2. the first ``K`` candidates of that ranking are re-ordered by the backbone's ITM match probability of the
   pair (candidate image, the query's modification text), highest first; equal probabilities keep their
   first-stage order; every position after ``K`` stays as the first stage put it.

The text is the modification text as the query encoders read it (:func:`zscir.models.prompts.clean_text`);
a query with several texts (FashionIQ's two captions in both orders) uses the mean probability over them.
The image baseline is re-ranked with the same text: it becomes a two-stage image-then-text pipeline.

Why the modification text: the BLIP-based CIR re-ranker of Liu et al. (2023, "Candidate Set Re-ranking for
Composed Image Retrieval with Dual Multi-modal Encoder", by BLIP4CIR+Bi's authors) re-scores the top-K
candidates by encoding the modification text while it cross-attends to each candidate image (beside a
trained branch over the reference). BLIP-2's pretrained ITM head is that candidate-text pairing without
training and without a reference branch: it knows no reference image, so it reads the modification text.

Pixels: a candidate's file is decoded and preprocessed by the feature store's one path
(:func:`zscir.features.loader.prepared_batches` with the backbone's preprocessing, normalised as
:func:`zscir.features.encode.encode_sources` does), so ITM sees the pixels the gallery features came from.

Backbones: those with an ITM head (``itm_scores``): BLIP-2 (:mod:`zscir.backbone.blip2`) and a trained head's
BLIP-2 (:class:`zscir.models.blip2_query.Blip2HeadBackbone`, whose ITM runs through the head's Q-Former
passes). Any other backbone (open_clip) is refused with one line naming the option.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

from zscir.errors import ZscirError
from zscir.features.loader import prepared_batches
from zscir.features.sources import KeyedImage, read_image_file
from zscir.models import prompts

OPTION = "--itm-rerank"


def has_itm_head(backbone) -> bool:
    return callable(getattr(backbone, "itm_scores", None))


def check_backbone(backbone) -> None:
    """One line when ``backbone`` cannot re-rank (it has no ITM head)."""
    if not has_itm_head(backbone):
        raise ZscirError(f"{OPTION}: the backbone {backbone.identity_str} has no image-text matching head; it "
                         "needs a BLIP-2 backbone (--clip blip2:<Hugging Face id or folder>)")


def file_pixels(backbone, files: Sequence[tuple[str, str | None]]) -> torch.Tensor:
    """``pixel_values`` [N, 3, S, S] of (id, file) pairs, decoded and preprocessed as the feature store encodes
    them; a candidate without a file, or one that cannot be read now, is one line."""
    for image_id, path in files:
        if not path:
            raise ZscirError(f"{OPTION}: image {image_id!r} has no file to read (re-ranking needs each "
                             "candidate's pixels)")
    sources = [KeyedImage(image_id, image_id, functools.partial(read_image_file, path, image_id))
               for image_id, path in files]
    batch = next(prepared_batches(sources, backbone.preprocess, max(len(sources), 1), workers=0))
    if batch.errors:
        j, reason = batch.errors[0]
        raise ZscirError(f"{OPTION}: candidate image {files[j][1]} cannot be read ({reason})")
    images = batch.images
    if images.dtype == torch.uint8:      # a Preprocess's pixels: normalised as encode_sources does
        images = backbone.preprocess.normalize(images)
    return images


@dataclass(frozen=True)
class ItmRerank:
    """Re-order the first ``k`` candidates of a ranking by ITM probability (module docstring)."""

    k: int

    def __post_init__(self):
        if int(self.k) < 1:
            raise ZscirError(f"{OPTION}: K must be at least 1 (got {self.k})")

    def describe(self) -> dict:
        """What results record of it, so that re-ranked numbers are never read as first-stage ones."""
        return {"rerank": "itm", "top_k": int(self.k),
                "text": "the query's modification text (mean match probability over its texts)",
                "order": "ITM match probability, highest first; ties in first-stage order; "
                         "positions after top_k as the first stage ranked them"}

    def probabilities(self, backbone, texts: Sequence[str],
                      file_of: Callable[[Hashable], tuple[str, str | None]]) -> Callable[[list], list[float]]:
        """candidates -> their mean ITM probability over ``texts`` (memoised per candidate)."""
        cleaned = [prompts.clean_text(t) for t in texts]
        known: dict[Hashable, float] = {}

        def probs(candidates: list) -> list[float]:
            todo = [c for c in dict.fromkeys(candidates) if c not in known]
            if todo:
                pixels = file_pixels(backbone, [file_of(c) for c in todo])
                mean = torch.stack([backbone.itm_scores(pixels, [t] * len(todo)).float().cpu()
                                    for t in cleaned]).mean(dim=0)
                known.update(zip(todo, mean.tolist()))
            return [known[c] for c in candidates]

        return probs

    def reorder(self, ranking: Sequence, probs: Callable[[list], list[float]]) -> list:
        """``ranking`` (best first) with its first ``k`` re-ordered by ``probs`` (stable: ties keep their order)."""
        top = list(ranking[:self.k])
        if not top:
            return list(ranking)
        p = probs(top)
        order = sorted(range(len(top)), key=lambda i: -p[i])
        return [top[i] for i in order] + list(ranking[self.k:])
