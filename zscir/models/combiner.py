"""A SCOT-style zero-shot Combiner (Jawade et al., "SCOT: Self-Supervised Contrastive Pretraining For
Zero-Shot Compositional Retrieval", WACV 2025).

SCOT trains a composition network on image-caption pairs without target images: a language model
edits each caption, and the frozen CLIP text embedding of the edited caption stands in for the
target image's embedding. The composed query f(image, modification) is pulled to the edited
caption's text embedding and pushed from the other items' edited captions and from the original
captions (the paper's negatives include the original captions; its LLM-written hard negatives
have no counterpart here). The network is CLIP4Cir's Combiner (Baldrati et al.), the one
:mod:`zscir.models.supervised` trains on labelled triplets; here it is trained zero-shot.

The triples come from a pluggable :class:`CaptionEditor` (:data:`EDITORS`): the shapes world's
``WorldCaptionEditor`` (:mod:`zscir.world.plugins_models`) draws an edit of a scene with the world's
own generator (its fine text is the modification, the canonical caption of the edited scene the
edited caption); :class:`FileCaptionEditor` reads a user's JSONL file. An editor's :meth:`record`
goes into the checkpoint's metadata. The training data (one edit per image and epoch) is prepared by
:mod:`zscir.training.scot_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.method import Method, Training
from zscir.models.objective import LossWeights
from zscir.utils.registry import Entries
from zscir.models.supervised import Combiner
from zscir.utils.hashing import sha256_file
from zscir.utils.jsonl import read_jsonl


@dataclass(frozen=True)
class EditTriple:
    caption: str          # the image's caption
    modification: str     # what to change ("make the red circle blue")
    edited_caption: str   # the caption of the image the modification asks for: the training target


class CaptionEditor(Protocol):
    """Gives, for an image, a (caption, modification, edited caption) triple drawn with ``rng``."""

    name: str

    def ids(self) -> list[str]:
        """The images it can edit."""

    def edit(self, image_id: str, rng: np.random.Generator) -> EditTriple:
        ...

    def record(self) -> dict:
        """JSON-serialisable: what produced the triples (stored in the checkpoint's metadata)."""


def edit_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's edit in one epoch: a resumed run draws the same triples."""
    return np.random.default_rng([seed, epoch, index])


class FileCaptionEditor:
    """Triples from a JSONL file, one a line: {"image", "caption", "modification", "edited_caption"}.

    An image may have several lines; :meth:`edit` draws one of them with ``rng``.
    """

    name = "file"
    FIELDS = ("image", "caption", "modification", "edited_caption")

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ZscirError(f"{self.path}: no such caption-edit file (expected JSONL with fields "
                             f"{', '.join(self.FIELDS)})")
        self.rows: dict[str, list[EditTriple]] = {}
        for number, row in read_jsonl(self.path):
            image, triple = self._parse(row, number)
            self.rows.setdefault(image, []).append(triple)
        if not self.rows:
            raise ZscirError(f"{self.path}: no caption edits in the file")
        self.sha256 = sha256_file(self.path)

    def _parse(self, row, number: int) -> tuple[str, EditTriple]:
        where = f"{self.path}:{number}"
        if not isinstance(row, dict):
            raise ZscirError(f"{where}: expected a JSON object with fields {', '.join(self.FIELDS)}")
        for name in self.FIELDS:
            if name not in row:
                raise ZscirError(f"{where}: field {name!r} is missing")
            value = row[name]
            if not isinstance(value, str) or not value.strip():
                raise ZscirError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        unknown = sorted(set(row) - set(self.FIELDS))
        if unknown:
            raise ZscirError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(self.FIELDS)})")
        return row["image"], EditTriple(row["caption"], row["modification"], row["edited_caption"])

    def ids(self) -> list[str]:
        return list(self.rows)

    def edit(self, image_id: str, rng: np.random.Generator) -> EditTriple:
        if image_id not in self.rows:
            raise ZscirError(f"{self.path}: no caption edit for image {image_id!r}")
        options = self.rows[image_id]
        return options[int(rng.integers(len(options)))]

    def record(self) -> dict:
        return {"editor": self.name, "path": str(self.path), "sha256": self.sha256, "num_images": len(self.rows),
                "num_edits": sum(len(v) for v in self.rows.values())}


