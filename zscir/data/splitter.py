"""Split a caption into a subject part and an attribute part, as FTI4CIR pretraining needs.

"a man riding a wave on top of a surfboard" -> ("a man", "riding a wave on top of a surfboard")

The subject is the caption up to and including the head noun of its first noun
phrase: determiners, adjectives and compound nouns are kept with it ("a red
double decker bus", "a fire hydrant"), and a quantity, container or framing
noun followed by "of" takes its complement ("a group of people", "a plate of
food", "a black and white photo of a cat"), and so does a background followed
by "with" ("a white background with a red apple"). The attribute is the rest. Before
splitting, trailing repeated words are dropped ("... a table table" -> "... a
table"), so are BLIP's filler openings ("there is", "this is") and its
"arafed" artifact; captions under 4 words, and captions that are only a noun
phrase, are dropped (None), as in FTI4CIR.

Two taggers feed one noun-phrase parser: spaCy when an English pipeline is
installed, else a built-in rule-based tagger (closed-class word lists,
suffixes and context; unknown words are nouns) that needs no downloaded model.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from zscir.errors import ZscirError
from zscir.text.lexicon import (ADJECTIVES, ADVERBS, AUXILIARIES, CAPTION_CONJUNCTIONS as CONJUNCTIONS,
                                CAPTION_DETERMINERS as DETERMINERS, CAPTION_PREPOSITIONS as PREPOSITIONS,
                                CAPTION_VERBS as VERBS, ED_NOUNS, ING_NOUNS, IRREGULAR_PARTICIPLES,
                                IRREGULAR_PLURALS, NOUNS_ENDING_LY, NOUN_AFTER_NOUN, NUMBERS, PARTITIVE_NOUNS,
                                PERSONAL_PRONOUNS, RELATIVES, SINGULAR_DETERMINERS)

MIN_WORDS = 4

def _verb_s_base(word: str) -> str | None:
    """The base form when ``word`` is a 3rd-person form of a known verb (sits, watches, flies)."""
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in VERBS:
            return word[: -len(suffix)] + replacement
    return None


# Openings that say nothing about the image (BLIP-large often starts with them).
FILLER_OPENINGS = (("there", "is"), ("there", "are"), ("this", "is"), ("it", "is"), ("here", "is"),
                   ("there's",), ("this", "is", "an", "image", "of"))
# BLIP's hallucinated word for a subject it cannot name ("arafed man", "araffe woman").
ARTIFACT_WORDS = {"arafed", "araffe", "arafe", "araffed", "arafly", "araf", "arafe's", "araffes"}

_PUNCT = "\"'()[]{}.,;:!?"


def clean_caption(caption: str) -> list[str]:
    """Words of the caption after FTI4CIR's cleaning: no trailing repeats, no filler opening, no artifacts."""
    words = [w for w in caption.strip().rstrip(".!?").split() if w.strip(_PUNCT)]
    words = [w for w in words if w.lower().strip(_PUNCT) not in ARTIFACT_WORDS]
    # Trailing repeated words: "... on a table table table" -> "... on a table".
    while len(words) > 1 and words[-1].lower().strip(_PUNCT) == words[-2].lower().strip(_PUNCT):
        words.pop()
    lowered = [w.lower().strip(_PUNCT) for w in words]
    for opening in sorted(FILLER_OPENINGS, key=len, reverse=True):
        if tuple(lowered[: len(opening)]) == opening:
            words = words[len(opening):]
            break
    return words


# --- tags --------------------------------------------------------------------------------------
# DET NUM ADJ ADV NOUN POSS ING ED VERB VERB_S ADP CONJ REL AUX PRON

def rule_tags(words: Sequence[str]) -> list[str]:
    """A tag per word from word lists and suffixes; unknown words are nouns (the open class)."""
    return [_rule_tag(w.lower().strip(_PUNCT)) for w in words]


