"""English word classes: closed classes and attribute words of the rule-based parser, and the
caption splitter's (zscir.data.splitter) tagger classes.

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


# --- captions: the word classes of the caption splitter's tagger (zscir.data.splitter) -----------------
# Its own sets where a class means something else there (a caption's determiners take possessives,
# its verbs are what captions show people and animals doing).


SINGULAR_DETERMINERS = {"a", "an", "one", "this", "that", "each", "every", "another", "single"}
CAPTION_DETERMINERS = SINGULAR_DETERMINERS | {
    "the", "these", "those", "some", "several", "many", "few", "any", "his", "her", "their", "its", "my",
    "our", "your", "both", "all", "no", "other", "multiple", "numerous", "various"}
NUMBERS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "twenty", "hundred", "hundreds", "dozens", "thousands"}
CAPTION_PREPOSITIONS = {
    "about", "above", "across", "after", "against", "along", "alongside", "amid", "among", "around", "as", "at",
    "atop", "before", "behind", "below", "beneath", "beside", "besides", "between", "beyond", "by", "down",
    "during", "except", "for", "from", "in", "inside", "into", "like", "near", "next", "of", "off", "on", "onto",
    "out", "outside", "over", "past", "per", "through", "throughout", "to", "toward", "towards", "under",
    "underneath", "until", "up", "upon", "via", "with", "within", "without", "than", "while", "whilst"}
CAPTION_CONJUNCTIONS = {"and", "or", "but", "nor", "&"}
RELATIVES = {"that", "which", "who", "whom", "whose", "where", "when", "what"}
AUXILIARIES = {"is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "does", "do", "did",
               "can", "could", "will", "would", "may", "might", "must", "should", "isn't", "aren't", "'s"}
PERSONAL_PRONOUNS = {"he", "she", "they", "it", "we", "i", "you", "someone", "somebody", "something",
                     "everyone", "everybody", "anyone", "nobody"}
ADVERBS = {"very", "really", "quite", "extremely", "so", "too", "just", "also", "still", "almost", "partially",
           "half", "fully", "nearly", "mostly", "slightly", "brightly", "freshly", "highly", "well", "not",
           "together", "here", "there", "then", "now", "away", "back", "again", "alone", "outdoors", "indoors",
           "upside", "closely", "neatly", "perfectly", "beautifully"}

ADJECTIVES = {
    # colour and light
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "gray", "grey", "brown",
    "silver", "gold", "golden", "beige", "tan", "maroon", "navy", "teal", "turquoise", "cyan", "magenta",
    "violet", "crimson", "dark", "light", "bright", "pale", "colorful", "colourful", "multicolored",
    "multicolor", "multi", "blond", "blonde", "transparent", "clear", "shiny", "dim", "sunny", "cloudy",
    # size and shape
    "large", "small", "big", "little", "tiny", "huge", "giant", "massive", "enormous", "tall", "short", "long",
    "wide", "narrow", "thin", "thick", "fat", "skinny", "round", "square", "oval", "circular", "triangular",
    "rectangular", "flat", "deep", "high", "low", "medium", "miniature", "mini", "oversized",
    # age, state, quality
    "young", "old", "elderly", "new", "older", "ancient", "modern", "vintage", "antique", "rustic", "retro",
    "beautiful", "pretty", "cute", "adorable", "handsome", "happy", "sad", "angry", "busy", "empty", "full",
    "clean", "dirty", "wet", "dry", "open", "closed", "hot", "cold", "warm", "cool", "fresh", "frozen",
    "delicious", "tasty", "healthy", "lush", "grassy", "sandy", "snowy", "rocky", "foggy", "rainy", "dusty",
    "muddy", "fluffy", "furry", "fuzzy", "hairy", "curly", "wooden", "metal", "metallic", "plastic", "leather",
    "ornate", "fancy", "cluttered", "messy", "tidy", "crowded", "cozy", "nice", "good", "great", "fine",
    "assorted", "different", "same", "other", "double", "triple", "wild", "domestic", "professional", "male",
    "female", "asian", "african", "indian", "italian", "chinese", "japanese", "mexican", "french", "british",
    "american", "european", "electric", "electronic", "digital", "public", "private", "commercial", "military",
    "giant", "lone", "lonely", "ugly", "lovely", "friendly", "silly", "early", "late", "daily", "empty", "quiet",
    "calm", "heavy", "soft", "hard", "sharp", "smooth", "rough", "huge", "main", "whole", "half", "extra",
    "real", "fake", "toy", "homemade", "various", "vibrant", "vivid", "sleek", "shallow", "steep", "strange",
    "funny", "decorative", "stainless", "outdoor", "indoor", "first", "second", "third", "last", "next", "front",
    "rear", "upper", "lower", "left", "right", "top", "central", "middle", "several", "numerous", "close",
    # patterns and textures (also the shapes world's)
    "striped", "stripy", "dotted", "spotted", "checkered", "checked", "plaid", "polka", "solid", "plain",
    "patterned", "hollow", "filled", "outlined", "dashed", "shaded", "textured", "floral", "gradient", "glossy",
    "matte", "stuffed", "frosted", "sliced", "grilled", "fried", "baked", "roasted", "cooked", "chopped",
    "decorated", "painted", "framed", "lit",
    # predicative "a-" adjectives
    "asleep", "awake", "alone", "afloat", "ablaze", "adrift", "alive", "aloft", "ashore", "askew", "apart"}

# Words that are adjectives before a noun but nouns after one ("a light switch" / "a traffic light").
NOUN_AFTER_NOUN = {"light", "square", "gold", "silver", "metal", "plastic", "leather", "toy", "top", "front",
                   "back", "orange", "navy", "double", "giant", "half", "mini", "solid", "flat", "high",
                   "left", "right", "rear", "middle", "second", "extra", "fake", "close", "plain", "main"}

# Nouns that end like participles.
ING_NOUNS = {"thing", "king", "ring", "wing", "string", "swing", "spring", "ceiling", "building", "clothing",
             "painting", "drawing", "wedding", "morning", "evening", "railing", "awning", "icing", "frosting",
             "pudding", "dumpling", "earring", "sibling", "stuffing", "filling", "topping", "crossing", "sting",
             "offspring", "sling", "duckling", "seedling", "lightning", "housing", "siding", "landing", "opening",
             "setting", "clearing", "carving", "bedding", "dressing", "seasoning", "sign", "ping", "bling"}
ED_NOUNS = {"bed", "shed", "sled", "seed", "weed", "feed", "speed", "steed", "breed", "tweed", "reed", "red",
            "need", "flatbed", "seabed", "sunbed", "hundred", "creed"}
IRREGULAR_PARTICIPLES = {"made", "built", "hung", "held", "worn", "sat", "laid", "left", "shown", "seen",
                         "taken", "given", "done", "spread", "stuck", "caught", "drawn", "written", "broken",
                         "fallen", "grown", "known", "ridden", "driven", "thrown", "flown", "eaten", "hidden",
                         "shaken", "stolen", "woven", "bound", "found", "bent", "kept", "set", "put", "cut",
                         "split", "shot", "stood", "ran", "sold", "told", "brought", "bought", "taught", "led"}

# Verbs common in captions; their 3rd-person forms end a subject ("a cat sits on ...").
CAPTION_VERBS = {
    "sit", "stand", "hold", "ride", "walk", "run", "lay", "lie", "play", "eat", "look", "fly", "wear", "carry",
    "pose", "hang", "rest", "park", "watch", "wait", "cross", "climb", "jump", "swing", "throw", "catch", "kick",
    "hit", "swim", "surf", "ski", "skate", "drive", "talk", "read", "write", "cut", "cook", "prepare", "pull",
    "push", "fill", "cover", "contain", "show", "feature", "display", "sleep", "smile", "laugh", "drink", "chew",
    "graze", "float", "sail", "travel", "move", "go", "come", "lean", "perch", "reach", "point", "stare", "take",
    "make", "use", "help", "feed", "pet", "hug", "kiss", "brush", "open", "close", "stack", "line", "grow",
    "bloom", "shine", "sing", "dance", "fish", "roll", "serve", "sell", "set", "sets", "head", "wash", "dry",
    "bite", "lick", "nibble", "sniff", "peek", "hide", "crawl", "fall", "drop", "pour", "slice", "check", "cuddle",
    "stretch", "rise", "sink", "overlook", "face", "touch", "grab", "kneel", "tower", "loom", "stroll", "race",
    "pass", "pedal", "paddle", "wade", "lounge", "relax", "prepare", "appear", "seem", "remain", "get", "give",
    "have", "hold", "keep", "pose", "practice", "enjoy", "wander", "roam", "march", "fight", "play", "work",
    "blow", "splash", "glide", "soar", "dive", "hover", "land", "take", "hang", "sip", "munch", "gaze", "admire"}

IRREGULAR_PLURALS = {"people", "men", "women", "children", "feet", "teeth", "mice", "geese", "police", "cattle"}

# A noun like these followed by "of" hands the subject to its complement.
PARTITIVE_NOUNS = {
    "group", "groups", "couple", "pair", "bunch", "bunches", "herd", "flock", "crowd", "set", "pile", "piles",
    "stack", "stacks", "plate", "plates", "bowl", "bowls", "cup", "cups", "glass", "glasses", "mug", "slice",
    "slices", "piece", "pieces", "box", "boxes", "bottle", "bottles", "basket", "tray", "row", "rows", "line",
    "lot", "lots", "number", "variety", "collection", "bundle", "bouquet", "bag", "bags", "jar", "pack", "team",
    "family", "display", "close up", "closeup", "close-up", "picture", "pictures", "photo", "photos",
    "photograph", "image", "view", "shot", "drawing", "painting", "sketch", "illustration", "selfie", "cartoon",
    "handful", "loaf", "sheet", "pot", "pan", "carton", "can", "bucket", "dozen", "kind", "type", "sort",
    "assortment", "array", "swarm", "school", "pod", "pride", "troop", "gaggle", "litter", "field", "mountain",
    "heap", "cluster", "series", "bunch", "platter", "dish", "serving", "portion", "bite", "sandwich-board",
    "table", "shelf", "rack", "fleet", "parade", "line-up", "lineup", "close", "side", "top", "front", "bottom",
    "back", "end", "edge", "corner", "middle", "part", "half", "pile", "load", "truckload",
    "bowlful", "spoonful", "herds", "flocks", "pairs", "sets", "teams", "wall", "window", "map", "statue",
    "model", "poster", "screenshot", "rendering", "render", "photography", "shelves", "box", "crate", "sack",
    "vase", "pitcher", "bouquets", "plateful", "cartoon", "print", "silhouette", "reflection"}

NOUNS_ENDING_LY = {"family", "butterfly", "dragonfly", "firefly", "belly", "lily", "jelly", "holly", "rally",
                   "ally", "bully", "assembly", "supply", "italy", "july", "anomaly", "monopoly", "trolly"}

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
