"""The shapes world's vocabulary and scene specs.

A scene is a background color plus 1-4 objects, each in its own cell of a 3x3
grid, each with a shape, a color, a size and a pattern. A scene spec is the
ground truth of an image: renderings add jitter and noise, captions add
wording, but every attribute of every object is known.

The spec space is split once and for all into a training part and an
evaluation part by a hash of the canonical spec (not by seed): whatever seeds
build the training images and the evaluation galleries, no scene spec is ever
shared between them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from zscir.errors import ZscirError

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "large")
PATTERNS = ("solid", "striped", "dotted")
BACKGROUNDS = ("black", "white", "gray", "brown")
CELLS = tuple(range(9))  # row-major 3x3 grid: 0 = top left, 4 = center, 8 = bottom right

# words for the cells, as a person says them
CELL_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")

# every attribute an object has, with its values (a registry: captions, edits and tests iterate it)
ATTRIBUTES: dict[str, tuple] = {"shape": SHAPES, "color": COLORS, "size": SIZES, "pattern": PATTERNS, "cell": CELLS}

MAX_OBJECTS = 4
EVAL_PART_PERCENT = 20  # share of the spec space reserved for evaluation galleries and held-out scenes


@dataclass(frozen=True, order=True)
class Obj:
    """One object; ``cell`` is its place on the 3x3 grid and identifies it within a scene."""

    cell: int
    shape: str
    color: str
    size: str
    pattern: str

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "pattern": self.pattern,
                "cell": self.cell, "position": CELL_NAMES[self.cell]}

    @staticmethod
    def from_json(d: dict) -> "Obj":
        try:
            obj = Obj(cell=int(d["cell"]), shape=d["shape"], color=d["color"], size=d["size"], pattern=d["pattern"])
        except (KeyError, TypeError, ValueError) as e:
            raise ZscirError(f"scene object {d!r}: expected fields shape, color, size, pattern, cell ({e})") from None
        for name, values in ATTRIBUTES.items():
            if getattr(obj, name) not in values:
                raise ZscirError(f"scene object {d!r}: field {name!r} must be one of {values}")
        return obj

    def with_(self, **changes) -> "Obj":
        return replace(self, **changes)


@dataclass(frozen=True)
class Scene:
    """A background and objects in distinct cells, kept sorted by cell (the canonical order)."""

    background: str
    objects: tuple[Obj, ...]

    def __post_init__(self):
        objects = tuple(sorted(self.objects))
        object.__setattr__(self, "objects", objects)
        cells = [o.cell for o in objects]
        if len(set(cells)) != len(cells):
            raise ZscirError(f"scene has two objects in one cell: {cells}")
        if self.background not in BACKGROUNDS:
            raise ZscirError(f"scene background {self.background!r} must be one of {BACKGROUNDS}")
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ZscirError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")

    @property
    def key(self) -> str:
        """Canonical string of the spec: equal keys <=> equal scenes."""
        parts = [f"{o.cell}:{o.shape}:{o.color}:{o.size}:{o.pattern}" for o in self.objects]
        return self.background + "|" + ";".join(parts)

    def at(self, cell: int) -> Obj:
        for o in self.objects:
            if o.cell == cell:
                return o
        raise KeyError(cell)

    def free_cells(self) -> list[int]:
        used = {o.cell for o in self.objects}
        return [c for c in CELLS if c not in used]

    def to_json(self) -> dict:
        return {"background": self.background, "objects": [o.to_json() for o in self.objects]}

    @staticmethod
    def from_json(d: dict) -> "Scene":
        try:
            return Scene(d["background"], tuple(Obj.from_json(o) for o in d["objects"]))
        except (KeyError, TypeError) as e:
            raise ZscirError(f"scene spec {d!r}: expected fields background and objects ({e})") from None


def spec_part(scene: Scene) -> str:
    """``"eval"`` or ``"train"``: the fixed half of the spec space this scene belongs to."""
    digest = hashlib.sha1(scene.key.encode()).digest()
    return "eval" if int.from_bytes(digest[:4], "big") % 100 < EVAL_PART_PERCENT else "train"


def choice(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


def random_object(rng: np.random.Generator, cell: int) -> Obj:
    return Obj(cell=cell, shape=choice(rng, SHAPES), color=choice(rng, COLORS),
               size=choice(rng, SIZES), pattern=choice(rng, PATTERNS))


def random_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS, min_objects: int = 1) -> Scene:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(len(CELLS), size=n, replace=False)
    return Scene(choice(rng, BACKGROUNDS), tuple(random_object(rng, int(c)) for c in cells))


def sample_scene(rng: np.random.Generator, part: str, max_objects: int = MAX_OBJECTS, min_objects: int = 1) -> Scene:
    """A random scene from one part of the spec space (rejection sampling; ~5 draws for 'eval')."""
    while True:
        scene = random_scene(rng, max_objects, min_objects)
        if spec_part(scene) == part:
            return scene


def distinct(scenes: Iterable[Scene]) -> list[Scene]:
    seen, out = set(), []
    for s in scenes:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out
