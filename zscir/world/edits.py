"""Edits of a scene: the "modification" of a composed-retrieval triplet.

A *fine* edit is concrete: which object (by its cell in the reference scene)
and the new value. Applying fine edits to a reference gives exactly one target
scene. A *coarse* edit is what an under-specified text says: which object
only by its shape noun ("the circle", possibly one of several), and for most
kinds no new value ("change its color"). A coarse edit stands for every fine
edit it could mean (moved and added objects landing, as in fine edits, on
cells empty in the reference); :mod:`zscir.world.matching` decides which
scenes satisfy it.

Edits are plain dicts so that they go into the annotation files as they are:

    {"kind": "color"|"shape"|"size"|"pattern", "cell": c, "value": v}
    {"kind": "move", "cell": c, "to": c2}
    {"kind": "add", "object": {shape, color, size, pattern, cell}}
    {"kind": "remove", "cell": c}
    {"kind": "background", "value": bg}

Coarse twins replace ``cell`` by ``slot`` (edits of one object share a slot)
and ``shape`` (the object's shape in the reference); an add keeps only its
shape, or none ("add something").
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from zscir.errors import ZscirError
from zscir.world.spec import ATTRIBUTES, BACKGROUNDS, MAX_OBJECTS, Obj, Scene, choice, random_object

ATTRIBUTE_KINDS = ("color", "shape", "size", "pattern")
OBJECT_KINDS = ATTRIBUTE_KINDS + ("move", "remove")  # kinds that act on an existing object
EDIT_KINDS = OBJECT_KINDS + ("add", "background")
# how often each kind is drawn (a registry: every kind has a sampler below and texts in texts.py)
KIND_WEIGHTS = {"color": 3, "shape": 3, "size": 2, "pattern": 2, "move": 2, "add": 2, "remove": 2, "background": 1}
NUM_EDITS_P = {1: 0.5, 2: 0.35, 3: 0.15}


def apply_edits(scene: Scene, edits: list[dict]) -> Scene:
    """The scene after the fine ``edits``; objects are addressed by their cell in ``scene``."""
    objects = {o.cell: o for o in scene.objects}
    background = scene.background
    moved: dict[int, int] = {}
    added: list[Obj] = []
    for e in edits:
        kind = e["kind"]
        if kind in ATTRIBUTE_KINDS:
            objects[e["cell"]] = objects[e["cell"]].with_(**{kind: e["value"]})
        elif kind == "move":
            moved[e["cell"]] = e["to"]
        elif kind == "remove":
            del objects[e["cell"]]
        elif kind == "add":
            added.append(Obj.from_json(e["object"]))
        elif kind == "background":
            background = e["value"]
        else:
            raise ZscirError(f"unknown edit kind {kind!r} (expected one of {EDIT_KINDS})")
    final = [o.with_(cell=moved.get(c, c)) for c, o in objects.items()] + added
    return Scene(background, tuple(final))


class _Draft:
    """Book-keeping while drawing a combination of edits, so that they never conflict."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.edits: list[dict] = []
        self.used_cells = {o.cell for o in scene.objects}  # cells taken in the reference or by a destination
        self.removed: set[int] = set()
        self.done: set[tuple] = set()  # (cell, kind) pairs already edited

    def count_after(self) -> int:
        adds = sum(e["kind"] == "add" for e in self.edits)
        return len(self.scene.objects) - len(self.removed) + adds

    def free_cells(self) -> list[int]:
        return [c for c in ATTRIBUTES["cell"] if c not in self.used_cells]


def _pick_object(draft: _Draft, kind: str, rng: np.random.Generator) -> Optional[Obj]:
    edited = {c for c, _ in draft.done}
    candidates = [o for o in draft.scene.objects if o.cell not in draft.removed and (o.cell, kind) not in draft.done]
    if kind == "remove":  # a removed object is not also edited otherwise
        candidates = [o for o in candidates if o.cell not in edited]
    if not candidates:
        return None
    again = [o for o in candidates if o.cell in edited]
    if again and rng.random() < 0.4:  # several changes to one object ("make it blue and move it")
        return choice(rng, again)
    fresh = [o for o in candidates if o.cell not in edited]
    return choice(rng, fresh or candidates)


