"""The shapes world's plugins for the models layer: what models and training reach by import path.

- :func:`concept_phrases`: SEARLE's concept vocabulary and phrases from the world's words
  (:data:`zscir.models.concepts.VOCABULARIES` ``"shapes"``);
- :func:`world_vocabulary` and :func:`world_caption`: `zscir explain`'s ``--vocab world`` and the true
  caption of a world image (:data:`zscir.models.explain.VOCABULARIES`, :data:`zscir.models.explain.TRUE_CAPTIONS`);
- :class:`WorldCaptionEditor`: SCOT's caption editor on world scenes (:data:`zscir.models.combiner.EDITORS` ``"world"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from zscir.errors import ZscirError
from zscir.models.combiner import EditTriple
from zscir.models.concepts import SLOT, ConceptPhrases
from zscir.world import captions, spec, texts
from zscir.world.build import GENERATOR_VERSION, file_name, read_scenes
from zscir.world.captions import PATTERN_WORDS, POSITION_WORDS, SIZE_WORDS, canonical_caption
from zscir.world.edits import apply_edits, sample_edits
from zscir.world.spec import BACKGROUNDS, CELLS, COLORS, PATTERNS, SHAPES, SIZES, Scene, spec_part
from zscir.world.texts import fine_text


def concept_phrases() -> ConceptPhrases:
    """The shapes world: its shape nouns as concepts, phrases from its other attributes' canonical words."""
    phrases = ([f"a {c} {SLOT}" for c in COLORS] + [f"a {SIZE_WORDS[s][0]} {SLOT}" for s in SIZES]
               + [f"a {PATTERN_WORDS[p][0]} {SLOT}" for p in PATTERNS]
               + [f"a {SLOT} {POSITION_WORDS[c][0]}" for c in CELLS]
               + [f"a {SLOT} on a {b} background" for b in BACKGROUNDS])
    return ConceptPhrases(SHAPES, tuple(phrases), {"kind": "world", "vocabulary": "shapes world: shape nouns",
                                                    "phrases": "shapes world: colors, sizes, patterns, positions, "
                                                               "backgrounds (canonical words)"})


def world_vocabulary(backbone) -> list[int]:
    """Token ids of every word the shapes world's captions and texts use (shapes, colours, sizes, ...)."""
    phrases = [*spec.SHAPES, *spec.COLORS, *spec.BACKGROUNDS, *spec.PATTERNS,
               *(w for ws in captions.SIZE_WORDS.values() for w in ws),
               *(w for ws in captions.PATTERN_WORDS.values() for w in ws if w),
               *(w for ws in texts.NEW_SIZE_WORDS.values() for w in ws),
               *(w for ws in captions.POSITION_WORDS for w in ws)]
    return sorted({t for p in phrases for t in backbone.tokenizer.encode(p)})


def world_caption(image_path: str | os.PathLike) -> dict | None:
    """The true canonical caption of a shapes-world image (found by its world's scenes.jsonl), else None."""
    path = Path(image_path).resolve()
    try:
        image_id = int(path.stem)
    except ValueError:
        return None
    for folder in path.parents:
        if (folder / "world.json").is_file() and (folder / "scenes.jsonl").is_file():
            row = read_scenes(folder).get(image_id)
            if row is None:
                return None
            return {"world": str(folder), "image_id": image_id,
                    **canonical_caption(Scene.from_json(row)).to_json()}
    return None


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
        return {"editor": self.name, "world": self.source, "generator_version": GENERATOR_VERSION,
                "part": self.part, "num_images": len(self.scenes), "caption": "canonical",
                "modification": "fine text", "edited_caption": "canonical caption of the edited scene"}
