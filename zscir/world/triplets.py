"""Composed-retrieval triplets: reference scene + modification -> target scene, and their galleries.

A triplet is drawn in one part of the spec space (both its reference and its
target are "eval" specs for val/test, "train" specs for train). For an
evaluation gallery each query brings, besides its reference and target:

- more renderings of the target (other images that satisfy the fine text),
- coarse siblings: other readings of the coarse text ("change the circle's
  color" -> a green circle instead of the blue one),
- hard negatives: a partial edit (only some of the changes) and the same edit
  applied to the wrong object; the reference itself is in the gallery too.

Ground truth is not taken from these roles: it is computed afterwards over
the whole gallery from the scene specs (:mod:`zscir.world.matching`), so a
distractor that happens to satisfy a query counts, as in CIRCO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zscir.errors import ZscirError
from zscir.world.edits import apply_edits, coarse_edits, concretize, sample_edits
from zscir.world.spec import MAX_OBJECTS, Scene, choice, sample_scene, spec_part
from zscir.world.texts import coarse_text, fine_text


@dataclass
class Triplet:
    reference: Scene
    edits: list[dict]          # fine edits
    coarse: list[dict]         # their coarse twin
    fine_text: str
    coarse_text: str
    target: Scene

    @property
    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.edits]


def sample_triplet(rng: np.random.Generator, part: str, max_objects: int = MAX_OBJECTS) -> Triplet:
    """A triplet whose reference and target both lie in ``part`` of the spec space."""
    while True:
        reference = sample_scene(rng, part, max_objects)
        for _ in range(30):
            edits = sample_edits(reference, rng)
            if not edits:
                break
            target = apply_edits(reference, edits)
            if spec_part(target) == part and len(target.objects) <= max_objects:
                coarse = coarse_edits(reference, edits, rng)
                return Triplet(reference, edits, coarse, fine_text(reference, edits, rng),
                               coarse_text(coarse, rng), target)


def _wrong_object(t: Triplet, rng: np.random.Generator) -> Scene | None:
    """The first object edit applied to another object of the reference (when that is a real change)."""
    object_edits = [i for i, e in enumerate(t.edits) if "cell" in e]
    if not object_edits:
        return None
    i = object_edits[0]
    edit = t.edits[i]
    others = [o for o in t.reference.objects if o.cell != edit["cell"]]
    if not others:
        return None
    other = choice(rng, others)
    if edit["kind"] in ("color", "shape", "size", "pattern") and getattr(other, edit["kind"]) == edit["value"]:
        return None
    edits = [dict(edit, cell=other.cell) if j == i else e for j, e in enumerate(t.edits)]
    try:
        return apply_edits(t.reference, edits)
    except (ZscirError, KeyError):  # the retargeted edit collides with another one
        return None


def _partial(t: Triplet, rng: np.random.Generator) -> Scene | None:
    """Only some of the changes (needs two or more)."""
    if len(t.edits) < 2:
        return None
    keep = sorted(rng.choice(len(t.edits), size=int(rng.integers(1, len(t.edits))), replace=False))
    try:
        return apply_edits(t.reference, [t.edits[int(k)] for k in keep])
    except ZscirError:  # e.g. the removal without the addition that kept the scene non-empty
        return None


def _coarse_sibling(t: Triplet, rng: np.random.Generator) -> Scene | None:
    """Another reading of the coarse text."""
    fine = concretize(t.reference, t.coarse, rng)
    return None if fine is None else apply_edits(t.reference, fine)


NEGATIVES = {"partial": _partial, "wrong_object": _wrong_object, "coarse_sibling": _coarse_sibling}


def gallery_items(t: Triplet, rng: np.random.Generator, part: str, tries: int = 30) -> list[tuple[str, Scene]]:
    """(role, scene) images this query brings into an evaluation gallery.

    Each negative is drawn up to ``tries`` times until it lies in ``part`` of the
    spec space (and differs from the target); a role with no such draw is left out.
    """
    items = [("reference", t.reference), ("target", t.target)]
    items += [("target_rerender", t.target)] * int(rng.choice(3, p=[0.4, 0.4, 0.2]))
    wanted = ["partial", "wrong_object"] + ["coarse_sibling"] * int(rng.integers(1, 3))
    for role in wanted:
        for _ in range(tries):
            scene = NEGATIVES[role](t, rng)
            if scene is not None and spec_part(scene) == part and scene.key != t.target.key:
                items.append((role, scene))
                break
    return items
