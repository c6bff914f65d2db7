"""The modification-text parser: hand-written FineCIR-style texts, and every shapes-world text against its spec."""

import json
import sys
import types

import numpy as np
import pytest

from zscir.errors import ZscirError
from zscir.text import Entity, Relation, get_parser, resolve_parser_name
from zscir.text.rules import RuleParser
from zscir.world.captions import PATTERN_WORDS, POSITION_WORDS, SIZE_WORDS
from zscir.world.spec import Scene
from zscir.world.texts import MOVE_WORDS, NEW_PATTERN_WORDS, NEW_SIZE_WORDS, REMOVE_VERBS
from zscir.world.triplets import sample_triplet

rules = RuleParser()


def summary(text):
    p = rules.parse(text)
    return ([(e.noun, e.attributes, e.location) for e in p.entities],
            [(r.subject, r.predicate, r.object, r.value) for r in p.relations])


# ---------------------------------------------------------------- hand-written texts
@pytest.mark.parametrize("text, entities, relations", [
    ("make the large red circle blue and add a small yellow striped star at the bottom right",
     [("circle", ("large", "red"), None), ("star", ("small", "yellow", "striped"), "bottom right")],
     [(0, "make", None, "blue"), (1, "add", None, None)]),
    # FineCIR's numbered style: several entities, each with attributes, a from-value describing the reference
    ("1. Change the color of the dress from black to dark red.\n2. Add white floral patterns to the sleeves.\n"
     "3. Make the neckline round.",
     [("dress", ("black",), None), ("patterns", ("white", "floral"), None), ("sleeves", (), None),
      ("neckline", (), None)],
     [(0, "change color", None, "dark red"), (1, "to", 2, None), (1, "add", None, None), (3, "make", None, "round")]),
    ("Replace the black leather belt with a thin gold chain, and make the short sleeves longer.",
     [("belt", ("black", "leather"), None), ("sleeves", ("short",), None)],
     [(0, "replace", None, "thin gold chain"), (1, "make", None, "longer")]),
    ("the dress has long sleeves and a v-neck",
     [("dress", (), None), ("sleeves", ("long",), None), ("v-neck", (), None)],
     [(0, "have", 1, None), (0, "have", 2, None)]),
    ("is darker and has a large white logo on the front",
     [("logo", ("large", "white"), "front")],
     [(None, "be", None, "darker"), (None, "have", 0, None)]),
    ("remove the two dogs on the left and put a brown cat on the red sofa",
     [("dogs", (), "left"), ("cat", ("brown",), None), ("sofa", ("red",), None)],
     [(0, "remove", None, None), (1, "on", 2, None), (1, "put", None, None)]),
    ("move the small blue square to the top left corner, then turn it into a striped circle",
     [("square", ("small", "blue"), None)],
     [(0, "move", None, "top left corner"), (0, "turn", None, "striped circle")]),
    ("change the circle's color to green and remove it", [("circle", (), None)],
     [(0, "change color", None, "green"), (0, "remove", None, None)]),
    ("get rid of the red square, give the star another shape and change its size",
     [("square", ("red",), None), ("star", (), None)],
     [(0, "get rid", None, None), (1, "give", None, "another shape"), (1, "change size", None, None)]),
])
def test_hand_written(text, entities, relations):
    assert summary(text) == (entities, relations)


def test_pronoun_skips_removed_entities_and_phrase():
    p = rules.parse("delete the red circle and make it blue")
    assert p.relations[1].subject is None            # nothing left to refer to: the image as a whole
    p = rules.parse("make the square big, remove the red circle and make it blue")
    assert [r.subject for r in p.relations] == [0, 1, 0]
    assert p.entities[1].phrase == "red circle"
    assert rules.parse("add a big star at the top").entities[0].phrase == "big star at the top"


def test_empty_and_odd_texts():
    assert summary("") == ([], [])
    assert summary(" ") == ([], [])
    assert summary("!!") == ([], [])
    assert summary("bluer") == ([("bluer", (), None)], [])   # an unknown word is taken for a noun
    assert summary("blue") == ([], [(None, "be", None, "blue")])
    assert summary("make it so") == ([], [(None, "make", None, None)])


