"""Supervised composition heads on frozen CLIP features, trained on (reference, text, target) triplets.

- :class:`Combiner` is CLIP4Cir's (Baldrati et al.): the text and the image
  feature each pass Linear -> ReLU -> dropout; the two are concatenated and
  mapped (Linear -> ReLU -> dropout -> Linear) to a residual in the joint
  space, and a scalar gate lambda from the same concatenation mixes in the
  inputs: ``normalize(residual + lambda * text + (1 - lambda) * image)``.
- :class:`FineCIRHead` (head ``"finecir-clip"``; checkpoints written before the
  rename say ``"finecir"`` and load as ``"finecir-clip"``, :data:`LEGACY_HEADS`)
  adds a FineCIR-*style* entity-guided composition (Li et al., 2025) on the
  same frozen CLIP -- FineCIR as published, on BLIP-2, is head ``"finecir"`` in
  :mod:`zscir.models.blip2_heads`: each entity the parser finds in the text
  ("the large red circle") is encoded by the CLIP text encoder, attends over
  the reference image's patch tokens to pick up what that entity looks like
  there, and the attended entity features enter the composition as a third
  input next to text and image.

Patch tokens: the backbone gives the last block's outputs before ``ln_post``
(:class:`~zscir.backbone.ImageFeatures`); :func:`project_patches` applies the
frozen ``ln_post`` and ``proj`` of the backbone to the patches (CLS left
out), so patches, entity phrases and the pooled image feature all live in
CLIP's joint space, where a phrase and the patches of what it names already
tend to be close; the attention's own projections are learned on top.

Checkpoints are ``kind: "supervised"`` (an entry of :data:`zscir.models.query.CHECKPOINT_KINDS`),
loaded by ``zscir eval --model`` and ``zscir retrieve --model``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zscir.backbone import Backbone, ImageFeatures
from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.query import QueryEncoder, backbone_for
from zscir.text import get_parser

DEFAULT_CONFIG: dict[str, Any] = {
    "projection_mult": 4,      # projection width = 4 x embed_dim (CLIP4Cir: 2,560 for RN50x4's 640)
    "hidden_mult": 8,          # hidden width = 8 x embed_dim (CLIP4Cir: 5,120)
    "dropout": 0.5,
    "max_entities": 6,         # entities per text kept for the FineCIR-style head (first named first)
    "attention_heads": 4,
    "attention_dropout": 0.1,
}


def head_config(head: str, overrides: dict | None = None) -> dict[str, Any]:
    if head not in HEADS:
        raise ZscirError(f"unknown supervised head {head!r}: expected one of {', '.join(HEADS)}")
    cfg = {"head": head, **DEFAULT_CONFIG}
    for k, v in (overrides or {}).items():
        if v is not None:
            if k not in cfg:
                raise ZscirError(f"unknown head option {k!r}: expected one of {', '.join(DEFAULT_CONFIG)}")
            cfg[k] = v
    return cfg


def _mlp_in(dim_in: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Dropout(dropout))


class Combiner(nn.Module):
    """CLIP4Cir's Combiner. Inputs are L2-normalised first so that one config serves every backbone."""

    uses_entities = False

    def __init__(self, embed_dim: int, projection_mult: int = 4, hidden_mult: int = 8, dropout: float = 0.5,
                 num_inputs: int = 2, **_unused):
        super().__init__()
        proj, hidden = projection_mult * embed_dim, hidden_mult * embed_dim
        self.text_projection = _mlp_in(embed_dim, proj, dropout)
        self.image_projection = _mlp_in(embed_dim, proj, dropout)
        self.combiner = nn.Sequential(nn.Linear(num_inputs * proj, hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, embed_dim))
        self.gate = nn.Sequential(nn.Linear(num_inputs * proj, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 1), nn.Sigmoid())

    def compose(self, image: torch.Tensor, text: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        joint = torch.cat([self.text_projection(text), self.image_projection(image), *extra], dim=-1)
        lam = self.gate(joint)
        return F.normalize(self.combiner(joint) + lam * text + (1 - lam) * image, dim=-1)

    def forward(self, image, text, entities=None, entity_mask=None, patches=None) -> torch.Tensor:
        return self.compose(image, text, [])


class EntityGrounding(nn.Module):
    """Entity phrase features [B, K, D] attend over patch features [B, P, D] -> grounded entities [B, K, D]."""

    def __init__(self, embed_dim: int, heads: int, dropout: float):
        super().__init__()
        heads = heads if embed_dim % heads == 0 else 1
        self.attention = nn.MultiheadAttention(embed_dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim))
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, entities: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(entities, patches, patches, need_weights=False)
        x = self.norm1(entities + attended)
        return self.norm2(x + self.mlp(x))


