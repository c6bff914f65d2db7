"""Rankings in the test servers' formats, for every split (val too), and reading them back.

Each benchmark family owns its format (:mod:`zscir.evaluation.families`):

- CIRCO (and the shapes world, FashionIQ): ``{query id: [top-50 image ids]}``;
  CIRCO ids are JSON integers, as in CIRCO's ``submission_examples``.
- CIRR: two files, ``{"version": "rc2", "metric": "recall", pairid: [top-50 names]}``
  and ``{"version": "rc2", "metric": "recall_subset", pairid: [top-3 names]}``,
  as in CIRR's ``demo_files``; the reference is never in either list.

Anyone can recompute the metrics from these files and the annotations
(:func:`read_rankings` + :func:`zscir.evaluation.scoring.score_split`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.evaluation.families import get_family
from zscir.evaluation.families.base import ranking_path
from zscir.evaluation.families.cirr import CIRR_VERSION, SUBSET_K
from zscir.utils.atomic import atomic_write_json


def ranking_payloads(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, dict]:
    """File suffix -> JSON object, in the split's submission format."""
    return get_family(split.kind).payloads(split, ranked, subset_ranked)


def write_rankings(out_dir: Path, split: EvalSplit, ranked: np.ndarray,
                   subset_ranked: np.ndarray | None = None) -> list[Path]:
    paths = []
    for suffix, payload in ranking_payloads(split, ranked, subset_ranked).items():
        path = ranking_path(out_dir, split, suffix)
        atomic_write_json(path, payload, indent=None)
        paths.append(path)
    return paths


def read_rankings(split: EvalSplit, out_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Gallery-index rankings back from the files :func:`write_rankings` wrote."""
    return get_family(split.kind).read(split, out_dir)


def check_payloads(split: EvalSplit, payloads: dict[str, dict]) -> list[str]:
    """Problems a test server would reject: missing queries, short lists, duplicates, the reference ranked."""
    return get_family(split.kind).check(split, payloads)


__all__ = ["CIRR_VERSION", "SUBSET_K", "check_payloads", "ranking_path", "ranking_payloads", "read_rankings",
           "write_rankings"]
