"""Rankings in the test servers' formats, for every split (val too), and reading them back.

- CIRCO (and the shapes world, FashionIQ): ``{query id: [top-50 image ids]}``;
  CIRCO ids are JSON integers, as in CIRCO's ``submission_examples``.
- CIRR: two files, ``{"version": "rc2", "metric": "recall", pairid: [top-50 names]}``
  and ``{"version": "rc2", "metric": "recall_subset", pairid: [top-3 names]}``,
  as in CIRR's ``demo_files``; the reference is never in either list.

Anyone can recompute the metrics from these files and the annotations
(:func:`read_rankings` + :func:`zscir.evaluation.scoring.score_split`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zscir.benchmarks.base import EvalSplit
from zscir.errors import ZscirError
from zscir.evaluation.metrics import TOP_K
from zscir.utils.atomic import atomic_write_json

CIRR_VERSION = "rc2"
SUBSET_K = 3


def _ids(split: EvalSplit, row: np.ndarray) -> list:
    return [split.id_type(split.gallery[i]) for i in row if i >= 0]


def ranking_payloads(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, dict]:
    """File suffix -> JSON object, in the split's submission format."""
    if split.kind == "cirr":
        recall = {"version": CIRR_VERSION, "metric": "recall"}
        subset = {"version": CIRR_VERSION, "metric": "recall_subset"}
        for q, row, srow in zip(split.queries, ranked, subset_ranked):
            recall[q.qid] = _ids(split, row[:TOP_K])
            subset[q.qid] = _ids(split, srow[:SUBSET_K])
        return {"recall": recall, "recall_subset": subset}
    return {"": {q.qid: _ids(split, row[:TOP_K]) for q, row in zip(split.queries, ranked)}}


def ranking_path(out_dir: Path, split: EvalSplit, suffix: str) -> Path:
    return Path(out_dir) / (f"{split.slug}.{suffix}.json" if suffix else f"{split.slug}.json")


def write_rankings(out_dir: Path, split: EvalSplit, ranked: np.ndarray,
                   subset_ranked: np.ndarray | None = None) -> list[Path]:
    paths = []
    for suffix, payload in ranking_payloads(split, ranked, subset_ranked).items():
        path = ranking_path(out_dir, split, suffix)
        atomic_write_json(path, payload, indent=None)
        paths.append(path)
    return paths


def _rows(split: EvalSplit, payload: dict, width: int, path: Path) -> np.ndarray:
    out = np.full((len(split.queries), width), -1, dtype=np.int64)
    for n, q in enumerate(split.queries):
        if q.qid not in payload:
            raise ZscirError(f"{path}: no ranking for query {q.qid}")
        row = payload[q.qid]
        if not isinstance(row, list):
            raise ZscirError(f"{path}: query {q.qid}: expected a list of image ids, got {type(row).__name__}")
        seen: set[int] = set()
        for j, image_id in enumerate(row[:width]):
            idx = split.gallery_index.get(str(image_id))
            if idx is None:
                raise ZscirError(f"{path}: query {q.qid} ranks {image_id!r}, which is not in the gallery")
            if idx in seen:
                # scoring it would count the image twice (mAP@k can pass 100); the official servers refuse it
                raise ZscirError(f"{path}: query {q.qid} ranks image {image_id!r} twice: a ranking lists each "
                                 f"image once")
            seen.add(idx)
            out[n, j] = idx
    return out


def read_rankings(split: EvalSplit, out_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Gallery-index rankings back from the files :func:`write_rankings` wrote."""
    if split.kind == "cirr":
        paths = [ranking_path(out_dir, split, s) for s in ("recall", "recall_subset")]
        recall, subset = (json.loads(p.read_text()) for p in paths)
        return _rows(split, recall, TOP_K, paths[0]), _rows(split, subset, SUBSET_K, paths[1])
    path = ranking_path(out_dir, split, "")
    return _rows(split, json.loads(path.read_text()), TOP_K, path), None


def check_payloads(split: EvalSplit, payloads: dict[str, dict]) -> list[str]:
    """Problems a test server would reject: missing queries, short lists, duplicates, the reference ranked."""
    problems = []
    for suffix, payload in payloads.items():
        want = SUBSET_K if suffix == "recall_subset" else TOP_K
        if split.kind == "cirr" and (payload.get("version") != CIRR_VERSION or payload.get("metric") != suffix):
            problems.append(f"{suffix}: version/metric fields should be {CIRR_VERSION!r}/{suffix!r}")
        for q in split.queries:
            ranked = payload.get(q.qid)
            if ranked is None:
                problems.append(f"{suffix or 'rankings'}: query {q.qid} missing")
                continue
            available = len(split.gallery) - (1 if split.kind == "cirr" else 0)
            if suffix == "recall_subset":
                available = len(set(q.subset) - {q.reference})
            if len(ranked) < min(want, available):
                problems.append(f"{suffix or 'rankings'}: query {q.qid} has {len(ranked)} ids, expected {want}")
            if len(set(ranked)) != len(ranked):
                problems.append(f"{suffix or 'rankings'}: query {q.qid} ranks an image twice")
            if split.kind == "cirr" and q.reference in ranked:
                problems.append(f"{suffix}: query {q.qid} ranks its own reference")
    return problems