def test_registry_and_auto():
    assert resolve_parser_name("rules") == "rules"
    with pytest.raises(ZscirError, match="unknown text parser 'spacy'"):
        resolve_parser_name("spacy")
    assert get_parser("rules").parse("add a star").parser == "rules"


def test_scene_graph_parser_adapter(monkeypatch):
    """The sng backend maps SceneGraphParser's documented graph: modifiers -> attributes, place objects -> location."""
    graph = {"entities": [
        {"span": "the large red circle", "lemma_span": "the large red circle", "head": "circle", "lemma_head": "circle",
         "modifiers": [{"dep": "det", "span": "the", "lemma_span": "the"},
                       {"dep": "amod", "span": "large", "lemma_span": "large"},
                       {"dep": "amod", "span": "red", "lemma_span": "red"}]},
        {"span": "the top left", "lemma_span": "the top left", "head": "left", "lemma_head": "left", "modifiers": []},
        {"span": "a star", "lemma_span": "a star", "head": "star", "lemma_head": "star", "modifiers": []}],
        "relations": [{"subject": 0, "object": 1, "relation": "at"}, {"subject": 2, "object": 0, "relation": "near"}]}
    fake = types.ModuleType("sng_parser")

    class FakeParser:
        def __init__(self, backend, model):
            assert (backend, model) == ("spacy", "en_core_web_sm")

        def parse(self, text):
            return graph

    fake.Parser = FakeParser
    monkeypatch.setitem(sys.modules, "sng_parser", fake)
    from zscir.text.sng import SceneGraphParser

    p = SceneGraphParser().parse("the large red circle at the top left and a star near it")
    assert p.parser == "sng"
    assert p.entities == (Entity("circle", ("large", "red"), "top left", "the large red circle"),
                          Entity("star", (), None, "a star"))
    assert p.relations == (Relation(1, "near", object=0),)


# ---------------------------------------------------------------- every shapes-world text
PLACE_CELL = {}
for cell, phrases in enumerate(POSITION_WORDS):
    for phrase in phrases + MOVE_WORDS[cell]:
        PLACE_CELL[phrase.split(" the ", 1)[1]] = cell
WORD_VALUE = {}   # attribute word -> (attribute, value)
for value, words in SIZE_WORDS.items():
    WORD_VALUE.update({w: ("size", value) for w in words})
for value, words in list(PATTERN_WORDS.items()) + list(NEW_PATTERN_WORDS.items()):
    WORD_VALUE.update({w: ("pattern", value) for w in words if w and " " not in w})


def resolve(entity, scene: Scene) -> list[int]:
    """Cells of the objects of ``scene`` that the parsed entity describes."""
    out = []
    for o in scene.objects:
        ok = entity.noun == o.shape and (entity.location is None or PLACE_CELL[entity.location] == o.cell)
        for w in entity.attributes:
            attr, value = WORD_VALUE.get(w, ("color", w))
            ok = ok and getattr(o, attr) == value
        if ok:
            out.append(o.cell)
    return out


def english_referents(edits, key):
    """What each edit acts on as an English reader takes it: an object named by ``key`` (its cell or slot), or
    ("add", i) for the object added by edit i. A pronoun is the latest named or added object not removed."""
    named, removed, out = [], set(), []
    for i, e in enumerate(edits):
        if key in e:
            ref = e[key] if e[key] not in named else [x for x in named if x not in removed][-1]
            out.append(ref)
            named = [x for x in named if x != ref] + [ref]
            if e["kind"] == "remove":
                removed.add(ref)
        elif e["kind"] == "add":
            out.append(("add", i))
            named.append(("add", i))
        else:
            out.append(None)
    return out


