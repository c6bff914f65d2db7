"""Trained BLIP-2 heads (FineCIR as published, FashionBLIP-2; :mod:`zscir.models.blip2_heads`) as query encoders.

A checkpoint of kind ``"supervised-blip2"`` (written by :mod:`zscir.training.supervised_blip2`) is loaded by
``zscir eval --model``, ``zscir retrieve --model``, ``zscir index --model`` and ``zscir serve`` through
:data:`zscir.models.query.CHECKPOINT_KINDS`:

- **backbone**: the BLIP-2 the checkpoint records (``backbone``, its identity; ``backbone_source``, where to
  load it through :func:`zscir.backbone.blip2_loading.load_blip2`), or the one given (``--clip blip2:...``),
  checked against the recorded identity by :func:`zscir.models.query.backbone_for`;
- **gallery rows** (the candidate side): the head's own query features of each image, ``Q`` of them flattened
  as the BLIP-2 layout stores them (:mod:`zscir.backbone.blip2`). A head that trains the Q-Former (FineCIR)
  or adapts it (FashionBLIP-2) gives other rows than the frozen BLIP-2, so the encoder's backbone is a
  :class:`Blip2HeadBackbone` whose identity names the checkpoint (its sha256): the feature store, the
  evaluation cache and an index keep its rows apart from the frozen model's, and an index built with the
  frozen BLIP-2 is refused for the head (and the other way round).
- **query**: the head's composition of the reference image's frozen vision hidden state (``needs_tokens``)
  and the modification text, [B, D];
- **rule**: the head's own score (:data:`HEAD_SCORING`): FineCIR the best query token
  (:class:`~zscir.models.query_tokens.MaxOverQueryTokens`), FashionBLIP-2 its multi-head matching
  (:class:`~zscir.models.query_tokens.MultiHeadMaxOverQueryTokens`).

A head whose weights are BLIP-2's own modules (FineCIR: the Q-Former, embeddings, projections) is loaded
over a copy of the model that shares only the frozen vision encoder, so the given backbone (and every other
model evaluated on it) keeps the frozen weights.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from zscir.backbone.blip2 import QUERY_TOKENS, Blip2Backbone
from zscir.backbone.clip import ImageFeatures
from zscir.checkpoint import load_checkpoint
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.blip2_heads.registry import BLIP2_HEADS, create_blip2_head
from zscir.models.composed import Rule
from zscir.models.query import QueryEncoder, backbone_for
from zscir.models.query_tokens import MaxOverQueryTokens, MultiHeadMaxOverQueryTokens
from zscir.text import get_parser

KIND = "supervised-blip2"
REQUIRED = ("head", "config", "parser", "backbone", "method")


@dataclass(frozen=True)
class HeadScoring:
    """How a BLIP-2 head scores a composed query against a gallery row, and the context of its Q-Former passes."""

    rule: Callable[[object, int], Rule]                  # (head, query tokens) -> the rule
    passes: Callable[[object], ContextManager]          # head -> the context its Q-Former passes run in


# a BLIP-2 head's name (the checkpoint's ``head``) -> its scoring
HEAD_SCORING: dict[str, HeadScoring] = {
    "finecir": HeadScoring(lambda head, q: MaxOverQueryTokens(q), lambda head: nullcontext()),
    "fashionblip2": HeadScoring(lambda head, q: MultiHeadMaxOverQueryTokens(q, int(head.match_heads)),
                                lambda head: head.adapted()),
}


class Blip2HeadBackbone(Blip2Backbone):
    """A trained head's BLIP-2: the frozen vision encoder, and the head's Q-Former for the image rows, the text
    path and ITM. ``frozen``: the BLIP-2 the head was trained on, as loaded."""

    def __init__(self, frozen: Blip2Backbone, head, scoring: HeadScoring, identity: dict):
        super().__init__(head.blip2, frozen.processor, frozen.preprocess, identity, frozen.device,
                         frozen.max_text_length)
        self.frozen, self.head, self.scoring = frozen, head, scoring
        self.source = frozen.source

    @property
    def identity_str(self) -> str:
        return f"{self.identity['model']}@{self.identity['checkpoint_sha256'][:12]}"

    def _itc_image(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, Q, D]: the head's candidate side (its query features over the image), L2-normalised."""
        with torch.no_grad():
            return self.head.candidates(hidden.to(self.cast_dtype)).float()

    def encode_texts(self, texts):
        with self.scoring.passes(self.head):
            return super().encode_texts(texts)

    def itm_scores(self, pixel_values, texts):
        with self.scoring.passes(self.head):
            return super().itm_scores(pixel_values, texts)


