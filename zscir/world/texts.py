"""Modification texts: a fine one that names the object and every change, a coarse one that does not.

Fine: "make the red circle blue and add a small yellow striped star at the
bottom right". The object is named by the shortest description that is
unique in the reference (shape; color + shape; size + color + shape; with
pattern; else its position), sometimes a longer one; several changes to one
object share it ("make the red circle blue and move it to the top").

Coarse: "change the circle's color and add something": objects by shape noun
only, new values left out (with two sizes, "change the size of the circle"
still has one reading per circle).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zscir.world.captions import POSITION_WORDS, SIZE_WORDS
from zscir.world.spec import Obj, Scene, choice

# destination phrases for moves (first = canonical)
MOVE_WORDS = tuple(tuple("to" + p[p.index(" the "):] for p in phrases) for phrases in POSITION_WORDS)
# words a fine text may use for a new size / pattern (checked by tests: every change is named)
NEW_SIZE_WORDS = {"small": ("small", "smaller"), "large": ("large", "bigger", "big", "larger")}
NEW_PATTERN_WORDS = {"solid": ("solid", "plain"), "striped": ("striped",), "dotted": ("dotted", "spotted")}
REMOVE_VERBS = ("remove", "take away", "delete")


def _descriptions(obj: Obj) -> list[str]:
    """Ways to name ``obj``, shortest first (the last, with its position, is always unique)."""
    return [obj.shape, f"{obj.color} {obj.shape}", f"{obj.size} {obj.color} {obj.shape}",
            f"{obj.size} {obj.color} {obj.pattern} {obj.shape}", f"{obj.shape} {POSITION_WORDS[obj.cell][0]}"]


def _level_unique(scene: Scene, obj: Obj, level: int) -> bool:
    name = _descriptions(obj)[level]
    return sum(_descriptions(o)[level] == name for o in scene.objects) == 1


def refer(scene: Scene, obj: Obj, rng: np.random.Generator) -> str:
    """'the red circle': a description of ``obj`` that no other object of ``scene`` shares."""
    levels = [k for k in range(5) if _level_unique(scene, obj, k)]
    level = levels[0]
    if len(levels) > 1 and rng.random() < 0.3:  # sometimes say more than needed, as people do
        level = choice(rng, levels[1:])
    return "the " + _descriptions(obj)[level]


def added_object_phrase(obj: Obj, rng: np.random.Generator) -> str:
    """'a small yellow striped star at the bottom right': every attribute of a new object."""
    pattern = choice(rng, NEW_PATTERN_WORDS[obj.pattern])
    size = choice(rng, SIZE_WORDS[obj.size])
    return f"a {size} {obj.color} {pattern} {obj.shape} {choice(rng, POSITION_WORDS[obj.cell])}"


def _fine_clause(edit: dict, ref: str, rng: np.random.Generator) -> str:
    kind = edit["kind"]
    if kind == "color":
        return choice(rng, (f"make {ref} {edit['value']}", f"turn {ref} {edit['value']}",
                            f"change the color of {ref} to {edit['value']}"))
    if kind == "size":
        return f"make {ref} {choice(rng, NEW_SIZE_WORDS[edit['value']])}"
    if kind == "pattern":
        return f"make {ref} {choice(rng, NEW_PATTERN_WORDS[edit['value']])}"
    if kind == "shape":
        return choice(rng, (f"turn {ref} into a {edit['value']}", f"change {ref} into a {edit['value']}",
                            f"make {ref} a {edit['value']}"))
    if kind == "move":
        return f"move {ref} {choice(rng, MOVE_WORDS[edit['to']])}"
    if kind == "remove":
        return f"{choice(rng, REMOVE_VERBS)} {ref}"
    if kind == "add":
        return f"add {added_object_phrase(Obj.from_json(edit['object']), rng)}"
    if kind == "background":
        return choice(rng, (f"make the background {edit['value']}", f"change the background to {edit['value']}",
                            f"use a {edit['value']} background"))
    raise KeyError(kind)


def join_clauses(clauses: Sequence[str], rng: np.random.Generator) -> str:
    if len(clauses) == 1:
        return clauses[0]
    if rng.random() < 0.2:
        return ", then ".join(clauses)
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def fine_text(scene: Scene, edits: list[dict], rng: np.random.Generator) -> str:
    clauses, named = [], set()
    for e in edits:
        if "cell" in e:
            obj = scene.at(e["cell"])
            ref = "it" if e["cell"] in named else refer(scene, obj, rng)
            named.add(e["cell"])
        else:
            ref = ""
        clauses.append(_fine_clause(e, ref, rng))
    return join_clauses(clauses, rng)


def _coarse_clause(edit: dict, first_mention: bool, rng: np.random.Generator) -> str:
    kind = edit["kind"]
    if kind == "background":
        return choice(rng, ("change the background", "use another background"))
    if kind == "add":
        if edit["shape"] is not None:
            return f"add a {edit['shape']}"
        return choice(rng, ("add something", "add another object"))
    noun = f"the {edit['shape']}"
    if kind in ("color", "shape", "size", "pattern"):
        if first_mention:
            return choice(rng, (f"change the {kind} of {noun}", f"give {noun} another {kind}"))
        return f"change its {kind}"
    if kind == "move":
        return f"move {noun}" if first_mention else "move it"
    if kind == "remove":
        return f"{choice(rng, REMOVE_VERBS)} {noun}"
    raise KeyError(kind)


def coarse_text(coarse: list[dict], rng: np.random.Generator) -> str:
    clauses, named = [], set()
    for e in coarse:
        first = e.get("slot") not in named
        if "slot" in e:
            named.add(e["slot"])
        clauses.append(_coarse_clause(e, first, rng))
    return join_clauses(clauses, rng)