# caption editors by name -> (source) -> CaptionEditor, by import path: the shapes world's is a plugin above this layer
EDITORS: Entries = Entries({"world": "zscir.world.plugins_models:WorldCaptionEditor.from_world",
                            "file": "zscir.models.combiner:FileCaptionEditor"})


# ---------------------------------------------------------------- the network, its loss, its queries
class ScotCombiner(nn.Module):
    """f(image feature, modification-text feature) -> normalised query feature: CLIP4Cir's Combiner.

    Built by the network factory from the backbone's dims (``token_dim`` and ``vision_width`` are not used).
    """

    method = "scot"

    def __init__(self, embed_dim: int, token_dim: int | None = None, vision_width: int | None = None,
                 projection_mult: int = 4, hidden_mult: int = 8, dropout: float = 0.5):
        super().__init__()
        self.combiner = Combiner(embed_dim, projection_mult, hidden_mult, dropout)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.combiner(image, text)


@dataclass
class ScotWeights:
    temperature: float = 0.01   # logits = cosine / temperature (CLIP4Cir's x100; SCOT's value not confirmed here)


def scot_logits(query: torch.Tensor, edited: torch.Tensor, original: torch.Tensor, edited_texts: list[str],
                original_texts: list[str], temperature: float) -> torch.Tensor:
    """[B, 2B] logits of each query against [edited captions; original captions]; the positive of row i is
    column i. Another column whose text is the same as row i's edited caption (a duplicate, not a negative)
    is masked out."""
    columns = F.normalize(torch.cat([edited, original]), dim=-1)
    logits = F.normalize(query, dim=-1) @ columns.T / temperature
    number: dict[str, int] = {}
    columns_id = torch.tensor([number.setdefault(t, len(number)) for t in [*edited_texts, *original_texts]])
    rows_id = columns_id[:len(edited_texts)]
    same = rows_id.unsqueeze(1) == columns_id.unsqueeze(0)
    same[:, :len(edited_texts)].fill_diagonal_(False)  # the positive itself stays
    return logits.masked_fill(same.to(logits.device), float("-inf"))


def scot_loss(network, backbone, pooled: torch.Tensor, tokens, subjects, attributes, w: ScotWeights,
              gather=None, *, triples: list[EditTriple]):
    """InfoNCE of the composed queries over the batch's edited captions, with the original captions as
    further negatives; the calling style of :mod:`zscir.models.objective` plus the batch field ``triples``
    (one per image). Text features are the frozen backbone's. Single-process (``gather`` unsupported)."""
    if gather is not None:
        raise ZscirError("the SCOT objective gathers no features across processes yet: train it on one process")
    if len(triples) != pooled.shape[0]:
        raise ZscirError(f"SCOT objective: {pooled.shape[0]} images but {len(triples)} caption edits")
    modification = backbone.encode_text([prompts.clean_text(t.modification) for t in triples])
    edited_texts, original_texts = [t.edited_caption for t in triples], [t.caption for t in triples]
    edited, original = backbone.encode_text(edited_texts), backbone.encode_text(original_texts)
    query = network(pooled, modification)
    logits = scot_logits(query, edited, original, edited_texts, original_texts, w.temperature)
    loss = F.cross_entropy(logits, torch.arange(len(triples), device=logits.device))
    return loss, {"contrastive": loss.detach()}


def scot_objective(network, backbone, batch, w, gather=None):
    """:func:`scot_loss` read from a training batch (:mod:`zscir.models.objective`'s signature): ``w.temperature``
    is the logits' temperature, ``batch.extra["triples"]`` the batch's caption edits
    (:func:`zscir.training.scot_data.prepare_training`). One process (``gather`` is not used; ``prepare_training`` refuses more)."""
    return scot_loss(network, backbone, batch.pooled, None, None, None, ScotWeights(w.temperature),
                     triples=batch.extra["triples"])


def compose_scot(backbone, network, ref, texts) -> torch.Tensor:
    """The query: the Combiner of the reference's feature and the modification text's feature."""
    return network(ref.pooled, backbone.encode_text([prompts.clean_text(t) for t in texts]))


METHOD = Method("scot", ScotCombiner, compose_scot, "combiner(image, {text})", "both-orders", "targetpad", False,
                "SCOT-style zero-shot Combiner (Jawade et al., WACV 2025)",
                Training(scot_objective, "scot", "images", LossWeights(temperature=0.01, orth=0.0, reg=0.0),
                         "zscir.training.scot_data:prepare_training", ("edits",)), pseudo_words=False)
