"""What every generator is: an identity, decoding settings, a prompt, and a batch call.

Two kinds of generators share this interface:

- a :class:`Captioner` captions images: ``caption(items, images) -> list[str | list[str] | None]``;
- an :class:`Editor` rewrites a caption as an instruction says:
  ``edit(pairs) -> list[str | list[str] | None]`` with ``pairs`` a list of :class:`EditInput`.

Each element is one output (a string), N outputs (a list of N strings, when
``decoding.n > 1``) or None (no output for that input). A generator's ``identity`` is a
string naming everything its outputs depend on: backend, model and revision or file hash,
decoding (:meth:`Decoding.tag`) and the prompt's hash (:meth:`PromptTemplate.tag`); the
generation cache keys its entries by it. :meth:`Generator.describe` gives the same facts as a
dict (for protocol cards: prompt text and hash, decoding, model).

Sampling is reproducible: each input draws from its own seed, :func:`input_seed` of the
recorded ``seed`` and the input's content, so the outputs of an input do not depend on
its batch, its position or the process (rank) that generated it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

from zscir.errors import ZscirError
from zscir.generation.cache import edit_key
from zscir.utils.hashing import sha256_bytes

STRATEGIES = ("greedy", "beam", "sample")


class GenerationUnavailable(ZscirError):
    """The generator cannot run at all (endpoint unreachable, model missing): stop the run, skip nothing."""


@dataclass(frozen=True)
class Decoding:
    """How outputs are decoded: greedy (default), beam search, or nucleus sampling with a seed.

    ``n`` outputs per input: the ``n`` best beams (beam search keeps ``max(num_beams, n)``
    beams) or ``n`` samples. ``max_new_tokens``/``min_new_tokens`` of None leave the
    backend's own default (recorded in its identity).
    """

    strategy: str = "greedy"
    n: int = 1
    num_beams: int = 1
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ZscirError(f"--decoding {self.strategy}: expected one of {', '.join(STRATEGIES)}")
        if self.n < 1:
            raise ZscirError(f"--n {self.n}: expected a positive integer")
        if self.n > 1 and self.strategy == "greedy":
            raise ZscirError(f"--n {self.n}: greedy decoding gives one output per input; "
                             "use --decoding beam or --decoding sample for N outputs")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ZscirError(f"--top-p {self.top_p} / --temperature {self.temperature}: "
                             "expected 0 < top-p <= 1 and temperature > 0")

    @property
    def beams(self) -> int:
        return max(self.num_beams, self.n) if self.strategy == "beam" else 1

    def tag(self) -> str:
        """The part of an identity that names the decoding."""
        parts = {"greedy": "greedy", "beam": f"beam{self.beams}",
                 "sample": f"sample(p={self.top_p},t={self.temperature},seed={self.seed})"}[self.strategy]
        if self.n > 1:
            parts += f",n={self.n}"
        if self.max_new_tokens is not None:
            parts += f",new<={self.max_new_tokens}"
        if self.min_new_tokens:
            parts += f",new>={self.min_new_tokens}"
        return parts

    def to_dict(self) -> dict:
        return asdict(self)

    def hf_kwargs(self) -> dict:
        """Keyword arguments of transformers' ``generate`` for these settings."""
        kw = {"num_return_sequences": self.n, "num_beams": self.beams, "do_sample": self.strategy == "sample"}
        if self.strategy == "sample":
            kw.update(top_p=self.top_p, temperature=self.temperature, top_k=0)
        if self.max_new_tokens is not None:
            kw["max_new_tokens"] = self.max_new_tokens
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        return kw


def input_seed(seed: int, content: bytes) -> int:
    """The sampling seed of one input: from the recorded seed and the input's content alone."""
    return int(sha256_bytes(str(seed).encode() + b"\0" + content)[:15], 16)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with ``{caption}`` and ``{instruction}`` fields (editors) or plain text (captioners).

    ``system`` is sent as a system message where the backend has chat roles. The hash of
    both texts is part of the generator's identity.
    """

    text: str
    system: str | None = None
    name: str = field(default="custom", compare=False)

    @property
    def sha256(self) -> str:
        return sha256_bytes(json.dumps([self.text, self.system], ensure_ascii=False).encode("utf-8"))

    def tag(self) -> str:
        return f"prompt={self.sha256[:12]}"

    def fill(self, caption: str, instruction: str) -> str:
        try:
            return self.text.format(caption=caption, instruction=instruction)
        except (KeyError, IndexError, ValueError) as e:
            raise ZscirError(f"prompt template {self.name!r}: expected only the fields {{caption}} and "
                             f"{{instruction}} (double other braces): {e}") from None

    def describe(self) -> dict:
        return {"name": self.name, "text": self.text, "system": self.system, "sha256": self.sha256}


# zscir's default edit prompt (its own words): the caption, the instruction, one rewritten caption back.
DEFAULT_EDIT_PROMPT = PromptTemplate(
    "Image description: {caption}\nRequested change: {instruction}\n"
    "Write one short description of the changed image, nothing else.\nChanged description:",
    name="zscir-edit-v1")


class EditInput(NamedTuple):
    """What an editor rewrites: a caption and the instruction that changes it."""

    caption: str
    instruction: str

    @property
    def content_key(self) -> str:
        return edit_key(self.caption, self.instruction)


class Generator:
    """The common part of captioners and editors."""

    name = "?"
    identity = "?"
    kind = "?"
    cacheable = True
    decoding = Decoding()

    def describe(self) -> dict:
        """The identity as facts: backend, model, decoding, prompt (text and hash)."""
        return {"backend": self.name, "kind": self.kind, "identity": self.identity,
                "decoding": self.decoding.to_dict()}

    def about(self) -> dict | None:
        """What the cache records beside the identity when it declares this generator (None: nothing)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


class Captioner(Generator):
    kind = "caption"
    needs_images = True

    def caption(self, items: Sequence, images: Sequence | None) -> list:
        raise NotImplementedError


class Editor(Generator):
    kind = "edit"

    def edit(self, pairs: Sequence[EditInput]) -> list:
        raise NotImplementedError


def check_outputs(outputs, n_inputs: int, n: int, who: str) -> list[list[str] | None]:
    """A generator's answer for a batch as lists of ``n`` stripped outputs (None: no output)."""
    outputs = list(outputs)
    if len(outputs) != n_inputs:
        raise ZscirError(f"generator {who} returned {len(outputs)} results for {n_inputs} inputs")
    checked = []
    for value in outputs:
        texts = [value] if isinstance(value, str) else list(value or ())
        if len(texts) > n:
            raise ZscirError(f"generator {who} returned {len(texts)} outputs for one input, expected {n}")
        texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        checked.append(texts or None)  # empty outputs are dropped; no output at all is None
    return checked