class Blip2HeadQuery(QueryEncoder):
    """(reference image's vision hidden state, modification texts) -> the head's composed feature [B, D]."""

    needs_tokens = True

    def __init__(self, backbone: Blip2HeadBackbone, meta: dict, checkpoint_sha: str | None):
        super().__init__(backbone)
        self.head, self.meta, self.checkpoint_sha = backbone.head, meta, checkpoint_sha
        self.name = meta["method"]

    @property
    def rule(self) -> Rule:
        return self.backbone.scoring.rule(self.head, self.backbone.num_query_tokens)

    @property
    def identity(self) -> dict:
        return {**super().identity, "checkpoint_sha256": self.checkpoint_sha, "parser": self.meta["parser"]}

    def _encode(self, ref: ImageFeatures, texts: list[str]) -> torch.Tensor:
        if ref.tokens is None:
            raise ZscirError(f"the {self.name} query encoder needs the reference image's vision hidden state "
                             "(encode_image(..., with_tokens=True))")
        hidden = ref.tokens.to(self.backbone.device, self.backbone.cast_dtype)
        with torch.no_grad():
            return self.head.compose(hidden, [prompts.clean_text(t) for t in texts]).float()

    @classmethod
    def from_checkpoint(cls, path, backbone=None, checkpoint: tuple[dict, dict] | None = None) -> "Blip2HeadQuery":
        state, meta = checkpoint or load_checkpoint(path)
        check_meta(path, meta)
        if isinstance(backbone, Blip2HeadBackbone):   # another head's backbone: the BLIP-2 under it
            backbone = backbone.frozen
        if backbone is None and not meta.get("backbone_source"):
            raise ZscirError(f"{path} does not record where its BLIP-2 is: pass --clip blip2:<Hugging Face id or "
                             "folder>")
        frozen = backbone_for(meta, backbone, path)
        if getattr(frozen, "image_layout", None) != QUERY_TOKENS:
            raise ZscirError(f"{path}: a BLIP-2 head needs its BLIP-2 backbone (--clip blip2:...), "
                             f"not {frozen.identity_str}")
        head = load_head(path, state, meta, frozen)
        sha = meta.get("weights_sha256")
        identity = {**frozen.identity, "model": f"{frozen.identity['model']}+{meta['head']}", "head": meta["head"],
                    "checkpoint_sha256": sha}
        return cls(Blip2HeadBackbone(frozen, head, HEAD_SCORING[meta["head"]], identity), meta, sha)


def check_meta(path, meta: dict) -> None:
    """One line for a sidecar that is not a BLIP-2 head zscir can load."""
    if meta.get("kind") != KIND:
        raise ZscirError(f"{path} is a {meta.get('kind')!r} checkpoint, not a {KIND} head")
    for key in REQUIRED:
        if key not in meta:
            raise ZscirError(f"{path}: the sidecar has no field {key!r} (not written by zscir train-supervised?)")
    if meta["head"] not in BLIP2_HEADS or meta["head"] not in HEAD_SCORING:
        raise ZscirError(f"{path}: unknown BLIP-2 head {meta['head']!r}: expected one of {', '.join(HEAD_SCORING)}")


def load_head(path, state: dict, meta: dict, frozen: Blip2Backbone):
    """The head of ``meta`` with the checkpoint's weights, over ``frozen``'s model, or over a copy of it (sharing
    the frozen vision encoder) when the head's weights are the model's own modules (module doc)."""
    parser = get_parser(meta["parser"])
    model = frozen.model
    with torch.random.fork_rng(devices=[]):   # the initial weights are replaced: leave the caller's RNG as it was
        head = create_blip2_head(meta["config"], model, frozen.tokenizer, parser)
        own = {id(p) for p in model.parameters()}
        if any(id(p) in own for p in head.parameters()):
            model = copy.deepcopy(model, {id(model.vision_model): model.vision_model})
            head = create_blip2_head(meta["config"], model, frozen.tokenizer, parser)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ZscirError(f"{path}: the weights do not fit the head its sidecar describes "
                         f"({' '.join(str(e).split())[:200]})") from None
    return head.to(frozen.device).eval().requires_grad_(False)