def check_fine(text, reference: Scene, edits):
    p = rules.parse(text)
    assert len(p.relations) == len(edits), text
    referents = english_referents(edits, "cell")
    explicit = {e["cell"] for e in edits if "cell" in e} | set()
    assert len(p.entities) == len(explicit) + sum(e["kind"] in ("add", "background") for e in edits), text
    for e, r, cell in zip(edits, p.relations, referents):
        kind = e["kind"]
        entity = p.entities[r.subject]
        if isinstance(cell, tuple):   # the world's "it" means an earlier object, English reads the added one
            assert r.subject == p.relations[cell[1]].subject, text
            continue
        if "cell" in e:
            assert resolve(entity, reference) == [cell], (text, entity)
            if cell != e["cell"]:
                continue   # the world's "it" means an earlier object than the last one named (see report)
        if kind in ("color", "shape"):
            assert r.value == e["value"], text
        elif kind == "size":
            assert r.value in NEW_SIZE_WORDS[e["value"]], text
        elif kind == "pattern":
            assert r.value in NEW_PATTERN_WORDS[e["value"]], text
        elif kind == "move":
            assert r.predicate == "move" and PLACE_CELL[r.value] == e["to"], text
        elif kind == "remove":
            assert r.predicate in REMOVE_VERBS and r.value is None, text
        elif kind == "add":
            obj = e["object"]
            assert r.predicate == "add" and entity.noun == obj["shape"] and PLACE_CELL[entity.location] == obj["cell"]
            assert sorted(WORD_VALUE.get(w, ("color", w)) for w in entity.attributes) == sorted(
                [("color", obj["color"]), ("pattern", obj["pattern"]), ("size", obj["size"])]), text
        elif kind == "background":
            assert entity.noun == "background" and (r.value == e["value"] or entity.attributes == (e["value"],))


def check_coarse(text, coarse):
    p = rules.parse(text)
    assert len(p.relations) == len(coarse), text
    referents = english_referents(coarse, "slot")
    entity_of_slot = {}
    for e, r, slot in zip(coarse, p.relations, referents):
        entity = p.entities[r.subject]
        kind = e["kind"]
        if isinstance(slot, tuple):
            assert r.subject == p.relations[slot[1]].subject, text
            continue
        if "slot" in e:
            assert entity_of_slot.setdefault(slot, r.subject) == r.subject, text
            if slot != e["slot"]:
                continue   # the world's "its" means an earlier object than the last one named (see report)
            assert entity.noun == e["shape"] and entity.attributes == () and entity.location is None, text
        if kind in ("color", "shape", "size", "pattern"):
            assert r.predicate == f"change {kind}" or (r.predicate == "give" and r.value == f"another {kind}"), text
        elif kind == "move":
            assert r.predicate == "move" and r.value is None, text
        elif kind == "remove":
            assert r.predicate in REMOVE_VERBS, text
        elif kind == "add":
            assert r.predicate == "add" and entity.noun == (e["shape"] or entity.noun) and entity.noun != "it"
            assert e["shape"] is not None or entity.noun in ("something", "object"), text
        elif kind == "background":
            assert entity.noun == "background" and r.value is None, text
    assert len(set(entity_of_slot.values())) == len(entity_of_slot)   # distinct objects, distinct entities


def test_every_generated_world_text():
    """3,000 triplets straight from the generator (train and eval parts): fine and coarse texts."""
    rng = np.random.default_rng(123)
    ambiguous = 0
    for i in range(3000):
        t = sample_triplet(rng, "train" if i % 2 else "eval")
        check_fine(t.fine_text, t.reference, t.edits)
        check_coarse(t.coarse_text, t.coarse)
        ambiguous += english_referents(t.edits, "cell") != [e.get("cell", ("add", k) if e["kind"] == "add" else None)
                                                            for k, e in enumerate(t.edits)]
    assert ambiguous < 0.03 * 3000


def test_every_text_of_a_world_on_disk(tmp_path):
    from zscir.world.build import WorldConfig, generate_world

    root = generate_world(tmp_path / "w", WorldConfig.tiny(seed=3), workers=1, progress=False, log=lambda m: None)
    scenes = {}
    for line in (root / "scenes.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes[row["id"]] = Scene.from_json(row)
    n = 0
    for split in ("train", "val", "test"):
        fine = json.loads((root / "annotations" / f"{split}.json").read_text())
        coarse = json.loads((root / "annotations" / f"{split}_coarse.json").read_text())
        for f, c in zip(fine, coarse):
            check_fine(f["relative_caption"], scenes[f["reference_img_id"]], f["edits"])
            check_coarse(c["relative_caption"], c["edits"])
            n += 1
    assert n == 48