def _rule_tag(w: str) -> str:
    if w in DETERMINERS:
        return "DET"
    if w in NUMBERS or w.isdigit():
        return "NUM"
    if w in PREPOSITIONS:
        return "ADP"
    if w in CONJUNCTIONS:
        return "CONJ"
    if w in RELATIVES:
        return "REL"
    if w in AUXILIARIES:
        return "AUX"
    if w in PERSONAL_PRONOUNS:
        return "PRON"
    if w in ADJECTIVES:
        return "ADJ"
    if w in ADVERBS:
        return "ADV"
    if w.endswith(("'s", "s'")) and len(w) > 2:
        return "POSS"
    if w.endswith("ly") and len(w) > 4 and w not in NOUNS_ENDING_LY:
        return "ADV"
    if w.endswith("ing") and len(w) > 4 and w not in ING_NOUNS:
        return "ING"
    if w in IRREGULAR_PARTICIPLES or (w.endswith("ed") and len(w) > 4 and w not in ED_NOUNS):
        return "ED"
    if _verb_s_base(w):
        return "VERB_S"
    return "NOUN"


SPACY_TAGS = {"DET": "DET", "NUM": "NUM", "ADJ": "ADJ", "ADV": "ADV", "NOUN": "NOUN", "PROPN": "NOUN",
              "ADP": "ADP", "CCONJ": "CONJ", "SCONJ": "REL", "AUX": "AUX", "PRON": "PRON", "PART": "ADP",
              "PUNCT": "ADP", "INTJ": "ADV", "SYM": "NOUN", "X": "NOUN"}


def spacy_tags(nlp, words: Sequence[str]) -> list[str]:
    """Tags from a spaCy pipeline run on exactly our words (no re-tokenisation, so indices line up)."""
    from spacy.tokens import Doc

    doc = Doc(nlp.vocab, words=[w.strip(_PUNCT) or w for w in words])
    for _, component in nlp.pipeline:
        doc = component(doc)
    tags = []
    for token in doc:
        if token.pos_ in ("VERB",):
            tags.append({"VBG": "ING", "VBN": "ED", "VBD": "ED"}.get(token.tag_, "VERB"))
        elif token.tag_ == "POS" or token.text.lower().endswith("'s"):
            tags.append("POSS")
        elif token.pos_ == "PRON" and token.lower_ in RELATIVES:
            tags.append("REL")
        else:
            tags.append(SPACY_TAGS.get(token.pos_, "NOUN"))
    return tags


# --- the noun-phrase parser shared by both taggers ---------------------------------------------

def noun_phrase_end(words: Sequence[str], tags: Sequence[str], start: int = 0) -> int | None:
    """Index just past the head of the noun phrase starting at ``start`` (or None if there is none)."""
    lowered = [w.lower().strip(_PUNCT) for w in words]
    n = len(words)
    head = None          # index of the current head noun
    last_modifier = None  # index of the last adjective-like word (a head when no noun follows)
    determiner = None
    i = start
    while i < n:
        tag, word = tags[i], lowered[i]
        nxt = tags[i + 1] if i + 1 < n else None
        if tag in ("DET", "NUM") and head is None and last_modifier is None:
            determiner = determiner or word
        elif tag in ("ADJ", "POSS", "ADV") and head is None:
            if tag != "ADV":
                last_modifier = i
        elif tag == "CONJ" and head is None and last_modifier is not None and nxt in ("ADJ", "ED", "ING"):
            pass  # "a black and white cat"
        elif tag == "POSS":  # "a man's hand": the possessor becomes a modifier
            head, last_modifier = None, i
        elif tag == "ADJ" and word in NOUN_AFTER_NOUN:
            head = i  # "a traffic light", "a table top"
        elif tag == "ADJ" and nxt in ("NOUN", "ADJ"):
            head, last_modifier = None, i  # "a lime striped circle": the unknown "noun" was a modifier
        elif tag == "NOUN" and head is not None and _unknown_verb_s(word, lowered[head], determiner, nxt):
            break  # "a skateboarder performs a trick": an unlisted verb
        elif tag == "NOUN" or tag == "PRON" and head is None and last_modifier is None:
            head = i
        elif tag == "ED" and head is not None and nxt == "NOUN":
            head, last_modifier = None, i  # "a mauve speckled cone": the unknown colour was a modifier
        elif tag in ("ING", "ED"):
            if head is not None:
                break  # "a man riding ...", "a car parked ..."
            if nxt in ("NOUN", "ADJ", "ING", "ED", "VERB_S", "POSS"):
                last_modifier = i  # "a sliding door", "a striped shirt"
            elif determiner is not None or last_modifier is not None:
                head = i  # "a painting of ...", "a drawing"
            else:
                break  # a caption that opens with a verb ("sitting on a bench") has no subject
        elif tag == "VERB_S":
            if head is not None and _reads_as_verb(word, lowered[head], determiner, nxt):
                break  # "a cat sits on ..."
            head = i  # "two plastic swings", "some drinks"
        elif tag == "VERB":
            if head is not None:
                break
            last_modifier = i
        else:
            break  # a preposition, conjunction, auxiliary, relative or adverb after the head
        if words[i].endswith(","):
            i += 1
            break
        i += 1
    end = head if head is not None else last_modifier
    return None if end is None else end + 1


