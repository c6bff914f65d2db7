"""Closed word classes and attribute words for the rule-based parser.

Open-class words (nouns, unknown adjectives) are not listed: inside a noun
phrase the last word that is not an attribute word is its head. The
attribute list covers what modification texts change (colors, sizes,
patterns, materials, garment and shape details); unknown adjectives are
caught by their suffixes (-ed, -less, -ful, -ish, -ous, -ive).
"""

from __future__ import annotations

DETERMINERS = frozenset("""a an the another some any this that these those each every no both all one two three
four five six several many few other""".split())
POSSESSIVES = frozenset("its their his her my your our".split())
PRONOUNS = frozenset("it them they itself".split())          # refer back to an entity named before
INDEFINITES = frozenset("something anything everything nothing".split())  # stand for an entity themselves
PREPOSITIONS = frozenset("""at in on to into onto of with without from near above below under over behind beside
besides next by for toward towards around inside outside across between along through upon via instead""".split())
DIRECTIONAL = frozenset("to into onto toward towards".split())   # after a change or move verb: the new value
LOCATIVE = frozenset("at in on near by inside".split())          # "the circle at the top": where it is
CONJUNCTIONS = frozenset("and or but then while plus".split())
FILLERS = frozenset("""please also instead just now so too simply only still rather should must can could would
will shall may might need needs want wants let i we you like""".split())
PARTICLES = frozenset("away off out up down over rid".split())     # "take away", "get rid of"

# verbs and what their lemma is; every inflection is derived below
VERBS = frozenset("""make turn change transform convert alter modify switch replace give set paint dye recolor
recolour swap move shift put place slide push drag relocate add insert include attach remove delete erase drop
eliminate take get use have show wear feature keep be become look appear want need increase decrease reduce
enlarge shrink extend shorten lengthen darken lighten brighten fill rotate flip""".split())
IRREGULAR = {"made": "make", "gave": "give", "given": "give", "took": "take", "taken": "take", "got": "get",
             "gotten": "get", "has": "have", "had": "have", "is": "be", "are": "be", "was": "be", "were": "be",
             "been": "be", "being": "be", "am": "be", "shown": "show", "wore": "wear", "worn": "wear",
             "kept": "keep", "became": "become", "put": "put", "set": "set", "shrank": "shrink", "shrunk": "shrink"}
CHANGE_VERBS = frozenset("""make turn change transform convert alter modify switch replace give set paint dye recolor
recolour swap become increase decrease reduce enlarge shrink extend shorten lengthen darken lighten brighten fill
rotate flip""".split())
MOVE_VERBS = frozenset("move shift put place slide push drag relocate".split())
REMOVE_VERBS = frozenset({"remove", "delete", "erase", "drop", "eliminate", "take away", "take off", "take out",
                          "get rid"})
COPULAS = frozenset("be become look appear".split())
STATE_VERBS = frozenset("have wear feature show".split()) | COPULAS   # "(it) has X": X is part of the subject

# nouns that name a property of another entity: "the color of the circle", "its size"
PROPERTIES = frozenset("""color colour size shape pattern texture material length style position location fabric
print shade tone hue orientation width height design fit type kind""".split())
# nouns for the whole picture: "it" does not refer to them ("make the background gray and make it red")
SCENE_NOUNS = frozenset("background foreground scene image picture photo photograph".split())
# words of a place: "the top left", "the bottom right corner", "the middle"
PLACES = frozenset("top bottom left right center centre middle corner upper lower side front back edge".split())

COLORS = frozenset("""red orange yellow green cyan blue purple pink black white gray grey brown beige tan navy
maroon teal turquoise violet magenta gold golden silver khaki olive cream ivory burgundy lavender lilac coral
mint peach charcoal indigo aqua colorful colourful multicolored multicoloured monochrome dark light pale bright
neon pastel darker lighter brighter""".split())
SIZES = frozenset("""small little large big tiny huge giant smaller bigger larger tinier tall taller short shorter
long longer wide wider narrow narrower thin thinner thick thicker loose looser tight tighter baggy slim mini
midi maxi oversized cropped full half""".split())
PATTERNS = frozenset("""solid plain striped stripy dotted spotted checked checkered chequered plaid floral
printed patterned polka graphic textured tie-dye camo camouflage paisley houndstooth""".split())
MATERIALS = frozenset("""leather denim cotton silk wool woolen woollen lace lacy sheer satin velvet knit knitted
linen suede metallic shiny glossy matte transparent furry fluffy""".split())
DEGREE = frozenset("more less very slightly much bit somewhat extra fully".split())
OTHER_ATTRIBUTES = frozenset("""sleeveless strapless backless v-neck round square-neck casual formal elegant
sporty simple fancy modern vintage new old same different empty""".split())
ATTRIBUTES = COLORS | SIZES | PATTERNS | MATERIALS | DEGREE | OTHER_ATTRIBUTES
ADJECTIVE_SUFFIXES = ("ed", "less", "ful", "ish", "ous", "ive")
NOT_ADJECTIVES = frozenset("bed shed sled red".split()) - COLORS   # nouns that look like adjectives


def verb_lemma(word: str) -> str | None:
    """The lemma of ``word`` when it is a form of a known verb, else None."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in VERBS:
        return word
    for suffix, restore in (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""),
                            ("ed", "e"), ("d", "")):
        if word.endswith(suffix):
            stem = word[: -len(suffix)] + restore
            if stem in VERBS:
                return stem
            if len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in VERBS:  # "dropped", "swapping"
                return stem[:-1]
    return None


def is_attribute(word: str) -> bool:
    if word in ATTRIBUTES:
        return True
    if word in NOT_ADJECTIVES or word in PLACES:
        return False
    return len(word) > 4 and word.endswith(ADJECTIVE_SUFFIXES)
