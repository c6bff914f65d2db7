"""A benchmark family: how splits of one metric kind (``EvalSplit.kind``) are scored, written and read back.

A family is one registry entry (:data:`zscir.evaluation.families.FAMILIES`) that
owns everything that differs between CIRCO, CIRR and FashionIQ style splits:
its metrics, its submission files (writer, reader, the checks a test server
makes), the query texts its captions give, the protocol facts it records, and
how its per-category results are averaged. Code outside the family modules asks
the family; it never tests a kind by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from zscir.benchmarks.base import EvalSplit, Query
from zscir.errors import ZscirError
from zscir.evaluation.metrics import TOP_K

Rankings = tuple[np.ndarray, "np.ndarray | None"]


def joined_captions(query: Query, rule: str) -> list[str]:
    """One query text: the captions joined by a space (every family whose queries carry one caption)."""
    return [" ".join(query.captions)]


@dataclass(frozen=True)
class Family:
    """One metric kind.

    score:         (split, ranked, subset_ranked) -> metrics in percent
    cutoffs:       benchmark name -> the metric cut-offs recorded in the protocol block
    payloads:      (split, ranked, subset_ranked) -> {file suffix: JSON object} in the test server's format
    read:          (split, folder) -> (ranked, subset_ranked) back from the files ``payloads`` gave
    check:         (split, payloads) -> problems a test server would reject
    subset_k:      >0: each query's own subset (CIRR's img_set) is ranked too, its top ``subset_k`` kept
    query_texts:   (query, caption rule) -> the text(s) whose normalised mean is the query feature
    protocol_notes: facts recorded in the protocol block of every result of this family
    category_mean: per-category metrics -> their mean, for families that split by category (None: no mean)
    generation_style: the key language-model methods look their per-benchmark choices up by (CIReVL's
                   instruction template, CVSI's fusion weights): "structural" (CIRCO-like scenes), "contextual"
                   (CIRR's real-life pairs), "fashion" (FashionIQ)
    """

    kind: str
    score: Callable[[EvalSplit, np.ndarray, "np.ndarray | None"], dict[str, float]]
    cutoffs: Callable[[str], dict]
    payloads: Callable[[EvalSplit, np.ndarray, "np.ndarray | None"], dict[str, dict]]
    read: Callable[[EvalSplit, Path], Rankings]
    check: Callable[[EvalSplit, dict[str, dict]], list[str]]
    subset_k: int = 0
    query_texts: Callable[[Query, str], list[str]] = joined_captions
    protocol_notes: dict[str, str] = field(default_factory=dict)
    category_mean: Callable[[dict[str, dict[str, float]]], dict[str, float]] | None = None
    generation_style: str = "structural"


# ---------------------------------------------------------------- submission files, shared by the families
def ranking_path(out_dir: Path, split: EvalSplit, suffix: str) -> Path:
    return Path(out_dir) / (f"{split.slug}.{suffix}.json" if suffix else f"{split.slug}.json")


def image_ids(split: EvalSplit, row: np.ndarray) -> list:
    """Gallery indices -> image ids as the submission files spell them (padding dropped)."""
    return [split.id_type(split.gallery[i]) for i in row if i >= 0]


def rows_of(split: EvalSplit, payload: dict, width: int, path: Path) -> np.ndarray:
    """One submission object back as gallery-index rows (one per query), checked image by image."""
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


def list_problems(split: EvalSplit, suffix: str, payload: dict, want: int, available: Callable[[Query], int],
                  excludes_reference: bool) -> list[str]:
    """Per query: missing, shorter than ``want`` (or all ``available``), an image twice, the reference ranked."""
    label = suffix or "rankings"
    problems = []
    for q in split.queries:
        ranked = payload.get(q.qid)
        if ranked is None:
            problems.append(f"{label}: query {q.qid} missing")
            continue
        if len(ranked) < min(want, available(q)):
            problems.append(f"{label}: query {q.qid} has {len(ranked)} ids, expected {want}")
        if len(set(ranked)) != len(ranked):
            problems.append(f"{label}: query {q.qid} ranks an image twice")
        if excludes_reference and q.reference in ranked:
            problems.append(f"{suffix}: query {q.qid} ranks its own reference")
    return problems


# the one-file format of CIRCO, FashionIQ and the shapes world: {query id: [top-50 image ids]}
def one_file_payloads(split: EvalSplit, ranked: np.ndarray, subset_ranked: np.ndarray | None = None) -> dict[str, dict]:
    return {"": {q.qid: image_ids(split, row[:TOP_K]) for q, row in zip(split.queries, ranked)}}


def read_one_file(split: EvalSplit, out_dir: Path) -> Rankings:
    path = ranking_path(out_dir, split, "")
    return rows_of(split, json.loads(path.read_text()), TOP_K, path), None


def check_one_file(split: EvalSplit, payloads: dict[str, dict]) -> list[str]:
    return [p for suffix, payload in payloads.items()
            for p in list_problems(split, suffix, payload, TOP_K, lambda q: len(split.gallery), False)]


def targets_of(split: EvalSplit) -> list[int]:
    """Gallery index of each query's annotated target (-1 when it is not in the gallery)."""
    return [split.gallery_index.get(q.targets[0], -1) for q in split.queries]
