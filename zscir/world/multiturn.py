"""Multi-turn sequences: a scene edited 2-5 times in a row, one change per turn, as in i-CLEVR / CoDraw.

Each turn is a triplet whose reference is the previous turn's target (turn 1
starts from a fresh scene): one edit of the i-CLEVR kinds (add, remove,
recolour, move), with a fine and a coarse text like every world query, every
state in the evaluation part of the spec space, and no state of a sequence
visited twice (so that a retrieval loop that stays put is never right by
accident). The split has its own gallery: every state of every sequence, the
per-turn renderings and hard negatives of :func:`zscir.world.triplets.gallery_items`,
and distractors; each turn's ground truth is computed over that gallery from
the scene specs, as for every split (:mod:`zscir.world.matching`).

Drawn from the world's own random stream (``multiturn``), so adding this split
left every other split's images and annotations byte-identical.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from zscir.world.edits import _Draft, _draw_edit, apply_edits, coarse_edits
from zscir.world.spec import MAX_OBJECTS, Scene, choice, sample_scene, spec_part
from zscir.world.texts import coarse_text, fine_text
from zscir.world.triplets import Triplet

TURN_KINDS = ("add", "remove", "color", "move")   # i-CLEVR's edits (recolour = color)
MIN_TURNS, MAX_TURNS = 2, 5


def sample_turn(scene: Scene, rng: np.random.Generator, part: str, seen: set[str],
                max_objects: int = MAX_OBJECTS, tries: int = 40) -> Optional[Triplet]:
    """One edit of ``scene`` whose result lies in ``part`` and is none of the ``seen`` states."""
    for _ in range(tries):
        edit = _draw_edit(_Draft(scene), choice(rng, TURN_KINDS), rng)
        if edit is None:
            continue
        target = apply_edits(scene, [edit])
        if spec_part(target) != part or target.key in seen or len(target.objects) > max_objects:
            continue
        coarse = coarse_edits(scene, [edit], rng)
        return Triplet(scene, [edit], coarse, fine_text(scene, [edit], rng), coarse_text(coarse, rng), target)
    return None


def sample_sequence(rng: np.random.Generator, part: str, max_objects: int = MAX_OBJECTS) -> list[Triplet]:
    """2-5 turns; turn k's reference is turn k-1's target."""
    while True:
        n = int(rng.integers(MIN_TURNS, MAX_TURNS + 1))
        scene = sample_scene(rng, part, max_objects)
        turns, seen = [], {scene.key}
        for _ in range(n):
            turn = sample_turn(scene, rng, part, seen, max_objects)
            if turn is None:
                break
            turns.append(turn)
            seen.add(turn.target.key)
            scene = turn.target
        if len(turns) == n:
            return turns
