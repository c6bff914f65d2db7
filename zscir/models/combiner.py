"""A SCOT-style zero-shot Combiner (Jawade et al., "SCOT: Self-Supervised Contrastive Pretraining For
Zero-Shot Compositional Retrieval", WACV 2025).

SCOT trains a composition network on image-caption pairs without target images: a language model
edits each caption, and the frozen CLIP text embedding of the edited caption stands in for the
target image's embedding. The composed query f(image, modification) is pulled to the edited
caption's text embedding and pushed from the other items' edited captions and from the original
captions (the paper's negatives include the original captions; its LLM-written hard negatives
have no counterpart here). The network is CLIP4Cir's Combiner (Baldrati et al.), the one
:mod:`zscir.models.supervised` trains on labelled triplets; here it is trained zero-shot.

The triples come from a pluggable :class:`CaptionEditor`: :class:`WorldCaptionEditor` draws an
edit of a shapes-world scene with the world's own generator (its fine text is the modification,
the canonical caption of the edited scene the edited caption); :class:`FileCaptionEditor` reads
a user's JSONL file. An editor's :meth:`record` goes into the checkpoint's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.supervised import Combiner
from zscir.utils.hashing import sha256_file
from zscir.utils.jsonl import read_jsonl

if TYPE_CHECKING:
    from zscir.world.spec import Scene


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


class WorldCaptionEditor:
    """Edits of shapes-world scenes by the world's generator.

    caption: the scene's canonical caption; modification: the fine text of 1-3 sampled edits; edited
    caption: the canonical caption of the edited scene. Edited scenes are drawn until they lie in
    ``part`` of the spec space (the training part by default, so no evaluation spec is ever a target).
    """

    name = "world"
    max_tries = 100

    def __init__(self, scenes: Mapping[str, Scene], part: str = "train", source: str | None = None):
        if part not in ("train", "eval"):
            raise ZscirError(f"world caption editor: part {part!r} must be 'train' or 'eval'")
        if not scenes:
            raise ZscirError("world caption editor: no scenes to edit")
        self.scenes, self.part, self.source = dict(scenes), part, source

    @classmethod
    def from_world(cls, world, split: str = "unlabeled", part: str = "train",
                   key: str = "file") -> "WorldCaptionEditor":
        """The scenes of ``world``'s images in ``split`` (``scenes.jsonl``), keyed by their file name (``key="file"``:
        the ids an image folder source gives, e.g. ``000000000042.png``) or their numeric id (``key="id"``)."""
        from zscir.world.build import file_name, read_scenes
        from zscir.world.spec import Scene

        names = {"file": file_name, "id": str}
        if key not in names:
            raise ZscirError(f"world caption editor: key {key!r} must be one of {', '.join(names)}")
        rows = read_scenes(world)
        scenes = {names[key](i): Scene.from_json(r) for i, r in rows.items() if r["split"] == split}
        if not scenes:
            raise ZscirError(f"shapes world {world}: no images in split {split!r}")
        return cls(scenes, part, source=str(world))

    def ids(self) -> list[str]:
        return list(self.scenes)

    def edit(self, image_id: str, rng: np.random.Generator) -> EditTriple:
        from zscir.world.captions import canonical_caption
        from zscir.world.edits import apply_edits, sample_edits
        from zscir.world.spec import spec_part
        from zscir.world.texts import fine_text

        if image_id not in self.scenes:
            raise ZscirError(f"world caption editor: no scene for image {image_id!r}")
        scene = self.scenes[image_id]
        for _ in range(self.max_tries):
            edits = sample_edits(scene, rng)
            if not edits:
                continue
            target = apply_edits(scene, edits)
            if spec_part(target) == self.part:
                return EditTriple(canonical_caption(scene).text, fine_text(scene, edits, rng),
                                  canonical_caption(target).text)
        raise ZscirError(f"world caption editor: no edit of image {image_id!r} lands in the {self.part!r} part "
                         f"of the spec space in {self.max_tries} draws")

    def record(self) -> dict:
        from zscir.world.build import GENERATOR_VERSION

        return {"editor": self.name, "world": self.source, "generator_version": GENERATOR_VERSION,
                "part": self.part, "num_images": len(self.scenes), "caption": "canonical",
                "modification": "fine text", "edited_caption": "canonical caption of the edited scene"}


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


EDITORS = {"world": WorldCaptionEditor.from_world, "file": FileCaptionEditor}


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
    is the logits' temperature, ``batch.extra["triples"]`` the batch's caption edits (:func:`prepare_training`).
    One process (``gather`` is not used; :func:`prepare_training` refuses more)."""
    return scot_loss(network, backbone, batch.pooled, None, None, None, ScotWeights(w.temperature),
                     triples=batch.extra["triples"])


def training_editor(edits, world) -> CaptionEditor:
    """The user's caption-edit file, or the shapes world's generator when training on the world."""
    if edits:
        return FileCaptionEditor(edits)
    if world is None:
        raise ZscirError("--method scot on your own images needs --edits FILE (JSONL: image, caption, modification, "
                         "edited_caption): the caption editor of your data")
    return WorldCaptionEditor.from_world(world)


def prepare_training(cfg, data, backbone, world, cache_root, accelerator, log=print):
    """SCOT's training data: the images the editor can edit, each batch with one edit per image drawn for its
    epoch (:func:`edit_rng` of the run's seed, the epoch and the image), so a resumed run draws the same."""
    from zscir.training.pretrain_data import ExtendedSet

    if accelerator.num_processes > 1:
        raise ZscirError(f"--method scot trains on one process ({accelerator.num_processes} were started): "
                         "its loss gathers no features across processes yet")
    editor = training_editor(cfg.edits, world)
    known = set(editor.ids())
    rows = np.array([i for i, item in enumerate(data.ids) if item in known], dtype=np.int64)
    if len(rows) == 0:
        raise ZscirError(f"--edits {cfg.edits}: edits none of the {len(data)} training images (ids such as "
                         f"{data.ids[0]!r})" if cfg.edits else "the world caption editor knows none of the images")
    if len(rows) < len(data):
        log(f"{len(data) - len(rows)} of {len(data)} training images have no caption edit and are left out")
    record = {"editor": editor.record(), "edited_images": int(len(rows)), "images_without_edit": len(data) - len(rows)}

    def extra(base_rows: np.ndarray, epoch: int) -> dict:
        return {"triples": [editor.edit(data.ids[r], edit_rng(cfg.seed, epoch, int(r))) for r in base_rows]}

    return ExtendedSet(data, rows, extra, record)


def compose_scot(backbone, network, ref, texts) -> torch.Tensor:
    """The query: the Combiner of the reference's feature and the modification text's feature."""
    return network(ref.pooled, backbone.encode_text([prompts.clean_text(t) for t in texts]))