class FineCIRHead(Combiner):
    """The Combiner with a third input: the mean of the entities grounded in the reference image."""

    uses_entities = True

    def __init__(self, embed_dim: int, projection_mult: int = 4, hidden_mult: int = 8, dropout: float = 0.5,
                 attention_heads: int = 4, attention_dropout: float = 0.1, **_unused):
        super().__init__(embed_dim, projection_mult, hidden_mult, dropout, num_inputs=3)
        self.grounding = EntityGrounding(embed_dim, attention_heads, attention_dropout)
        self.entity_projection = _mlp_in(embed_dim, projection_mult * embed_dim, dropout)

    def forward(self, image, text, entities=None, entity_mask=None, patches=None) -> torch.Tensor:
        if entities is None or entity_mask is None or patches is None:
            raise ZscirError("the FineCIR-style head needs entity features and reference patch tokens")
        grounded = self.grounding(F.normalize(entities, dim=-1), F.normalize(patches, dim=-1))
        projected = self.entity_projection(grounded)                       # [B, K, proj]
        weights = entity_mask.to(projected.dtype).unsqueeze(-1)
        pooled = (projected * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # a text without entities: zeros
        return self.compose(image, text, [pooled])


HEADS: dict[str, type[Combiner]] = {"combiner": Combiner, "finecir-clip": FineCIRHead}

# head names of older checkpoints -> their name now: "finecir" was the CLIP head until FineCIR as published
# (on BLIP-2, zscir.models.blip2_heads) took the name; a kind "supervised" checkpoint is always a CLIP head
LEGACY_HEADS: dict[str, str] = {"finecir": "finecir-clip"}


def create_head(config: dict[str, Any], embed_dim: int) -> Combiner:
    cfg = dict(config)
    return HEADS[cfg.pop("head")](embed_dim, **cfg)


# ---------------------------------------------------------------- inputs from the frozen backbone
@torch.no_grad()
def project_patches(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """[B, 1+P, width] pre-``ln_post`` tokens -> [B, P, D] patch features in the joint space (frozen ln_post, proj)."""
    visual = backbone.model.visual
    x = tokens[:, 1:].to(backbone.device, torch.float32)
    x = visual.ln_post(x)
    if getattr(visual, "proj", None) is not None:
        x = x @ visual.proj.float()
    return x


def entity_phrases(parsed, max_entities: int) -> list[str]:
    return [e.phrase for e in parsed.entities][:max_entities]


@torch.no_grad()
def encode_phrases(backbone: Backbone, phrases: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, D] normalised CLIP text features of ``phrases``."""
    if not phrases:
        return torch.zeros(0, backbone.embed_dim)
    out = [backbone.encode_text(phrases[i:i + batch_size]).float().cpu() for i in range(0, len(phrases), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


def pack_entities(phrase_lists: list[list[str]], features: dict[str, torch.Tensor], dim: int,
                  max_entities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per text its phrases' features, padded: ([B, K, D], mask [B, K]); K >= 1."""
    k = max(1, min(max_entities, max((len(p) for p in phrase_lists), default=0)))
    feats = torch.zeros(len(phrase_lists), k, dim)
    mask = torch.zeros(len(phrase_lists), k, dtype=torch.bool)
    for b, phrases in enumerate(phrase_lists):
        for j, phrase in enumerate(phrases[:k]):
            feats[b, j] = features[phrase]
            mask[b, j] = True
    return feats, mask


# ---------------------------------------------------------------- checkpoints and the query encoder
def save_supervised_checkpoint(path, head: Combiner, config: dict[str, Any], backbone: Backbone, parser: str,
                               extra: dict | None = None):
    meta = {"kind": "supervised", "method": f"supervised-{config['head']}", "head": config["head"],
            "config": config, "embed_dim": backbone.embed_dim, "parser": parser, "backbone": backbone.identity,
            "backbone_source": getattr(backbone, "source", None), "preprocess": backbone.preprocess_name,
            **(extra or {})}
    return save_checkpoint(path, head.state_dict(), meta)


def load_supervised_checkpoint(path, checkpoint: tuple[dict, dict] | None = None) -> tuple[Combiner, dict[str, Any]]:
    state, meta = checkpoint or load_checkpoint(path)  # ``checkpoint``: its (state, meta) when already read
    if meta.get("kind") != "supervised":
        raise ZscirError(f"{path} is a {meta.get('kind')!r} checkpoint, not a supervised head")
    for key in ("config", "embed_dim", "parser", "backbone"):
        if key not in meta:
            raise ZscirError(f"{path}: the sidecar has no field {key!r} (not written by zscir train-supervised?)")
    head_name = meta["config"].get("head")
    if head_name in LEGACY_HEADS:
        meta = {**meta, "head": LEGACY_HEADS[head_name], "head_renamed_from": head_name,
                "config": {**meta["config"], "head": LEGACY_HEADS[head_name]}}
    head = create_head(meta["config"], meta["embed_dim"])
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ZscirError(f"{path}: the weights do not fit the head its sidecar describes ({e})") from None
    return head.eval(), meta


class SupervisedQuery(QueryEncoder):
    """(reference features, texts) -> the head's composed feature."""

    def __init__(self, backbone: Backbone, head: Combiner, meta: dict, checkpoint_sha: str | None = None):
        super().__init__(backbone)
        self.head = head.eval().to(backbone.device)
        self.meta, self.checkpoint_sha = meta, checkpoint_sha
        self.name = meta["method"]
        self.needs_tokens = head.uses_entities
        self.parser = get_parser(meta["parser"]) if head.uses_entities else None
        self.max_entities = int(meta["config"].get("max_entities", DEFAULT_CONFIG["max_entities"]))

    @property
    def identity(self) -> dict:
        return {**super().identity, "checkpoint_sha256": self.checkpoint_sha, "parser": self.meta["parser"]}

    def _encode(self, ref: ImageFeatures, texts: list[str]) -> torch.Tensor:
        bb = self.backbone
        text = bb.encode_text([prompts.clean_text(t) for t in texts]).float()
        if not self.head.uses_entities:
            return self.head(ref.pooled, text)
        if ref.tokens is None:
            raise ZscirError("the FineCIR-style head needs reference-image tokens (encode_image(..., with_tokens=True))")
        phrase_lists = [entity_phrases(self.parser.parse(t), self.max_entities) for t in texts]
        unique = sorted({p for ps in phrase_lists for p in ps})
        features = dict(zip(unique, encode_phrases(bb, unique)))
        entities, mask = pack_entities(phrase_lists, features, bb.embed_dim, self.max_entities)
        patches = project_patches(bb, ref.tokens)
        return self.head(ref.pooled, text, entities.to(bb.device), mask.to(bb.device), patches)

    @classmethod
    def from_checkpoint(cls, path, backbone: Backbone | None,
                        checkpoint: tuple[dict, dict] | None = None) -> "SupervisedQuery":
        head, meta = load_supervised_checkpoint(path, checkpoint)
        backbone = backbone_for(meta, backbone, path)
        return cls(backbone, head, meta, meta.get("weights_sha256"))