def _reads_as_verb(word: str, head_word: str, determiner: str | None, next_tag: str | None) -> bool:
    """After a head noun, is this -s word a verb ("a dog chews on") rather than a plural noun ("tennis shoes")?"""
    singular_head = head_word in PERSONAL_PRONOUNS or not (
        head_word in IRREGULAR_PLURALS or (head_word.endswith("s") and not head_word.endswith("ss")))
    if not singular_head:
        return False
    if determiner is not None and determiner not in SINGULAR_DETERMINERS and determiner != "the":
        return False
    # Known verbs count whatever follows; other -s words only before a function word.
    return _verb_s_base(word) is not None or next_tag in (None, "DET", "ADP", "ADV", "PRON", "NUM")


def _unknown_verb_s(word: str, head_word: str, determiner: str | None, next_tag: str | None) -> bool:
    """An unlisted -s word after a singular noun with a singular article, before a function word, is a verb."""
    return (determiner in SINGULAR_DETERMINERS and word.endswith("s") and not word.endswith(("ss", "us", "is"))
            and _reads_as_verb(word, head_word, determiner, next_tag))


# A noun like these followed by "with" hands the subject to what is shown on it
# ("a white background with a red apple": the apple is the subject).
BACKDROP_NOUNS = {"background", "backdrop"}
# linking word -> the nouns it extends the subject through
SUBJECT_EXTENDERS = {"of": PARTITIVE_NOUNS, "with": BACKDROP_NOUNS}


def subject_end(words: Sequence[str], tags: Sequence[str]) -> int | None:
    """End of the subject: the first noun phrase, extended through "of" after a partitive noun."""
    end = noun_phrase_end(words, tags, 0)
    lowered = [w.lower().strip(_PUNCT) for w in words]
    while end is not None and end + 1 < len(words) and not words[end - 1].endswith(","):
        extends = SUBJECT_EXTENDERS.get(lowered[end], ())
        two_words = " ".join(lowered[end - 2:end]) if end >= 2 else ""
        if lowered[end - 1] not in extends and two_words not in extends:
            break
        inner = noun_phrase_end(words, tags, end + 1)
        if inner is None:
            break
        end = inner
    return end


def _merge_close_up(words: list[str]) -> list[str]:
    """Treat "close up" as one noun, so that "a close up of a cat" parses as a framing noun."""
    out, i = [], 0
    while i < len(words):
        if i + 1 < len(words) and words[i].lower() == "close" and words[i + 1].lower().strip(_PUNCT) == "up":
            out.append(words[i] + " " + words[i + 1])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


# --- the splitter ------------------------------------------------------------------------------

class CaptionSplitter:
    """``split(caption) -> (subject, attribute)`` or None when the caption is dropped."""

    def __init__(self, name: str, tagger: Callable[[Sequence[str]], list[str]]):
        self.name, self.tagger = name, tagger

    def split(self, caption: str) -> tuple[str, str] | None:
        words = clean_caption(caption)
        if len(words) < MIN_WORDS:
            return None
        words = _merge_close_up(words)
        tags = self.tagger(words)
        tags = ["NOUN" if " " in w else t for w, t in zip(words, tags)]
        end = subject_end(words, tags)
        if end is None or end >= len(words):
            return None  # no noun phrase, or nothing left to be the attribute
        subject = " ".join(words[:end]).rstrip(",")
        attribute = " ".join(words[end:]).lstrip(", ").strip()
        return (subject, attribute) if attribute.strip(_PUNCT) else None

    def __repr__(self) -> str:
        return f"CaptionSplitter({self.name!r})"


SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")


