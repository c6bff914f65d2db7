"""Which gallery scenes satisfy a modification: the ground truth of a query.

A fine text fixes every change, so exactly one spec satisfies it: the
reference with the fine edits applied (every rendering of that spec in the
gallery is a ground truth). A coarse text leaves values and the referent open,
so it is turned into *templates*, one per way of binding its objects ("the
circle" when there are two): per target object, the set of values each
attribute may take. As in fine edits, a moved or added object lands in a cell
that is empty in the reference. A scene satisfies a template when its background is
allowed and its objects can be paired one-to-one with the template's objects.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from zscir.world.edits import ATTRIBUTE_KINDS, apply_edits
from zscir.world.spec import ATTRIBUTES, BACKGROUNDS, Obj, Scene

FIELDS = tuple(ATTRIBUTES)  # shape, color, size, pattern, cell


@dataclass(frozen=True)
class Template:
    background: frozenset
    objects: tuple[dict, ...]  # per object: field -> frozenset of allowed values

    @staticmethod
    def exact(obj: Obj) -> dict:
        return {f: frozenset([getattr(obj, f)]) for f in FIELDS}

    def pinned(self) -> list[tuple]:
        """Objects that must appear exactly (every field fixed), as index keys."""
        return [tuple(next(iter(c[f])) for f in FIELDS) for c in self.objects if all(len(c[f]) == 1 for f in FIELDS)]


def object_key(obj: Obj) -> tuple:
    return tuple(getattr(obj, f) for f in FIELDS)


def fits(constraint: dict, obj: Obj) -> bool:
    return all(getattr(obj, f) in constraint[f] for f in FIELDS)


def satisfies(template: Template, scene: Scene) -> bool:
    if scene.background not in template.background or len(scene.objects) != len(template.objects):
        return False
    options = [[o for o in scene.objects if fits(c, o)] for c in template.objects]
    if any(not opt for opt in options):
        return False
    order = sorted(range(len(options)), key=lambda i: len(options[i]))

    def assign(k: int, used: frozenset) -> bool:  # one-to-one pairing by backtracking (at most 4 objects)
        if k == len(order):
            return True
        return any(assign(k + 1, used | {o.cell}) for o in options[order[k]] if o.cell not in used)

    return assign(0, frozenset())


def coarse_templates(scene: Scene, coarse: list[dict]) -> list[Template]:
    """One template per binding of the coarse edits' slots to distinct objects of the named shapes."""
    slots = sorted({e["slot"]: e["shape"] for e in coarse if "slot" in e}.items())
    choices = [[o for o in scene.objects if o.shape == shape] for _, shape in slots]
    templates = []
    for bound in itertools.product(*choices):
        if len({o.cell for o in bound}) != len(bound):
            continue
        templates.append(_template(scene, coarse, {slot: o for (slot, _), o in zip(slots, bound)}))
    return templates


def _template(scene: Scene, coarse: list[dict], binding: dict[int, Obj]) -> Template:
    everything = {f: frozenset(v) for f, v in ATTRIBUTES.items()}
    # as in fine edits, moved and added objects go to cells that are empty in the reference
    # (else "remove the circle and add something" could put the circle back: no change at all)
    free = frozenset(scene.free_cells())
    constraints = {o.cell: Template.exact(o) for o in scene.objects}
    background = frozenset([scene.background])
    added = []
    for e in coarse:
        kind = e["kind"]
        if kind == "background":
            background = frozenset(BACKGROUNDS) - {scene.background}
        elif kind == "add":
            c = dict(everything, cell=free)
            if e["shape"] is not None:
                c["shape"] = frozenset([e["shape"]])
            added.append(c)
        else:
            obj = binding[e["slot"]]
            if kind == "remove":
                constraints.pop(obj.cell)
            elif kind == "move":
                constraints[obj.cell]["cell"] = free
            elif kind in ATTRIBUTE_KINDS:
                constraints[obj.cell][kind] = everything[kind] - {getattr(obj, kind)}
    return Template(background, tuple(constraints.values()) + tuple(added))


class GalleryIndex:
    """Gallery scenes indexed so that ground truths are found without scanning the whole gallery."""

    def __init__(self, ids: list[int], scenes: list[Scene]):
        self.scenes = dict(zip(ids, scenes))
        self.by_key: dict[str, list[int]] = defaultdict(list)
        self.by_object: dict[tuple, set[int]] = defaultdict(set)
        self.by_count: dict[int, set[int]] = defaultdict(set)
        for i, s in zip(ids, scenes):
            self.by_key[s.key].append(i)
            self.by_count[len(s.objects)].add(i)
            for o in s.objects:
                self.by_object[object_key(o)].add(i)

    def fine_ground_truth(self, reference: Scene, edits: list[dict]) -> list[int]:
        return sorted(self.by_key.get(apply_edits(reference, edits).key, []))

    def coarse_ground_truth(self, reference: Scene, coarse: list[dict]) -> list[int]:
        found: set[int] = set()
        for template in coarse_templates(reference, coarse):
            pinned = template.pinned()
            if pinned:
                candidates = set.intersection(*(self.by_object.get(k, set()) for k in pinned))
            else:
                candidates = self.by_count.get(len(template.objects), set())
            found.update(i for i in candidates if i not in found and satisfies(template, self.scenes[i]))
        return sorted(found)
