"""A byte-level BPE tokenizer trained on the world's own texts, saved with its model.

The alphabet is printable ASCII and newline (every world text is ASCII; anything else reads
as ``<unk>``). Every attribute word or phrase of the world's captions -- colors, shapes,
patterns, backgrounds, sizes and positions, in all their wordings -- is a token of its own, so
that one token is one decision and a new combination of attributes is a new sequence of known
tokens; only the glue between them merges (", a", " and a", " on a"). A canonical caption is
then 6 tokens per object plus 3 ("... on a gray background"): 27 for four objects, within
30, the captioners' default length. The same words get the same tokens wherever they stand
(in a caption, in an instruction, in an edited caption), so an editor copies by identity.
Every text a ``"<s>"`` starts (a BLIP-2 prompt starts with it, after the image tokens).
"""

from __future__ import annotations

import re
from typing import Iterable

from zscir.world.captions import PATTERN_WORDS, POSITION_WORDS, SIZE_WORDS
from zscir.world.spec import BACKGROUNDS, COLORS, PATTERNS, SHAPES

# words and phrases that stay tokens of their own (with their leading space, if any); longest first, so
# that "at the top left" is one token and not "at the top" + " left"
_PHRASES = (*COLORS, *SHAPES, *PATTERNS, *BACKGROUNDS, *(w for words in SIZE_WORDS.values() for w in words),
            *(w for words in PATTERN_WORDS.values() for w in words if w), *(w for words in POSITION_WORDS for w in words), "background")
ATOMIC_WORDS = tuple(sorted(dict.fromkeys(_PHRASES), key=lambda w: (-len(w), w)))
ATOMIC_PATTERN = r" ?\b(?:" + "|".join(map(re.escape, ATOMIC_WORDS)) + r")\b"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
# user/assistant turns as plain lines: what the world's editor reads and what a chat endpoint is sent
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 768, bos: bool = True, chat_template: str | None = None):
    """A transformers fast tokenizer (GPT-2 style byte-level BPE) trained on ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # heavy
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ATOMIC_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c == "\u010a" or 33 <= ord(c) < 127 or c == "\u0120"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=alphabet,
                                  show_progress=False, limit_alphabet=len(alphabet))
    tok.train_from_iterator(texts, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def special_ids(tokenizer) -> dict:
    return dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
