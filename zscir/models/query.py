"""Query encoders: (reference image features, modification texts) -> normalised query features.

Shared by evaluation and retrieval. Training-free baselines are selected by
name (:data:`BASELINES`); trained models by checkpoint path, dispatched on the
checkpoint's ``kind`` through :data:`CHECKPOINT_KINDS`. Both registries name
their entries by import path, so each encoder lives in its own module
(SEARLE-XL-OTI in :mod:`zscir.models.oti`, supervised heads in
:mod:`zscir.models.supervised`) and is imported on first use.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.backbone import Backbone, ImageFeatures, load_backbone, make_preprocess
from zscir.backbone.loading import resolve_portable_path
from zscir.checkpoint import load_checkpoint
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.composed import COSINE, QueryItem, Rule, SplitContext, Vectors, one_vector
from zscir.models.factory import load_mapping_checkpoint
from zscir.models.methods import get_method
from zscir.models.query_tokens import layout_rule
from zscir.utils.registry import Entries


class QueryEncoder:
    """The one query interface (:mod:`zscir.models.composed`): :meth:`encode_items` gives named query vectors,
    :attr:`rule` scores them against gallery columns. This class is its one-vector case (``{"query": q}``,
    :data:`~zscir.models.composed.COSINE`): the normalised mean of the query texts' features."""

    needs_tokens = False
    fiq_captions = "both-orders"   # FashionIQ caption rule (zscir.evaluation.protocol.FIQ_RULES)
    rule: Rule = COSINE

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @property
    def identity(self) -> dict:
        return {"method": self.name, "backbone": self.backbone.identity, "preprocess": self.backbone.preprocess_name}

    @classmethod
    def from_spec(cls, backbone: Backbone, options: str):
        """The encoder named by ``--model NAME[:OPTIONS]`` (training-free encoders take no options by default)."""
        if options:
            raise ZscirError(f"--model {cls.name}: takes no options after ':' (got {options!r})")
        return cls(backbone)

    @torch.no_grad()
    def encode_queries(self, ref: ImageFeatures, texts: list[str]) -> torch.Tensor:
        if len(ref) != len(texts):
            raise ZscirError(f"{len(ref)} reference images but {len(texts)} modification texts")
        return F.normalize(self._encode(ref.to(self.backbone.device, torch.float32), list(texts)), dim=-1)

    def _encode(self, ref: ImageFeatures, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, context: SplitContext) -> None:
        """Read what the split brings (generation style, generations); the one-vector encoders need nothing."""

    def protocol(self) -> dict:
        """What the protocol card records of this encoder beyond its identity (generations, prompts): none here."""
        return {}

    def gallery_column(self, name: str, images) -> torch.Tensor:
        """[G, D] normalised features of a gallery column other than the image features (none here)."""
        raise ZscirError(f"the {self.name} query encoder has no gallery column {name!r}")

    def encode_items(self, ref: ImageFeatures, items: list[QueryItem]) -> Vectors:
        """The one-vector case (:func:`~zscir.models.composed.one_vector`)."""
        return one_vector(self, ref, items)


class Baseline(QueryEncoder):
    """The image / text / sum baselines: scored by the rule of the backbone's image layout
    (:mod:`zscir.models.query_tokens`: cosine for CLIP, max over query tokens for BLIP-2)."""

    @property
    def rule(self) -> Rule:
        return layout_rule(self.backbone)


class ImageOnly(Baseline):
    name = "image"

    def _encode(self, ref, texts):
        return self.backbone.image_query(ref)


class TextOnly(Baseline):
    name = "text"

    def _encode(self, ref, texts):
        return self.backbone.encode_text([prompts.clean_text(t) for t in texts])


class ImageTextSum(Baseline):
    name = "sum"

    def _encode(self, ref, texts):
        text = self.backbone.encode_text([prompts.clean_text(t) for t in texts])
        return F.normalize(self.backbone.image_query(ref), dim=-1) + F.normalize(text, dim=-1)


class PseudoWordQuery(QueryEncoder):
    """A mapping network's pseudo-words in its method's query prompt (:data:`zscir.models.methods.METHODS`):
    FTI4CIR "a photo of * with * ... but {text}", SEARLE / LinCIR "a photo of $ that {text}", ..."""

    def __init__(self, backbone: Backbone, network, meta: dict, checkpoint_sha: str | None = None):
        super().__init__(backbone)
        self.network = network.eval().to(backbone.device)
        self.meta, self.checkpoint_sha = meta, checkpoint_sha
        self.name = meta["method"]
        self.method = get_method(self.name)
        self.needs_tokens = self.method.needs_tokens
        self.fiq_captions = meta.get("query", {}).get("fiq_captions", self.method.fiq_captions)

    @property
    def identity(self) -> dict:
        return {**super().identity, "checkpoint_sha256": self.checkpoint_sha}

    def _encode(self, ref, texts):
        if self.needs_tokens and ref.tokens is None:
            raise ZscirError(f"the {self.name} query encoder needs reference-image tokens "
                             "(encode_image(..., with_tokens=True))")
        return self.method.compose(self.backbone, self.network, ref, texts)

    @classmethod
    def from_checkpoint(cls, path, backbone: Backbone | None, checkpoint: tuple[dict, dict] | None = None):
        network, meta = load_mapping_checkpoint(path, checkpoint)
        backbone = backbone_for(meta, backbone, path)
        license_note = meta.get("source", {}).get("license_note")
        if license_note:
            warnings.warn(f"{Path(path).name}: {license_note}", stacklevel=2)
        return cls(backbone, network, meta, meta.get("weights_sha256"))


