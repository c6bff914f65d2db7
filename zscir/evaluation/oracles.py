"""Oracle rows of an evaluation: ceilings a benchmark defines, scored like models but never taken for one.

A benchmark that knows more than its annotations say (the shapes world knows
every scene) gives, through ``spec.defaults.oracles``, one text query per query
and oracle ("the target's own caption", ...). Each is encoded by the backbone's
text tower alone and ranked against the same gallery features with the same
protocol as the models. Results go to ``results["oracles"]`` (each entry has
``"oracle": true``), never to ``results["models"]``; the tables print them as
``[oracle] NAME`` rows and give every row's share of the caption oracle
(:func:`zscir.evaluation.report.share_of_caption_oracle`). A benchmark may also split a generation pipeline
(``spec.defaults.generation_oracles``: a true caption + the run's editor, the run's captioner + an exact edit):
those rows read the run's generations and are reported the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zscir.benchmarks.base import BenchmarkSpec, EvalSplit
from zscir.evaluation.features import CacheReport, gallery_features
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.ranking import rank_split
from zscir.evaluation.scoring import score_split
from zscir.models.prompts import clean_text

def encode_texts(backbone, texts: list[str], batch_size: int = 256):
    """[N, D] normalised text features (a torch tensor) of the backbone's text tower."""
    import torch  # deferred: heavy, and `zscir eval --help` needs none of it
    import torch.nn.functional as F

    parts = [backbone.encode_text([clean_text(t) for t in texts[i:i + batch_size]]).float().cpu()
             for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(parts), dim=-1)


def oracle_texts(spec: BenchmarkSpec, root: Path, split: EvalSplit, generations=None) -> dict[str, list[str]]:
    """The benchmark's oracle texts of ``split``, then those of its generation-pipeline rows (which read the
    run's ``generations``)."""
    texts = dict(spec.defaults.oracles(root, split)) if spec.defaults.oracles is not None else {}
    if spec.defaults.generation_oracles is not None:
        texts.update(spec.defaults.generation_oracles(root, split, generations))
    return texts


def evaluate_oracles(spec: BenchmarkSpec, root: Path, splits: list[EvalSplit], backbone, protocol: Protocol,
                     cache_root: Path, batch_size: int = 64, progress: bool = True, generations=None) -> list[dict]:
    """One entry per oracle: {"name", "oracle": True, "description", "splits": {split: {metrics, ...}}}."""
    if (spec.defaults.oracles is None and spec.defaults.generation_oracles is None) or backbone is None:
        return []
    entries: dict[str, dict] = {}
    for split in splits:
        if not split.has_ground_truth:
            continue
        gallery = gallery_features(backbone, split, cache_root, CacheReport(), batch_size, progress)
        for name, texts in oracle_texts(spec, root, split, generations).items():
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
