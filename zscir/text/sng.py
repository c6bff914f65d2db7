"""SceneGraphParser (``sng_parser``, on spaCy) as a modification-text parser, when it is installed.

Its graph (entities with modifiers, relations between entities) maps onto
:class:`~zscir.text.graph.ParsedText`: adjectival and compound modifiers are
the attribute words; a relation whose object is a place ("at the top left")
becomes the subject's location. New values ("make it blue") are not in its
graph; the supervised head only needs the entities.
"""

from __future__ import annotations

from zscir.errors import ZscirError
import zscir.text.lexicon as lx
from zscir.text.graph import Entity, ParsedText, Relation

ATTRIBUTE_DEPS = frozenset({"amod", "compound", "nummod", "acomp", "advmod"})


def available() -> bool:
    try:
        import sng_parser  # noqa: F401
        import spacy
    except ImportError:
        return False
    return any(spacy.util.is_package(name) for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg",
                                                        "en_core_web_trf"))


def from_graph(text: str, graph: dict, name: str = "sng") -> ParsedText:
    """Map a SceneGraphParser graph (``{"entities": [...], "relations": [...]}``) to a ParsedText."""
    raw = graph.get("entities", [])
    is_place = [all(w in lx.PLACES for w in e.get("lemma_span", e["span"]).lower().split()
                    if w not in lx.DETERMINERS) for e in raw]
    keep = [k for k in range(len(raw)) if not is_place[k]]
    new_index = {old: new for new, old in enumerate(keep)}
    locations: dict[int, str] = {}
    relations = []
    for r in graph.get("relations", []):
        s, o = int(r["subject"]), int(r["object"])
        if is_place[o] and s in new_index:
            place = " ".join(w for w in raw[o]["span"].lower().split() if w not in lx.DETERMINERS)
            locations.setdefault(s, place)
            continue
        if s in new_index and o in new_index:
            relations.append(Relation(new_index[s], str(r["relation"]).lower(), object=new_index[o]))
    entities = []
    for k in keep:
        e = raw[k]
        attrs = tuple(m["span"].lower() for m in e.get("modifiers", []) if m.get("dep") in ATTRIBUTE_DEPS)
        entities.append(Entity(e["head"].lower(), attrs, locations.get(k), e["span"].lower()))
    return ParsedText(text, tuple(entities), tuple(relations), name)


class SceneGraphParser:
    name = "sng"

    def __init__(self):
        try:
            import sng_parser
        except ImportError:
            raise ZscirError("the 'sng' text parser needs SceneGraphParser and a spaCy English pipeline: "
                             "pip install SceneGraphParser spacy && python -m spacy download en_core_web_sm") from None
        self._parser = sng_parser.Parser("spacy", model="en_core_web_sm")

    def parse(self, text: str) -> ParsedText:
        return from_graph(text, self._parser.parse(text), self.name)
