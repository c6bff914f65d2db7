"""Captions as an image captioner would write them, with their subject and attribute parts.

"a big red striped circle at the top left and a small blue square at the
bottom on a gray background": every object's size, color, pattern, shape and
position, and the background. Wording varies (synonyms, object order, list
joiners, prefixes, where the background goes) so that the text encoder does
not learn one template. The *canonical* caption (first synonym, objects in
cell order, no prefix) is the one evaluations use.

The split into a subject part (the object nouns: "a circle and a square") and
an attribute part (everything said about them: "big red striped at the top
left, small blue at the bottom, on a gray background") is known by
construction: it is the ground truth for a caption splitter and what the
FTI4CIR regulariser needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from zscir.world.spec import CELL_NAMES, Obj, Scene, choice

# synonyms; the first is the canonical word. None = the word is left out (solid things are often just "a red circle")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
PATTERN_WORDS = {"solid": ("solid", "plain", None), "striped": ("striped", "with stripes"),
                 "dotted": ("dotted", "spotted", "with dots")}
POSITION_WORDS = (
    ("at the top left", "in the top left corner", "in the upper left"),
    ("at the top", "at the top center", "in the top middle"),
    ("at the top right", "in the top right corner", "in the upper right"),
    ("on the left", "at the left", "in the middle left"),
    ("in the center", "in the middle"),
    ("on the right", "at the right", "in the middle right"),
    ("at the bottom left", "in the bottom left corner", "in the lower left"),
    ("at the bottom", "at the bottom center", "in the bottom middle"),
    ("at the bottom right", "in the bottom right corner", "in the lower right"),
)
PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ", "there is ")
assert len(POSITION_WORDS) == len(CELL_NAMES)


@dataclass(frozen=True)
class Caption:
    text: str
    subject: str
    attribute: str

    def to_json(self) -> dict:
        return {"caption": self.text, "subject": self.subject, "attribute": self.attribute}


def _pick(rng: Optional[np.random.Generator], options: Sequence):
    return options[0] if rng is None else choice(rng, options)


def object_words(obj: Obj, rng: Optional[np.random.Generator] = None) -> tuple[str, str, str]:
    """(noun phrase, attribute words, position phrase) of one object; rng=None gives the canonical words."""
    size = _pick(rng, SIZE_WORDS[obj.size])
    pattern = _pick(rng, PATTERN_WORDS[obj.pattern])
    position = _pick(rng, POSITION_WORDS[obj.cell])
    before, after = [size, obj.color], []
    if pattern is not None:
        (after if pattern.startswith("with ") else before).append(pattern)
    noun_phrase = " ".join(["a", *before, obj.shape, *after])
    attribute = " ".join([*before, *after, position])
    return noun_phrase, attribute, position


def join_list(items: Sequence[str], rng: Optional[np.random.Generator] = None) -> str:
    if len(items) == 1:
        return items[0]
    if rng is not None and len(items) >= 2 and rng.random() < 0.35:
        return items[0] + " with " + join_list(items[1:])
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe(objects: Sequence[Obj], background: str, rng: Optional[np.random.Generator] = None) -> Caption:
    """A caption listing ``objects`` in the given order (rng=None: canonical wording)."""
    words = [object_words(o, rng) for o in objects]
    phrases = [f"{np_} {pos}" for np_, _, pos in words]
    listing = join_list(phrases, rng)
    style = 0 if rng is None else int(rng.choice(3, p=[0.6, 0.25, 0.15]))
    if style == 0:
        text = f"{_pick(rng, PREFIXES)}{listing} on a {background} background"
    elif style == 1:
        text = f"a {background} background with {listing}"
    else:
        text = f"{_pick(rng, PREFIXES)}{listing}, {background} background"
    subject = join_list([f"a {o.shape}" for o in objects])
    attribute = ", ".join(a for _, a, _ in words) + f", on a {background} background"
    return Caption(text, subject, attribute)


def canonical_caption(scene: Scene) -> Caption:
    return describe(scene.objects, scene.background)


def random_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    order = [scene.objects[int(i)] for i in rng.permutation(len(scene.objects))]
    return describe(order, scene.background, rng)