# the training-free encoders, by --model NAME[:OPTIONS]: name -> QueryEncoder class
BASELINES: Entries = Entries({
    "image": "zscir.models.query:ImageOnly",
    "text": "zscir.models.query:TextOnly",
    "sum": "zscir.models.query:ImageTextSum",
    "searle-xl-oti": "zscir.models.oti:OTIQuery",
    "cirevl": "zscir.models.training_free.methods:CIReVLQuery",
    "ldre": "zscir.models.training_free.methods:LDREQuery",
    "seize": "zscir.models.training_free.methods:SEIZEQuery",
    "cvsi": "zscir.models.training_free.cvsi:CVSIQuery",
})
# a checkpoint's sidecar ``kind`` -> (path, backbone or None) -> its QueryEncoder
CHECKPOINT_KINDS: Entries = Entries({
    "mapping": "zscir.models.query:PseudoWordQuery.from_checkpoint",
    "supervised": "zscir.models.supervised:SupervisedQuery.from_checkpoint",
    "supervised-blip2": "zscir.models.blip2_query:Blip2HeadQuery.from_checkpoint",
})


def backbone_for(meta: dict, backbone: Backbone | None, path) -> Backbone:
    """The backbone a checkpoint was trained on: check the given one, or load the recorded source."""
    if backbone is None:
        source = meta.get("backbone_source")
        if not source:
            raise ZscirError(f"{path} does not record where its backbone's weights are: pass --clip and --pretrained")
        backbone = load_backbone(source["name"], resolve_portable_path(source["pretrained"]),
                                 preprocess=meta.get("preprocess", "targetpad"))
    if backbone.identity != meta["backbone"]:
        raise ZscirError(f"{path} was trained on backbone {meta['backbone']} but the given backbone is "
                         f"{backbone.identity}: pass the matching --clip/--pretrained")
    return with_preprocess(backbone, meta.get("preprocess"))


def with_preprocess(backbone: Backbone, name: str | None) -> Backbone:
    """``backbone`` with the named preprocessing: itself when it already has it, else a shallow copy
    (same frozen model) so that other models sharing the backbone keep theirs."""
    if not name or backbone.preprocess_name == name:
        return backbone
    p = backbone.preprocess
    twin = copy.copy(backbone)
    twin.preprocess = make_preprocess(name, p.size, p.mean, p.std)
    return twin


def training_free(model: str) -> str | None:
    """The name of the training-free encoder ``model`` names (``sum``, ``searle-xl-oti:V.txt,P.txt``), else None."""
    name = model.partition(":")[0]
    return name if name in BASELINES else None


def read_query_checkpoint(model: str) -> tuple[dict, dict]:
    """A checkpoint's (state, meta), read once (weights checked against the sidecar), for :func:`load_query_encoder`."""
    if not Path(model).with_suffix(".json").is_file() and not Path(model).is_file():
        raise ZscirError(f"--model {model!r} is neither a baseline ({', '.join(BASELINES)}) nor a checkpoint file")
    return load_checkpoint(model)


def load_query_encoder(model: str, backbone: Backbone | None = None,
                       checkpoint: tuple[dict, dict] | None = None) -> QueryEncoder:
    """``model``: a training-free encoder (image, text, sum, searle-xl-oti[:OPTIONS]) or a zscir checkpoint path.

    ``checkpoint``: the checkpoint's (state, meta) when already read (:func:`read_query_checkpoint`); else read here.
    """
    name = training_free(model)
    if name is not None:
        if backbone is None:
            raise ZscirError(f"the {name!r} baseline needs a backbone (--clip NAME --pretrained TAG|FILE)")
        return BASELINES[name].from_spec(backbone, model.partition(":")[2])
    checkpoint = checkpoint or read_query_checkpoint(model)
    kind = checkpoint[1].get("kind")
    if kind not in CHECKPOINT_KINDS:
        raise ZscirError(f"{model}: unknown checkpoint kind {kind!r}")
    return CHECKPOINT_KINDS[kind](model, backbone, checkpoint)
