"""What the world's captioner and editor learn from, and how their outputs are scored.

Training data comes from the world's *unlabeled* images only (``unlabeled/images`` and
``unlabeled/captions.jsonl``; never a split's triplets, galleries or annotations):

- captioner: each unlabeled image with its caption in canonical wording
  (:func:`zscir.world.captions.canonical_caption` of the image's scene, the same facts as
  the caption in ``captions.jsonl`` in one fixed wording, so that exact match means
  something and the editor reads what the captioner writes);
- editor: each unlabeled scene's canonical caption, an instruction the world's own edit
  generator writes for it (fine or coarse, :mod:`zscir.world.texts`) and the canonical
  caption of the edited scene, as SCOT's LLM edits web captions. Edits whose result
  leaves the training part of the spec space are redrawn, so neither side of an example
  is an evaluation scene and no example is a triplet of any split.

Held-out evaluation uses distinct scenes from the *evaluation* part of the spec space
(:func:`zscir.world.eval_backbone.heldout_scenes`), never seen in training.

Scoring reads a generated caption back into a scene with :func:`parse_caption` (the
canonical wording only: anything else does not parse and scores as wrong).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zscir.errors import ZscirError
from zscir.utils.jsonl import read_jsonl
from zscir.world.build import CAPTIONS, UNLABELED_DIR
from zscir.world.captions import PATTERN_WORDS, POSITION_WORDS, SIZE_WORDS, canonical_caption
from zscir.world.edits import coarse_edits, sample_edits, apply_edits
from zscir.world.matching import coarse_templates, satisfies
from zscir.world.spec import BACKGROUNDS, COLORS, SHAPES, Obj, Scene, spec_part
from zscir.world.texts import coarse_text, fine_text

STYLES = ("fine", "coarse")
# scored attributes: name -> how to read it from an object (count and background are scene-level)
OBJECT_ATTRIBUTES = {"color": "color", "shape": "shape", "size": "size", "position": "cell", "pattern": "pattern"}


@dataclass(frozen=True)
class UnlabeledImage:
    id: int
    path: Path
    scene: Scene


def unlabeled_images(world: str | Path) -> list[UnlabeledImage]:
    """The world's unlabeled images, each with its scene (from ``scenes.jsonl``), in caption-file order."""
    world = Path(world)
    captions, scenes_file = world / CAPTIONS, world / "scenes.jsonl"
    for path in (captions, scenes_file):
        if not path.is_file():
            raise ZscirError(f"--world {world}: {path.relative_to(world)} is missing (expected a shapes world "
                             "written by `zscir world generate`)")
    scenes = {int(r["id"]): Scene.from_json(r) for _, r in read_jsonl(scenes_file) if r.get("split") == "unlabeled"}
    out = []
    for _, row in read_jsonl(captions):
        image_id = int(row["id"])
        if image_id not in scenes:
            raise ZscirError(f"{captions}: image id {image_id} has no unlabeled scene in scenes.jsonl")
        out.append(UnlabeledImage(image_id, world / UNLABELED_DIR / row["file"], scenes[image_id]))
    if not out:
        raise ZscirError(f"{captions}: no unlabeled images to train on")
    return out


# --- reading a canonical caption back ---------------------------------------------------------------

_SIZES = {words[0]: size for size, words in SIZE_WORDS.items()}
_PATTERNS = {words[0]: pattern for pattern, words in PATTERN_WORDS.items()}
_POSITIONS = {words[0]: cell for cell, words in enumerate(POSITION_WORDS)}
_OBJECT = re.compile(r"a (\w+) (\w+) (\w+) (\w+) (.+)")
_SCENE = re.compile(r"(.+) on a (\w+) background")


def _parse_object(text: str) -> Optional[Obj]:
    m = _OBJECT.fullmatch(text)
    if not m:
        return None
    size, color, pattern, shape, position = m.groups()
    if (size not in _SIZES or color not in COLORS or pattern not in _PATTERNS or shape not in SHAPES
            or position not in _POSITIONS):
        return None
    return Obj(cell=_POSITIONS[position], shape=shape, color=color, size=_SIZES[size], pattern=_PATTERNS[pattern])


def parse_objects(text: str) -> Optional[tuple[list[Obj], str]]:
    """(objects in caption order, background) of a canonical caption; None if it is not one."""
    m = _SCENE.fullmatch(text.strip())
    if not m or m.group(2) not in BACKGROUNDS:
        return None
    listing, background = m.groups()
    head, sep, last = listing.rpartition(" and ")
    parts = (head.split(", ") + [last]) if sep else [listing]
    objects = [_parse_object(p) for p in parts]
    if any(o is None for o in objects):
        return None
    return objects, background


