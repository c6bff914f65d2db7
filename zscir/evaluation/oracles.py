"""Oracle rows of an evaluation: ceilings a benchmark defines, scored like models but never taken for one.

A benchmark that knows more than its annotations say (the shapes world knows
every scene) gives, through ``spec.defaults.oracles``, one text query per query
and oracle ("the target's own caption", ...). Each is encoded by the backbone's
text tower alone and ranked against the same gallery features with the same
protocol as the models. Results go to ``results["oracles"]`` (each entry has
``"oracle": true``), never to ``results["models"]``; the tables print them as
``[oracle] NAME`` rows and give every row's share of the caption oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zscir.benchmarks import BenchmarkSpec
from zscir.benchmarks.base import EvalSplit
from zscir.evaluation.features import CacheReport, gallery_features
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.scoring import score_split

SHARE_OF = "caption"     # the oracle every row is compared with
SHARE_METRIC = "mAP@10"


def encode_texts(backbone, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    from zscir.models.prompts import clean_text

    parts = [backbone.encode_text([clean_text(t) for t in texts[i:i + batch_size]]).float().cpu()
             for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(parts), dim=-1)


def evaluate_oracles(spec: BenchmarkSpec, root: Path, splits: list[EvalSplit], backbone, protocol: Protocol,
                     cache_root: Path, batch_size: int = 64, progress: bool = True) -> list[dict]:
    """One entry per oracle: {"name", "oracle": True, "description", "splits": {split: {metrics, ...}}}."""
    from zscir.evaluation.run import rank_split

    make = spec.defaults.oracles
    if make is None or backbone is None:
        return []
    entries: dict[str, dict] = {}
    for split in splits:
        if not split.has_ground_truth:
            continue
        gallery = gallery_features(backbone, split, cache_root, CacheReport(), batch_size, progress)
        for name, texts in make(root, split).items():
            queries = encode_texts(backbone, texts)
            ranked, subset = rank_split(split, queries, np.ones(len(texts), dtype=bool), gallery, protocol,
                                        protocol.top_k)
            entry = entries.setdefault(name, {"name": f"[oracle] {name}", "oracle": True, "kind": name,
                                              "description": spec.defaults.oracle_notes.get(name, ""),
                                              "backbone": backbone.identity_str, "splits": {}})
            entry["splits"][split.name] = {"split": split.name, "kind": split.kind, "queries": len(split.queries),
                                           "gallery": len(split.gallery), "metrics": score_split(split, ranked, subset),
                                           "example_text": texts[0] if texts else ""}
    return list(entries.values())


def share_of_caption_oracle(results: dict, split: str, metrics: dict | None) -> float | None:
    """``metrics[SHARE_METRIC]`` as a fraction of the caption oracle's on ``split`` (None without one)."""
    for o in results.get("oracles") or []:
        if o["kind"] == SHARE_OF and split in o["splits"]:
            ceiling = (o["splits"][split]["metrics"] or {}).get(SHARE_METRIC)
            if ceiling and metrics and SHARE_METRIC in metrics:
                return metrics[SHARE_METRIC] / ceiling
    return None
