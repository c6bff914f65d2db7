"""What a modification-text parser returns: entities with their attribute words, and relations.

"make the large red circle blue and add a small striped star at the bottom right"

    entities  [circle (large, red); star (small, striped) at "bottom right"]
    relations [circle -make-> value "blue"; star -add-]

An entity is what the text names (an object, a part, the background); its
attribute words are those that describe it as named ("large red"), which is
what locates it in the reference image. A relation links an entity to a
verb or preposition and to another entity or a new value ("blue", "top
left"). ``subject=None`` means the reference image as a whole ("is darker").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Entity:
    noun: str                          # head noun, as written: "circle", "sleeves", "background"
    attributes: tuple[str, ...] = ()   # attribute words in text order: ("large", "red")
    location: Optional[str] = None     # place phrase it is at, without preposition: "bottom right"
    span: str = ""                     # the words of the text it was read from

    @property
    def phrase(self) -> str:
        """A short canonical description, what a text encoder is given: "large red circle at the top left"."""
        words = " ".join((*self.attributes, self.noun))
        return f"{words} at the {self.location}" if self.location else words

    def to_json(self) -> dict:
        d = asdict(self)
        d["attributes"] = list(self.attributes)
        return d


@dataclass(frozen=True)
class Relation:
    subject: Optional[int]             # entity index; None = the reference image as a whole
    predicate: str                     # verb lemma (+ particle, + property noun) or preposition: "make",
                                       # "take away", "change color", "with"
    object: Optional[int] = None       # another entity
    value: Optional[str] = None        # a new value: "blue", "smaller", "triangle", "top left"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParsedText:
    text: str
    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = field(default=())
    parser: str = ""

    def to_json(self) -> dict:
        return {"text": self.text, "parser": self.parser, "entities": [e.to_json() for e in self.entities],
                "relations": [r.to_json() for r in self.relations]}

    def relations_of(self, entity: int) -> list[Relation]:
        return [r for r in self.relations if r.subject == entity]