def parse_caption(text: str) -> Optional[Scene]:
    """The scene a canonical caption describes (None: not canonical wording, or not a valid scene)."""
    parsed = parse_objects(text)
    if parsed is None:
        return None
    try:
        return Scene(parsed[1], tuple(parsed[0]))
    except ZscirError:  # two objects in one cell, or too many
        return None


def caption_scores(truths: Sequence[Scene], predictions: Sequence[str]) -> dict:
    """Exact match and per-attribute accuracy of predicted captions against true scenes.

    Objects are paired in caption order (the canonical order is by cell); an attribute is
    right for a true object when the prediction has an object at that rank with the same
    value. ``count``: the prediction lists as many objects; ``background`` likewise; an
    unparsable prediction is wrong on everything.
    """
    right = {k: 0 for k in ("exact", "count", "background", *OBJECT_ATTRIBUTES)}
    objects = parsed_total = 0
    for truth, text in zip(truths, predictions):
        parsed = parse_objects(text)
        objects += len(truth.objects)
        right["exact"] += text.strip() == canonical_caption(truth).text
        if parsed is None:
            continue
        parsed_total += 1
        predicted, background = parsed
        right["count"] += len(predicted) == len(truth.objects)
        right["background"] += background == truth.background
        for true_obj, pred_obj in zip(truth.objects, predicted):
            for name, field in OBJECT_ATTRIBUTES.items():
                right[name] += getattr(true_obj, field) == getattr(pred_obj, field)
    n = max(1, len(truths))
    scores = {k: round(v / (objects if k in OBJECT_ATTRIBUTES else n), 4) for k, v in right.items()}
    return {"scenes": len(truths), "parsed": round(parsed_total / n, 4), **scores}


# --- edits ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EditExample:
    caption: str        # canonical caption of the scene
    instruction: str    # fine or coarse text from the world's generator
    edited: str         # canonical caption of the scene after the (fine) edits
    style: str
    kinds: tuple[str, ...]
    scene: Scene
    coarse: tuple = ()  # the coarse edits (coarse style), for scoring a different but valid reading


def sample_edit_example(scene: Scene, style: str, rng: np.random.Generator, part: str = "train",
                        tries: int = 30) -> Optional[EditExample]:
    """One instruction for ``scene`` in ``style`` whose edited scene stays in ``part`` of the spec space."""
    for _ in range(tries):
        edits = sample_edits(scene, rng)
        if not edits:
            return None
        target = apply_edits(scene, edits)
        if spec_part(target) != part:
            continue
        kinds = tuple(e["kind"] for e in edits)
        if style == "fine":
            return EditExample(canonical_caption(scene).text, fine_text(scene, edits, rng),
                               canonical_caption(target).text, style, kinds, scene)
        coarse = coarse_edits(scene, edits, rng)
        return EditExample(canonical_caption(scene).text, coarse_text(coarse, rng), canonical_caption(target).text,
                           style, kinds, scene, tuple(coarse))
    return None


def edit_examples(scenes: Sequence[Scene], seed: int, per_scene: int, styles: Sequence[str] = STYLES,
                  part: str = "train") -> list[EditExample]:
    """``per_scene`` examples per scene and style (fewer where no edit keeps the target in ``part``)."""
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ZscirError(f"--styles: unknown {', '.join(unknown)}; expected among {', '.join(STYLES)}")
    rng = np.random.default_rng([seed, 0x45444954])
    out = []
    for scene in scenes:
        for style in styles:
            for _ in range(per_scene):
                example = sample_edit_example(scene, style, rng, part)
                if example is not None:
                    out.append(example)
    return out


def edit_scores(examples: Sequence[EditExample], predictions: Sequence[str]) -> dict:
    """Exact match of the edited caption, per style and per edit kind (an example counts under each of its kinds).

    Coarse texts leave values open, so for them ``valid`` also counts a prediction that reads
    as any scene the coarse text allows (:func:`zscir.world.matching.coarse_templates`).
    """
    table: dict[str, dict[str, list[int]]] = {}
    for ex, text in zip(examples, predictions):
        exact = int(text.strip() == ex.edited)
        valid = exact
        if ex.style == "coarse" and not exact:
            parsed = parse_caption(text)
            valid = int(parsed is not None and any(satisfies(t, parsed) for t in coarse_templates(ex.scene, list(ex.coarse))))
        style = table.setdefault(ex.style, {})
        for key in ("all", *sorted(set(ex.kinds)), f"{len(ex.kinds)}-edit"):
            counts = style.setdefault(key, [0, 0, 0])
            counts[0] += 1
            counts[1] += exact
            counts[2] += valid
    result = {}
    for style, rows in table.items():
        result[style] = {key: {"n": n, "exact": round(e / n, 4), **({"valid": round(v / n, 4)} if style == "coarse" else {})}
                         for key, (n, e, v) in sorted(rows.items())}
    return result
