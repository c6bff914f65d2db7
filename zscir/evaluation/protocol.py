"""The protocol choices of an evaluation, named, and recorded in every result.

Published ZS-CIR numbers differ silently in these choices; a zscir result says
which it used. Fixed choices (fp32 cosine similarity, ties broken by gallery
order, top-50 rankings) are recorded too, so a result file is self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zscir.benchmarks import BenchmarkSpec, get_benchmark
from zscir.benchmarks.base import EvalSplit, Query
from zscir.benchmarks.fine import FINE_GALLERIES
from zscir.errors import ZscirError
from zscir.evaluation.families import get_family
from zscir.evaluation.families.fashioniq import FIQ_RULE_TEXT, FIQ_RULES, fashioniq_texts

# FashionIQ caption rules (how two relative captions become the query texts): zscir.evaluation.families.fashioniq
# "method": each model's own rule (its checkpoint records it; baselines use both-orders)
FIQ_CAPTION_MODES = ("method",) + FIQ_RULES
PREPROCESS_CHOICES = ("targetpad", "clip")


@dataclass(frozen=True)
class Protocol:
    # FashionIQ's two captions -> query text(s): one of FIQ_RULES for every model, or "method" (default):
    # each model's own rule, as its official evaluation joins them (FIQ_RULES)
    fiq_captions: str = "method"
    # drop the reference image from its own ranking; None = the benchmark's official default
    # (CIRR and Fine-*: yes; CIRCO, FashionIQ and the shapes world: no, as every peer evaluates)
    remove_reference: bool | None = None
    # Fine-FashionIQ gallery: "fine" = FineCIR's smaller gallery (images of the queries), "split" = full split
    fine_gallery: str = "fine"
    # image preprocessing of gallery and references: None = the checkpoint's, else targetpad (TargetPad 1.25)
    preprocess: str | None = None
    top_k: int = 50

    def __post_init__(self):
        if self.fiq_captions not in FIQ_CAPTION_MODES:
            raise ZscirError(f"unknown FashionIQ caption mode {self.fiq_captions!r} (option --fiq-captions): "
                             f"expected one of {', '.join(FIQ_CAPTION_MODES)}")
        if self.fine_gallery not in FINE_GALLERIES:
            raise ZscirError(f"unknown Fine-FashionIQ gallery {self.fine_gallery!r} (option --fine-gallery): "
                             f"expected one of {', '.join(FINE_GALLERIES)}")
        if self.preprocess is not None and self.preprocess not in PREPROCESS_CHOICES:
            raise ZscirError(f"unknown preprocessing {self.preprocess!r} (option --preprocess): "
                             f"expected one of {', '.join(PREPROCESS_CHOICES)}")
        if self.top_k < 50:
            raise ZscirError(f"top_k {self.top_k}: rankings must hold at least 50 images (Recall@50, mAP@50)")

    def resolved(self, spec: BenchmarkSpec) -> "Protocol":
        """Fill the benchmark defaults in, so that the recorded protocol says what was done."""
        if self.remove_reference is None:
            return replace(self, remove_reference=spec.remove_reference)
        return self

    def loader_options(self) -> dict:
        return {"gallery": self.fine_gallery}

    def fiq_rule(self, model_rule: str | None = None) -> str:
        """The FashionIQ caption rule for a model whose own rule is ``model_rule``."""
        if self.fiq_captions != "method":
            return self.fiq_captions
        return model_rule if model_rule in FIQ_RULES else "both-orders"

    def query_texts(self, split: EvalSplit, query: Query, model_rule: str | None = None) -> list[str]:
        """The text(s) to encode for ``query``; the query feature is the normalised mean over them."""
        return get_family(split.kind).query_texts(query, self.fiq_rule(model_rule))

    def record(self, benchmark: str, preprocess: list[str] | None = None, fiq_rules: dict[str, str] | None = None,
               truncated_prompts: dict[str, int] | None = None, galleries: dict[str, dict] | None = None) -> dict:
        """The protocol as stored in results: the choices that apply to ``benchmark``, plus fixed conventions.

        ``fiq_rules``: model name -> the FashionIQ rule it was evaluated with; ``truncated_prompts``:
        model name -> prompts cut at the context length; ``galleries``: split -> {definition, size}.
        """
        spec = get_benchmark(benchmark)
        d = {"remove_reference": self.remove_reference}
        for choice in spec.protocol_choices:
            d.update(CHOICE_RECORDS[choice](self, fiq_rules))
        d.update(get_family(spec.family).protocol_notes)
        d["preprocess"] = (preprocess[0] if len(preprocess) == 1 else preprocess) if preprocess else self.preprocess
        d.update(top_k=self.top_k, similarity="cosine, fp32", tie_break="gallery order (stable sort)")
        d["metrics"] = metric_cutoffs(benchmark)
        if galleries is not None:
            d["gallery"] = galleries
        if truncated_prompts is not None:
            d["truncated_prompts"] = truncated_prompts
        return d


def _record_fiq_captions(protocol: Protocol, fiq_rules: dict[str, str] | None) -> dict:
    rules = sorted(set((fiq_rules or {}).values())) or [protocol.fiq_rule()]
    return dict(fiq_captions=rules[0] if len(rules) == 1 else dict(fiq_rules),
                fiq_captions_option=protocol.fiq_captions,
                fiq_caption_rules={r: FIQ_RULE_TEXT[r] for r in rules})


def _record_fine_gallery(protocol: Protocol, fiq_rules: dict[str, str] | None) -> dict:
    return {"fine_gallery": protocol.fine_gallery}


# protocol choice (BenchmarkSpec.protocol_choices) -> what the protocol block records of it
CHOICE_RECORDS = {"fiq_captions": _record_fiq_captions, "fine_gallery": _record_fine_gallery}


def metric_cutoffs(benchmark: str) -> dict:
    spec = get_benchmark(benchmark)
    return get_family(spec.family).cutoffs(spec.name)


__all__ = ["CHOICE_RECORDS", "FIQ_CAPTION_MODES", "FIQ_RULES", "FIQ_RULE_TEXT", "PREPROCESS_CHOICES", "Protocol",
           "fashioniq_texts", "metric_cutoffs"]