def _load_spacy():
    try:
        import spacy
    except ImportError:
        return None
    for name in SPACY_PIPELINES:
        try:
            return name, spacy.load(name, disable=["ner", "parser", "lemmatizer"])
        except (OSError, ImportError):
            continue
    return None


class OfficialFTI4CIRSplitter:
    """The caption split of FTI4CIR's own pretraining data (``split_caption`` in its ``src/blip_caption.py``).

    Rewritten from its description, quirks included, so that ``--recipe fti4cir-official``
    builds the pairs the official run trained on:

    1. ``caption.split()``; trailing repeats of the last word are dropped (one kept);
    2. under 4 words: (caption, caption), i.e. dropped (pairs with subject == attribute are not used);
    3. spaCy ``en_core_web_sm`` (the whole pipeline) tags it; the subject is the spaCy tokens up to and
       including the first ``NOUN``, the attribute the tokens after it, each joined with single spaces
       (so "man's" becomes "man 's");
    4. with no ``NOUN``, the split is by *characters*: ``caption[:2]`` / ``caption[2:]``;
    5. when the caption's character length is at most noun position + 2, the attribute is the subject.

    ``nlp`` is any callable returning tokens with ``.text`` and ``.pos_`` (spaCy's ``Doc``).
    """

    name = "fti4cir-official"

    def __init__(self, nlp):
        self.nlp = nlp

    def split(self, caption: str) -> tuple[str, str] | None:
        words = caption.split()
        if not words:
            return None
        keep = len(words)
        for u in range(len(words) - 2, -1, -1):
            if words[u] != words[-1]:
                break
            keep -= 1
        result = " ".join(words[:keep])
        if len(result.split()) < MIN_WORDS:
            return None
        doc = list(self.nlp(result))
        first_noun = next((j + 1 for j, tok in enumerate(doc) if tok.pos_ == "NOUN"), None)
        subject, attribute = result[0:2], result[2:]
        if first_noun is not None:
            subject = " ".join(tok.text for tok in doc[:first_noun])
            attribute = " ".join(tok.text for tok in doc[first_noun:])
            if len(result) <= first_noun + 2:
                attribute = subject
        return None if subject == attribute else (subject, attribute)

    def __repr__(self) -> str:
        return "OfficialFTI4CIRSplitter()"


def load_official_spacy():
    """spaCy's ``en_core_web_sm``, loaded whole as FTI4CIR's caption script loads it; one line when missing."""
    try:
        import spacy
    except ImportError:
        raise ZscirError("splitter 'fti4cir-official' needs spaCy and en_core_web_sm: pip install spacy && "
                         "python -m spacy download en_core_web_sm (or use --splitter auto)") from None
    try:
        return spacy.load("en_core_web_sm")
    except (OSError, ImportError):
        raise ZscirError("splitter 'fti4cir-official' needs spaCy's English pipeline en_core_web_sm: "
                         "python -m spacy download en_core_web_sm") from None


SPLITTERS = ("auto", "rules", "spacy", "fti4cir-official")


@functools.lru_cache(maxsize=None)
def get_splitter(backend: str = "auto"):
    """``"rules"``, ``"spacy"`` (an installed English pipeline), ``"auto"`` (spaCy if available), or
    ``"fti4cir-official"`` (FTI4CIR's own first-noun split, needs spaCy's en_core_web_sm)."""
    if backend not in SPLITTERS:
        raise ZscirError(f"splitter {backend!r}: expected 'auto', 'rules' or 'spacy' (or 'fti4cir-official', "
                         f"FTI4CIR's own split)")
    if backend == "fti4cir-official":
        return OfficialFTI4CIRSplitter(load_official_spacy())
    if backend in ("auto", "spacy"):
        loaded = _load_spacy()
        if loaded is not None:
            name, nlp = loaded
            return CaptionSplitter(f"spacy:{name}", functools.partial(spacy_tags, nlp))
        if backend == "spacy":
            raise ZscirError("splitter 'spacy' needs spaCy and an English pipeline "
                             "(pip install spacy; python -m spacy download en_core_web_sm)")
    return CaptionSplitter("rules", rule_tags)


def split_caption(caption: str, backend: str = "auto") -> tuple[str, str] | None:
    """(subject, attribute) of a caption, or None when it is dropped (too short, no attribute)."""
    return get_splitter(backend).split(caption)
