"""The protocol choices of an evaluation, named, and recorded in every result.

Published ZS-CIR numbers differ silently in these choices; a zscir result says
which it used. Fixed choices (fp32 cosine similarity, ties broken by gallery
order, top-50 rankings) are recorded too, so a result file is self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zscir.benchmarks import BenchmarkSpec
from zscir.benchmarks.base import EvalSplit, Query
from zscir.benchmarks.fine import FINE_GALLERIES
from zscir.errors import ZscirError

# FashionIQ caption rules: how two relative captions become the query text(s) (the query feature is the
# normalised mean of the normalised features of the texts), each as its method's official evaluation forms it.
#   both-orders  zscir: strip ".?, ", leave an empty caption out, "C1 and c2" + "c2 and c1" (first capitalised)
#   forward      zscir, one order: "C1 and c2"
#   searle       SEARLE / LinCIR validate.py: "c1 and c2" + "c2 and c1", stripped; an empty caption keeps " and "
#   fti4cir      FTI4CIR evaluate.py: "C1 and c2" (first capitalised) + "c2 and c1", stripped; empty keeps " and "
#   pic2word     Pic2Word / Context-I2W data.py: "{c2} and {c1}" as annotated (no strip), one order
FIQ_RULES = ("both-orders", "forward", "searle", "fti4cir", "pic2word")
# "method": each model's own rule (its checkpoint records it; baselines use both-orders)
FIQ_CAPTION_MODES = ("method",) + FIQ_RULES
PREPROCESS_CHOICES = ("targetpad", "clip")


@dataclass(frozen=True)
class Protocol:
    # FashionIQ's two captions -> query text(s): one of FIQ_RULES for every model, or "method" (default):
    # each model's own rule, as its official evaluation joins them (see FIQ_RULES above)
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
        if split.kind == "fashioniq" and len(query.captions) == 2:
            return fashioniq_texts(*query.captions, mode=self.fiq_rule(model_rule))
        return [" ".join(query.captions)]

    def record(self, benchmark: str, preprocess: list[str] | None = None, fiq_rules: dict[str, str] | None = None,
               truncated_prompts: dict[str, int] | None = None, galleries: dict[str, dict] | None = None) -> dict:
        """The protocol as stored in results: the choices that apply to ``benchmark``, plus fixed conventions.

        ``fiq_rules``: model name -> the FashionIQ rule it was evaluated with; ``truncated_prompts``:
        model name -> prompts cut at the context length; ``galleries``: split -> {definition, size}.
        """
        d = {"remove_reference": self.remove_reference}
        if benchmark == "fashioniq":
            rules = sorted(set((fiq_rules or {}).values())) or [self.fiq_rule()]
            d.update(fiq_captions=rules[0] if len(rules) == 1 else dict(fiq_rules),
                     fiq_captions_option=self.fiq_captions,
                     fiq_caption_rules={r: FIQ_RULE_TEXT[r] for r in rules})
        if benchmark == "fine-fashioniq":
            d["fine_gallery"] = self.fine_gallery
        if benchmark in ("cirr", "fine-cirr"):
            d["cirr_subset"] = ("Recall_subset@k ranks the query's img_set members other than the reference "
                                "(the reference is always excluded, whatever remove_reference says)")
        d["preprocess"] = (preprocess[0] if len(preprocess) == 1 else preprocess) if preprocess else self.preprocess
        d.update(top_k=self.top_k, similarity="cosine, fp32", tie_break="gallery order (stable sort)")
        d["metrics"] = metric_cutoffs(benchmark)
        if galleries is not None:
            d["gallery"] = galleries
        if truncated_prompts is not None:
            d["truncated_prompts"] = truncated_prompts
        return d


def _strip(caption: str) -> str:
    return caption.strip(".?, ")


def _join(first: str, second: str, capitalize: bool) -> str:
    parts = [p for p in (_strip(first), _strip(second)) if p]
    if not parts:
        return ""
    if capitalize:
        parts[0] = parts[0].capitalize()
    return " and ".join(parts)


def _keep_join(first: str, second: str, capitalize: bool) -> str:
    a, b = _strip(first), _strip(second)
    return f"{a.capitalize() if capitalize else a} and {b}"


def fashioniq_texts(first: str, second: str, mode: str = "both-orders") -> list[str]:
    """FashionIQ's two relative captions as query text(s) under rule ``mode`` (:data:`FIQ_RULES`)."""
    if mode == "searle":
        return [_keep_join(first, second, False), _keep_join(second, first, False)]
    if mode == "fti4cir":
        return [_keep_join(first, second, True), _keep_join(second, first, False)]
    if mode == "pic2word":
        return [f"{second} and {first}"]
    forward = _join(first, second, capitalize=True)
    if mode == "forward":
        return [forward]
    return [forward, _join(second, first, capitalize=False)]


FIQ_RULE_TEXT = {
    "both-orders": "strip '.?, '; an empty caption is left out; mean of 'C1 and c2' and 'c2 and c1'",
    "forward": "strip '.?, '; an empty caption is left out; 'C1 and c2'",
    "searle": "strip '.?, '; an empty caption keeps ' and '; mean of 'c1 and c2' and 'c2 and c1' (SEARLE, LinCIR)",
    "fti4cir": "strip '.?, '; an empty caption keeps ' and '; mean of 'C1 and c2' and 'c2 and c1' (FTI4CIR)",
    "pic2word": "'c2 and c1' as annotated, one order (Pic2Word, Context-I2W)",
}


def metric_cutoffs(benchmark: str) -> dict:
    from zscir.evaluation import metrics
    from zscir.evaluation.scoring import fashioniq_ks

    kinds = {"circo": {"mAP@k, R@k": list(metrics.CIRCO_KS)},
             "cirr": {"R@k": list(metrics.CIRR_KS), "R_subset@k": list(metrics.CIRR_SUBSET_KS)},
             "fashioniq": {"R@k": list(fashioniq_ks(benchmark))}}
    kind = {"fine-cirr": "cirr", "fine-fashioniq": "fashioniq", "shapes": "circo"}.get(benchmark, benchmark)
    return kinds.get(kind, {})


# what each benchmark ranks against (the gallery), recorded with its size per split
GALLERY_DEFINITIONS = {
    "circo": "all images of the split's image list (COCO 2017 unlabeled, 123,403 for val and test)",
    "cirr": "the split's image_splits/split.rc2.{split}.json, every image (the reference included unless removed)",
    "fashioniq": "the category's image_splits/split.{category}.{split}.json",
    "fine-fashioniq": "fine: the images of the queries (candidate then target, first appearance); split: the "
                      "category's image split",
    "fine-cirr": "CIRR's image_splits/split.rc2.{split}.json",
    "shapes": "the world split's gallery",
}