def _draw_edit(draft: _Draft, kind: str, rng: np.random.Generator) -> Optional[dict]:
    if kind == "background":
        if any(e["kind"] == "background" for e in draft.edits):
            return None
        return {"kind": "background", "value": choice(rng, [b for b in BACKGROUNDS if b != draft.scene.background])}
    if kind == "add":
        free = draft.free_cells()
        if any(e["kind"] == "add" for e in draft.edits) or draft.count_after() >= MAX_OBJECTS or not free:
            return None
        obj = random_object(rng, choice(rng, free))
        draft.used_cells.add(obj.cell)
        return {"kind": "add", "object": obj.to_json()}
    if kind == "remove" and len(draft.scene.objects) - len(draft.removed) <= 1:
        # keep one object of the reference: "remove the cross and add something" on a one-object
        # scene would say nothing about the target but its background
        return None
    obj = _pick_object(draft, kind, rng)
    if obj is None:
        return None
    draft.done.add((obj.cell, kind))
    if kind == "remove":
        draft.removed.add(obj.cell)
        return {"kind": "remove", "cell": obj.cell}
    if kind == "move":
        free = draft.free_cells()
        if not free:
            return None
        to = choice(rng, free)
        draft.used_cells.add(to)
        return {"kind": "move", "cell": obj.cell, "to": to}
    values = [v for v in ATTRIBUTES[kind] if v != getattr(obj, kind)]
    return {"kind": kind, "cell": obj.cell, "value": choice(rng, values)}


def sample_edits(scene: Scene, rng: np.random.Generator, num_edits: Optional[int] = None) -> list[dict]:
    """1-3 compatible fine edits of ``scene`` (each changes the scene; no two conflict)."""
    if num_edits is None:
        num_edits = int(rng.choice(list(NUM_EDITS_P), p=list(NUM_EDITS_P.values())))
    kinds, weights = list(KIND_WEIGHTS), np.array(list(KIND_WEIGHTS.values()), dtype=float)
    draft = _Draft(scene)
    for _ in range(50):
        if len(draft.edits) == num_edits:
            break
        edit = _draw_edit(draft, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))], rng)
        if edit is not None:
            draft.edits.append(edit)
    return draft.edits


# --- coarse twins ---------------------------------------------------------------------------------

def coarse_edits(scene: Scene, edits: list[dict], rng: np.random.Generator) -> list[dict]:
    """The under-specified twin of fine ``edits``: objects by shape noun only, values left open."""
    slots: dict[int, int] = {}
    out = []
    for e in edits:
        kind = e["kind"]
        if kind == "background":
            out.append({"kind": "background"})
        elif kind == "add":
            keep_shape = rng.random() < 0.5
            out.append({"kind": "add", "shape": e["object"]["shape"] if keep_shape else None})
        else:
            slot = slots.setdefault(e["cell"], len(slots))
            out.append({"kind": kind, "slot": slot, "shape": scene.at(e["cell"]).shape})
    return out


def concretize(scene: Scene, coarse: list[dict], rng: np.random.Generator, tries: int = 20) -> Optional[list[dict]]:
    """A random fine reading of ``coarse`` edits on ``scene`` (None if no reading was found)."""
    for _ in range(tries):
        fine = _try_concretize(scene, coarse, rng)
        if fine is not None:
            return fine
    return None


def _try_concretize(scene: Scene, coarse: list[dict], rng: np.random.Generator) -> Optional[list[dict]]:
    # bind each slot to a distinct object of the named shape
    binding: dict[int, Obj] = {}
    for e in coarse:
        if "slot" in e and e["slot"] not in binding:
            bound = {o.cell for o in binding.values()}
            options = [o for o in scene.objects if o.shape == e["shape"] and o.cell not in bound]
            if not options:
                return None
            binding[e["slot"]] = choice(rng, options)
    taken = {o.cell for o in scene.objects}  # moves and adds land on cells empty in the reference, as fine edits do
    fine = []
    for e in coarse:
        kind = e["kind"]
        if kind == "background":
            fine.append({"kind": kind, "value": choice(rng, [b for b in BACKGROUNDS if b != scene.background])})
        elif kind == "add":
            free = [c for c in ATTRIBUTES["cell"] if c not in taken]
            if not free:
                return None
            obj = random_object(rng, choice(rng, free))
            if e["shape"] is not None:
                obj = obj.with_(shape=e["shape"])
            taken.add(obj.cell)
            fine.append({"kind": kind, "object": obj.to_json()})
        else:
            obj = binding[e["slot"]]
            if kind == "remove":
                fine.append({"kind": kind, "cell": obj.cell})
            elif kind == "move":
                free = [c for c in ATTRIBUTES["cell"] if c not in taken]
                if not free:
                    return None
                to = choice(rng, free)
                taken.add(to)
                fine.append({"kind": kind, "cell": obj.cell, "to": to})
            else:
                values = [v for v in ATTRIBUTES[kind] if v != getattr(obj, kind)]
                fine.append({"kind": kind, "cell": obj.cell, "value": choice(rng, values)})
    return fine

