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

FIQ_CAPTION_MODES = ("both-orders", "forward")
PREPROCESS_CHOICES = ("targetpad", "clip")


@dataclass(frozen=True)
class Protocol:
    # FashionIQ's two captions -> query: "both-orders" encodes "c1 and c2" and "c2 and c1" and averages the
    # two normalised query features (as SEARLE and FTI4CIR evaluate); "forward" encodes "c1 and c2" only.
    # Captions are stripped of ".?, " at their ends; an empty caption is left out of the join.
    fiq_captions: str = "both-orders"
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

    def query_texts(self, split: EvalSplit, query: Query) -> list[str]:
        """The text(s) to encode for ``query``; the query feature is the normalised mean over them."""
        if split.kind == "fashioniq" and len(query.captions) == 2:
            return fashioniq_texts(*query.captions, mode=self.fiq_captions)
        return [" ".join(query.captions)]

    def record(self, benchmark: str, preprocess: list[str] | None = None) -> dict:
        """The protocol as stored in results: the choices that apply to ``benchmark``, plus fixed conventions."""
        d = {"remove_reference": self.remove_reference}
        if benchmark == "fashioniq":
            d.update(fiq_captions=self.fiq_captions, fiq_caption_strip=".?, ", empty_fiq_caption="left out of the join")
        if benchmark == "fine-fashioniq":
            d["fine_gallery"] = self.fine_gallery
        d["preprocess"] = (preprocess[0] if len(preprocess) == 1 else preprocess) if preprocess else self.preprocess
        d.update(top_k=self.top_k, similarity="cosine, fp32", tie_break="gallery order (stable sort)")
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


def fashioniq_texts(first: str, second: str, mode: str = "both-orders") -> list[str]:
    """FashionIQ's two relative captions as query text(s), as SEARLE / FTI4CIR form them."""
    forward = _join(first, second, capitalize=True)
    if mode == "forward":
        return [forward]
    return [forward, _join(second, first, capitalize=False)]
