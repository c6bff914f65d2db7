"""Benchmark families by metric kind (``EvalSplit.kind``): each entry owns its metrics, submission files and
protocol rules (:class:`zscir.evaluation.families.base.Family`).

    from zscir.evaluation.families import get_family
    metrics = get_family(split.kind).score(split, ranked, subset_ranked)
"""

from __future__ import annotations

from zscir.errors import ZscirError
from zscir.evaluation.families import circo, cirr, fashioniq
from zscir.evaluation.families.base import Family

FAMILIES: dict[str, Family] = {f.kind: f for f in (circo.FAMILY, cirr.FAMILY, fashioniq.FAMILY)}


def get_family(kind: str) -> Family:
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ZscirError(f"unknown metric kind {kind!r}: expected one of {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "get_family"]
