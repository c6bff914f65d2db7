"""CIReVL, LDRE and SEIZE as query encoders of the one query interface (:mod:`zscir.models.composed`).

Each reads the reference image's captions and the language model's edits from the split's generations
(:mod:`zscir.models.training_free.generations`) and encodes them with the backbone's text tower:

  cirevl   one caption, one edit (the family's template, :mod:`.templates`); query = the edit's feature
  ldre     N captions, N edits; ``ensemble=adaptive`` (default, LDRE's code) or ``mean`` (the normalised mean
           of the N edits' raw text features, cosine)
  seize    LDRE's N captions and edits scored by SEIZE's rule (``neg=2.1,pos=0.13``)

Options after ``--model NAME:``: ``n=15``, ``ensemble=adaptive|mean`` (ldre), ``neg=…,pos=…`` (seize),
``topk=…,temperature=…`` (ldre's adaptive ensemble).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.models.composed import COSINE, QueryItem, SplitContext, Vectors
from zscir.models.query import QueryEncoder
from zscir.models.training_free.generations import need_captions, need_edit, require_generations
from zscir.models.training_free.rules import AdaptiveEnsemble, SeizeRule
from zscir.models.training_free.templates import edit_template, instruction_of


def parse_options(method: str, options: str, allowed: dict[str, type]) -> dict:
    """``"n=15,ensemble=mean"`` -> {"n": 15, "ensemble": "mean"}, each value of its option's type."""
    out = {}
    for part in filter(None, options.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ZscirError(f"--model {method}:{options}: expected KEY=VALUE options among {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ZscirError(f"--model {method}: option {key}={value!r} is not a {allowed[key].__name__}") from None
    return out


class LanguageModelQuery(QueryEncoder):
    """The common part: generations of the split, text features, the protocol card."""

    n = 1
    options: dict[str, type] = {}

    def __init__(self, backbone, **options):
        super().__init__(backbone)
        self.settings = options
        self.generations = None
        self.style = "structural"
        self.generated_tokens = 0   # tokens of the generated texts the encoded queries read (see count_generated)

    @classmethod
    def from_spec(cls, backbone, options: str):
        return cls(backbone, **parse_options(cls.name, options, cls.options))

    def prepare(self, context: SplitContext) -> None:
        self.generations, self.style = context.generations, context.style

    def count_generated(self, role: str, texts: list[str]) -> None:
        """Add the tokens of generated ``texts`` (``role``: "caption" or "edit") that one query reads: counted by
        the generations' own tokenizer where they have one (the generator's), else as words. A caption read by
        two queries counts for each."""
        count = getattr(self.generations, "count_tokens", None)
        self.generated_tokens += sum(count(role, t) if count is not None else len(t.split()) for t in texts)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """[n, D] raw (unnormalised) fp32 text features, on the CPU."""
        return self.backbone.encode_text(list(texts)).float().cpu()

    def edit_inputs(self, item: QueryItem, captions: list[str]) -> list[tuple[str, str, str]]:
        """The (caption, instruction, task) inputs the language model answers for one query: each caption's edit."""
        return [(c, instruction_of(item.captions), "edit") for c in captions]

    def fetch(self, items: list[QueryItem]) -> None:
        """Let the generations produce what this batch needs in two batched steps (the references' captions, then
        the edits of those captions) before the per-query lookups; sources that only look answers up do nothing."""
        gen = require_generations(self.generations, self.name)
        gen.prefetch(images=[item.reference for item in items])
        inputs = []
        for item in items:
            captions = gen.captions(item.reference)
            if captions:
                inputs += self.edit_inputs(item, list(captions[:self.n] if self.n is not None else captions))
        gen.prefetch(edits=inputs)

    def captions_and_edits(self, item: QueryItem, n: int | None) -> tuple[list[str], list[str]]:
        """The reference's first ``n`` captions and, for each, its edit by the item's instruction. A caption that
        occurs twice takes the source's outputs for it in order (sampled captions repeat)."""
        gen = require_generations(self.generations, self.name)
        captions = need_captions(gen, item.reference, n, self.name)
        instruction = instruction_of(item.captions)
        seen: Counter = Counter()
        edits = []
        for caption in captions:
            outputs = gen.edits(caption, instruction) or [need_edit(gen, caption, instruction, self.name)]
            edits.append(outputs[min(seen[caption], len(outputs) - 1)])
            seen[caption] += 1
        self.count_generated("caption", captions)
        self.count_generated("edit", edits)
        return captions, edits

    def protocol(self) -> dict:
        template = edit_template(self.style)
        sources = self.generations.provenance() if self.generations is not None else []
        return {"method": self.name, "backbone": self.backbone.identity, "n": self.n, "options": self.settings,
                "rule": self.rule.describe(), "generations": sources,
                "prompt": {**template.describe(), "applies_to": "edits zscir generates; imported edits carry "
                                                                 "the prompt their source used"}}


class CIReVLQuery(LanguageModelQuery):
    name = "cirevl"

    def encode_items(self, ref, items: list[QueryItem]) -> Vectors:
        template = edit_template(self.style)
        self.fetch(items)
        texts = []
        for item in items:
            (caption,), (answer,) = self.captions_and_edits(item, 1)
            texts.append(template.parse(answer, instruction_of(item.captions)))
        return {"query": F.normalize(self.text_features(texts), dim=-1)}


class LDREQuery(LanguageModelQuery):
    name = "ldre"
    options = {"n": int, "ensemble": str, "topk": int, "temperature": float}
    ENSEMBLES = ("adaptive", "mean")

    def __init__(self, backbone, n: int = 15, ensemble: str = "adaptive", topk: int = 5, temperature: float = 0.04):
        super().__init__(backbone, n=n, ensemble=ensemble, topk=topk, temperature=temperature)
        if ensemble not in self.ENSEMBLES or n < 1:
            raise ZscirError(f"--model {self.name}: ensemble={ensemble!r}, n={n}: expected ensemble one of "
                             f"{', '.join(self.ENSEMBLES)} and n >= 1")
        self.n, self.ensemble = n, ensemble
        self.rule = AdaptiveEnsemble(topk, temperature) if ensemble == "adaptive" else COSINE

    def stacked(self, items: list[QueryItem]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N, D] raw text features of the N edits and of the N captions."""
        self.fetch(items)
        pairs = [self.captions_and_edits(item, self.n) for item in items]
        edits = self.text_features([e for _, es in pairs for e in es]).view(len(items), self.n, -1)
        captions = self.text_features([c for cs, _ in pairs for c in cs]).view(len(items), self.n, -1)
        return edits, captions

    def encode_items(self, ref, items: list[QueryItem]) -> Vectors:
        edits, captions = self.stacked(items)
        if self.ensemble == "mean":
            return {"query": F.normalize(edits.mean(dim=1), dim=-1)}
        return {"edits": F.normalize(edits, dim=-1), "captions": F.normalize(captions, dim=-1)}


class SEIZEQuery(LDREQuery):
    name = "seize"
    options = {"n": int, "neg": float, "pos": float}

    def __init__(self, backbone, n: int = 15, neg: float = 2.1, pos: float = 0.13):
        LanguageModelQuery.__init__(self, backbone, n=n, neg=neg, pos=pos)
        self.n, self.rule = n, SeizeRule(neg, pos)

    def encode_items(self, ref, items: list[QueryItem]) -> Vectors:
        edits, captions = self.stacked(items)
        return {"edited": F.normalize(edits.mean(dim=1), dim=-1), "captioned": F.normalize(captions.mean(dim=1), dim=-1)}
