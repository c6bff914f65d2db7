"""The FashionIQ family (FashionIQ, Fine-FashionIQ): Recall@k of the target per category, averaged over
categories; one submission file ``{query id: [top-50 ASINs]}``; the rules that turn FashionIQ's two
relative captions into query text(s)."""

from __future__ import annotations

import numpy as np

from zscir.benchmarks.base import EvalSplit, Query
from zscir.evaluation import metrics
from zscir.evaluation.families.base import Family, check_one_file, one_file_payloads, read_one_file, targets_of

# FashionIQ caption rules: how two relative captions become the query text(s) (the query feature is the
# normalised mean of the normalised features of the texts), each as its method's official evaluation forms it.
#   both-orders  zscir: strip ".?, ", leave an empty caption out, "C1 and c2" + "c2 and c1" (first capitalised)
#   forward      zscir, one order: "C1 and c2"
#   searle       SEARLE / LinCIR validate.py: "c1 and c2" + "c2 and c1", stripped; an empty caption keeps " and "
#   fti4cir      FTI4CIR evaluate.py: "C1 and c2" (first capitalised) + "c2 and c1", stripped; empty keeps " and "
#   pic2word     Pic2Word / Context-I2W data.py: "{c2} and {c1}" as annotated (no strip), one order
FIQ_RULES = ("both-orders", "forward", "searle", "fti4cir", "pic2word")

FIQ_RULE_TEXT = {
    "both-orders": "strip '.?, '; an empty caption is left out; mean of 'C1 and c2' and 'c2 and c1'",
    "forward": "strip '.?, '; an empty caption is left out; 'C1 and c2'",
    "searle": "strip '.?, '; an empty caption keeps ' and '; mean of 'c1 and c2' and 'c2 and c1' (SEARLE, LinCIR)",
    "fti4cir": "strip '.?, '; an empty caption keeps ' and '; mean of 'C1 and c2' and 'c2 and c1' (FTI4CIR)",
    "pic2word": "'c2 and c1' as annotated, one order (Pic2Word, Context-I2W)",
}

# cut-offs that differ from the family's: FineCIR reports R@1, R@10, R@50 on Fine-FashionIQ
FASHIONIQ_KS_BY_BENCHMARK = {"fine-fashioniq": (1, 10, 50)}


def fashioniq_ks(benchmark: str) -> tuple[int, ...]:
    return FASHIONIQ_KS_BY_BENCHMARK.get(benchmark, metrics.FASHIONIQ_KS)


def score(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None) -> dict[str, float]:
    return metrics.fashioniq_metrics(ranked, targets_of(split), ks=fashioniq_ks(split.benchmark))


def cutoffs(benchmark: str) -> dict:
    return {"R@k": list(fashioniq_ks(benchmark))}


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


def query_texts(query: Query, rule: str) -> list[str]:
    """Two captions under the caption rule; one caption (Fine-FashionIQ's) as it is."""
    if len(query.captions) == 2:
        return fashioniq_texts(*query.captions, mode=rule)
    return [" ".join(query.captions)]


FAMILY = Family("fashioniq", score=score, cutoffs=cutoffs, payloads=one_file_payloads, read=read_one_file,
                check=check_one_file, query_texts=query_texts, category_mean=metrics.fashioniq_average,
                generation_style="fashion")
