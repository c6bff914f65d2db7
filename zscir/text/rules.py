"""A rule-based parser of modification texts: no model, no download, deterministic.

Three steps, each small:

1. *split* the text into sentences (numbered lists "1. ... 2. ..." too) and words;
2. *chunk* the words into items: verbs (with particles: "take away"), noun
   phrases (determiner, attribute words, head noun; attribute words after the
   head become a value: "the circle blue" -> circle + "blue"), bare values
   ("smaller", "dark blue"), prepositions, pronouns, separators; then cut the
   items into clauses before every verb that follows "," / "and" / "then";
3. *read* each clause: the noun phrase after the verb is the entity it acts
   on ("the color of X", "its color" and "X's color" act on X with the
   property folded into the predicate), what follows is the new value
   ("blue", "into a triangle", "to the top left"), a place after "at/in/on"
   is where the entity is, other prepositional phrases are relations between
   entities. "it" refers to the most recently named entity that was not
   removed.

It covers imperative edit texts ("make X Y", "turn X into Y", "move X to P",
"add X at P", "remove X", "change the K of X to V"), descriptions ("is red
with white stripes", "the dress has long sleeves") and FineCIR's numbered
lists. The shapes world's texts are all of these forms and are parsed exactly
(tests/test_text_parser.py checks every one against its scene spec).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import zscir.text.lexicon as lx
from zscir.text.graph import Entity, ParsedText, Relation

NUMBERED_ITEM = re.compile(r"(?:^|\s)\d{1,2}[.)](?=\s)")
SENTENCE_END = re.compile(r"[.;!?\n]+")
WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|'s\b|,")
ARTICLES = frozenset({"a", "an", "the"})


# ---------------------------------------------------------------- 1. split
def sentences(text: str) -> list[list[str]]:
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    out = []
    for item in NUMBERED_ITEM.split(text):
        for sentence in SENTENCE_END.split(item):
            words = WORD.findall(sentence)
            if words:
                out.append(words)
    return out


# ---------------------------------------------------------------- 2. chunk
@dataclass
class NP:
    det: Optional[str]
    words: list[str]                 # content words; the head is the last one
    possessive: bool = False         # "its ...": the noun belongs to the entity named before
    owner: Optional["NP"] = None     # "the circle's color": the NP before "'s"

    @property
    def head(self) -> str:
        return self.words[-1]

    @property
    def is_place(self) -> bool:
        return all(w in lx.PLACES or w in ("of",) for w in self.words)

    @property
    def span(self) -> str:
        return " ".join(([self.det] if self.det else []) + self.words)

    @property
    def value_text(self) -> str:
        det = [d for d in (self.det or "").split() if d not in ARTICLES]
        return " ".join(det + self.words)


@dataclass
class Item:
    kind: str                        # V NP VAL PREP PRON SEP CC
    word: str = ""                   # verb lemma, preposition, pronoun, conjunction
    np: Optional[NP] = None
    words: list[str] = field(default_factory=list)   # VAL words


def _closed(word: str) -> bool:
    return (word in lx.DETERMINERS or word in lx.POSSESSIVES or word in lx.PRONOUNS or word in lx.PREPOSITIONS
            or word in lx.CONJUNCTIONS or word in lx.FILLERS or word == "," or word == "'s")


def _content(word: str) -> bool:
    return not _closed(word) and word not in lx.INDEFINITES


def chunk(words: list[str]) -> list[Item]:
    items: list[Item] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if w == ",":
            items.append(Item("SEP", w))
            i += 1
        elif w in lx.CONJUNCTIONS:
            items.append(Item("CC", w))
            i += 1
        elif w == "to" and i + 1 < n and lx.verb_lemma(words[i + 1]) and not _np_starts(words, i + 1):
            i += 1                                   # infinitive "to": "needs to be red"
        elif w in lx.FILLERS:
            i += 1
        elif w in lx.PREPOSITIONS:
            items.append(Item("PREP", w))
            i += 1
        elif w in lx.PRONOUNS:
            items.append(Item("PRON", w))
            i += 1
        elif w in lx.INDEFINITES:
            items.append(Item("NP", np=NP(None, [w])))
            i += 1
        elif w == "'s":
            if items and items[-1].kind == "NP":     # "the circle's color": the next NP is owned
                owner = items.pop().np
                i = _noun_phrase(words, i + 1, items, det=None, owner=owner)
            else:
                i += 1
        elif lx.verb_lemma(w) and not _inside_phrase(items, words, i):
            i = _verb(words, i, items)
        else:
            det, start = None, i
            while start < n and (words[start] in lx.DETERMINERS or words[start] in lx.POSSESSIVES):
                start += 1                            # "the two", "all the"
            if start > i:
                det = " ".join(words[i:start])
            i = _noun_phrase(words, start, items, det=det, possessive=any(d in lx.POSSESSIVES for d in words[i:start]))
    return items


def _np_starts(words: list[str], i: int) -> bool:
    return i > 0 and words[i - 1] in lx.DETERMINERS


def _inside_phrase(items: list[Item], words: list[str], i: int) -> bool:
    # a verb form right after a determiner is a noun ("a change"); elsewhere it is a verb
    return i > 0 and (words[i - 1] in lx.DETERMINERS or words[i - 1] in lx.POSSESSIVES)


def _verb(words: list[str], i: int, items: list[Item]) -> int:
    lemma = lx.verb_lemma(words[i])
    i += 1
    if i < len(words) and f"{lemma} {words[i]}" in lx.REMOVE_VERBS:   # "take away", "get rid (of)"
        lemma = f"{lemma} {words[i]}"
        i += 1
        if lemma == "get rid" and i < len(words) and words[i] == "of":
            i += 1
    items.append(Item("V", lemma))
    return i


def _noun_phrase(words: list[str], i: int, items: list[Item], det: Optional[str], possessive: bool = False,
                 owner: Optional[NP] = None) -> int:
    """Collect attribute and content words from ``i``; emit an NP, and a VAL for attribute words after its head."""
    run: list[str] = []
    while i < len(words) and _content(words[i]):
        w = words[i]
        if run and lx.verb_lemma(w) and not lx.is_attribute(run[-1]) and w not in lx.ATTRIBUTES:
            break                                     # "the dress has ...": the verb ends the phrase
        run.append(w)
        i += 1
    heads = [k for k, w in enumerate(run) if not lx.is_attribute(w)]
    if not heads:
        if det is None or not run:
            if run:
                items.append(Item("VAL", words=run))
            elif det is not None and not possessive:
                items.append(Item("NP", np=NP(None, [det.split()[-1]])))   # a determiner on its own: "add one"
            return i
        heads = [len(run) - 1]                        # "the red": the last word heads it
    h = heads[-1]
    items.append(Item("NP", np=NP(det, run[: h + 1], possessive=possessive, owner=owner)))
    if h + 1 < len(run):
        items.append(Item("VAL", words=run[h + 1:]))
    return i


def clauses(items: list[Item]) -> list[list[Item]]:
    """Cut before each verb that follows a separator or a conjunction ("..., then make ...", "... and move ...")."""
    out, current = [], []
    k = 0
    while k < len(items):
        item = items[k]
        if item.kind in ("SEP", "CC"):
            j = k
            while j < len(items) and items[j].kind in ("SEP", "CC"):
                j += 1
            if j < len(items) and items[j].kind == "V":
                if current:
                    out.append(current)
                current = []
                k = j
                continue
            if item.kind == "CC":
                current.append(item)
            k += 1
            continue
        current.append(item)
        k += 1
    if current:
        out.append(current)
    return out


# ---------------------------------------------------------------- 3. read
@dataclass
class _EntityDraft:
    noun: str
    attributes: list[str]
    location: Optional[str]
    span: str

    def freeze(self) -> Entity:
        return Entity(self.noun, tuple(self.attributes), self.location, self.span)


class _Reader:
    """Reads clauses one after the other, keeping the entities named so far (for "it")."""

    def __init__(self):
        self.entities: list[_EntityDraft] = []
        self.relations: list[Relation] = []
        self.mentions: list[int] = []
        self.removed: set[int] = set()

    # entities ---------------------------------------------------------
    def new_entity(self, np: NP) -> int:
        self.entities.append(_EntityDraft(np.head, list(np.words[:-1]), None, np.span))
        self.mentions.append(len(self.entities) - 1)
        return len(self.entities) - 1

    def antecedent(self) -> Optional[int]:
        for e in reversed(self.mentions):
            if e not in self.removed and self.entities[e].noun not in lx.SCENE_NOUNS:
                self.mentions.append(e)
                return e
        return None

    def target_of(self, np: NP, rest: list[Item]) -> tuple[Optional[int], Optional[str], int]:
        """(entity acted on, property folded into the predicate, items of ``rest`` consumed)."""
        owner: Optional[int] = None
        if np.possessive:
            owner = self.antecedent()
        elif np.owner is not None:
            owner = self.new_entity(np.owner)
        if owner is not None or np.possessive:
            if np.head in lx.PROPERTIES and len(np.words) == 1:
                return owner, np.head, 0
            part = self.new_entity(np)
            if owner is not None:
                self.relations.append(Relation(part, "of", object=owner))
            return part, None, 0
        if np.head in lx.PROPERTIES and len(np.words) == 1 and len(rest) >= 2 and rest[0].kind == "PREP" \
                and rest[0].word == "of" and rest[1].kind in ("NP", "PRON"):
            of = rest[1]
            entity = self.antecedent() if of.kind == "PRON" else self.new_entity(of.np)
            return entity, np.head, 2
        return self.new_entity(np), None, 0

    # clauses ----------------------------------------------------------
    def read(self, clause: list[Item]) -> None:
        v = next((k for k, it in enumerate(clause) if it.kind == "V"), None)
        if v is None:
            self.describe(clause)
            return
        subject = None
        if v > 0:
            pre = [it for it in clause[:v] if it.kind in ("NP", "PRON")]
            if pre:
                subject = self.refer(pre[-1], [])[0]
        self.act(clause[v].word, subject, clause[v + 1:])

    def refer(self, item: Item, rest: list[Item]) -> tuple[Optional[int], Optional[str], int]:
        if item.kind == "PRON":
            return self.antecedent(), None, 0
        return self.target_of(item.np, rest)

    def describe(self, clause: list[Item]) -> None:
        """A clause without a verb: "a large red circle at the top", "red with white stripes"."""
        self.act("be", None, clause, implicit=True)

    def act(self, verb: str, subject: Optional[int], rest: list[Item], implicit: bool = False) -> None:
        changes = verb in lx.CHANGE_VERBS or verb in lx.MOVE_VERBS or verb in lx.COPULAS
        objects: list[int] = []
        prop: Optional[str] = None
        values: list[str] = []
        k = 0
        while k < len(rest):
            item = rest[k]
            if item.kind in ("NP", "PRON") and (not objects or (k > 0 and rest[k - 1].kind == "CC")
                                                 or not changes):
                entity, p, used = self.refer(item, rest[k + 1:])
                if entity is not None:
                    objects.append(entity)
                prop = prop or p
                k += 1 + used
            elif item.kind == "NP":                       # a second noun phrase after a change verb: the new value
                values.append(item.np.value_text)
                k += 1
            elif item.kind == "VAL":
                values.append(" ".join(item.words))
                k += 1
            elif item.kind == "PREP" and k + 1 < len(rest) and rest[k + 1].kind in ("NP", "VAL", "PRON"):
                k += 2 + self.preposition(verb, item.word, rest[k + 1], rest[k + 2:], objects, subject, values,
                                          changes)
            else:
                k += 1
        focus = objects if objects else [subject]
        predicate = f"{verb} {prop}" if prop else verb
        if verb in lx.STATE_VERBS and objects and not implicit and not prop:   # "the dress has long sleeves"
            for o in objects:
                self.relations.append(Relation(subject, predicate, object=o))
            for value in values:
                self.relations.append(Relation(subject, predicate, value=value))
        elif not (implicit and not values):
            for entity in focus:
                for value in values or [None]:
                    self.relations.append(Relation(entity, predicate, value=value))
        if verb in lx.REMOVE_VERBS:
            self.removed.update(o for o in objects)

    def preposition(self, verb, prep, target: Item, after: list[Item], objects, subject, values, changes) -> int:
        """Attach "PREP target"; return how many items of ``after`` were consumed as well."""
        holder = objects[-1] if objects else subject
        if target.kind == "NP" and target.np.is_place:
            place = " ".join(target.np.words)
            if prep in lx.DIRECTIONAL and changes:
                values.append(place)
            elif prep in lx.LOCATIVE and holder is not None and self.entities[holder].location is None:
                self.entities[holder].location = place
            else:
                self.relations.append(Relation(holder, prep, value=place))
            return 0
        if (prep in lx.DIRECTIONAL and changes) or (prep == "with" and verb in ("replace", "swap")):
            values.append(target.np.value_text if target.kind == "NP" else " ".join(target.words))
            return 0
        if prep == "from" and changes and holder is not None and target.kind in ("VAL", "NP"):
            words = target.words if target.kind == "VAL" else target.np.words
            self.entities[holder].attributes.extend(words)     # the current value describes the reference
            return 0
        if target.kind == "VAL":
            self.relations.append(Relation(holder, prep, value=" ".join(target.words)))
            return 0
        entity, _, used = self.refer(target, after)
        if entity is not None:
            self.relations.append(Relation(holder, prep, object=entity))
        return used


class RuleParser:
    """The built-in parser: see the module docstring."""

    name = "rules"

    def parse(self, text: str) -> ParsedText:
        reader = _Reader()
        for words in sentences(text):
            for clause in clauses(chunk(words)):
                reader.read(clause)
        return ParsedText(text, tuple(e.freeze() for e in reader.entities), tuple(reader.relations), self.name)
