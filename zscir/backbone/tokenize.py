"""open_clip's BPE tokenization, with a per-word cache for plain ASCII text (same ids, faster: eval/bench_tokenizer.py).

open_clip's ``SimpleTokenizer`` cleans every text (ftfy, HTML unescape,
whitespace, lower case) and splits it with a regex whose matches never span
whitespace, so a text's ids are the concatenation of its words' ids. For
printable ASCII without ``&`` the cleaning is the identity up to whitespace
and case (ftfy only changes non-ASCII, control characters and HTML
entities), so caching ids per word is exact there; other texts go through
the full tokenizer. The full path can cost more than a GPU's text-tower pass
(measured by eval/bench_tokenizer.py; docs/encoding_performance.md): FTI4CIR
pretraining tokenizes four prompts per sample.
"""

from __future__ import annotations

import string

import torch

from zscir.errors import ZscirError

_PLAIN = frozenset(string.ascii_letters + string.digits + string.punctuation.replace("&", "") + " \t\n")


def is_plain(text: str) -> bool:
    """True when per-word tokenization is exact for ``text``: printable ASCII without ``&``."""
    return _PLAIN.issuperset(text)


class WordCachedTokenizer:
    """The ids of ``tokenizer`` (an open_clip ``SimpleTokenizer``), memoised per whitespace-separated word."""

    def __init__(self, tokenizer, max_words: int = 500_000):
        self.tokenizer = tokenizer
        self.max_words = max_words
        self.words: dict[str, list[int]] = {}

    @staticmethod
    def supports(tokenizer) -> bool:
        """Only open_clip's own BPE tokenizer with its default cleaning and plain truncation."""
        from open_clip.tokenizer import SimpleTokenizer, _clean_lower

        return (isinstance(tokenizer, SimpleTokenizer) and getattr(tokenizer, "reduction_fn", None) is None
                and getattr(tokenizer, "clean_fn", None) is _clean_lower)

    def encode(self, text: str) -> list[int]:
        if not is_plain(text):
            return self.tokenizer.encode(text)
        if len(self.words) > self.max_words:  # a bounded cache: start over rather than grow without end
            self.words.clear()
        ids = []
        for word in text.split():
            word_ids = self.words.get(word)
            if word_ids is None:
                word_ids = self.words[word] = self.tokenizer.encode(word)
            ids += word_ids
        return ids

    def __call__(self, texts: list[str], context_length: int | None = None, truncate: bool = True) -> torch.Tensor:
        """Long tensor [len(texts), context_length], exactly as ``tokenizer(texts, context_length)``.

        Too long texts are truncated as open_clip does, or with ``truncate=False`` refused.
        """
        context_length = context_length or self.tokenizer.context_length
        sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        rows = []
        for text in texts:
            ids = [sot] + self.encode(text) + [eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ZscirError(f"text longer than the context length ({len(ids)} > {context_length} tokens): {text!r}")
                ids = ids[:context_length - 1] + [eot]
            rows.append(ids + [0] * (context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), context_length)
