"""Fine-FashionIQ and Fine-CIRR: FineCIR's fine-grained modification texts over the original images.

The files are JSONL (one record a line):

- ``fiq.fine.{category}.{split}.jsonl``: ``{"target", "candidate", "finemt"}``,
- ``cirr.fine.{split}.jsonl``: CIRR's fields with ``finemt`` instead of ``caption``
  and without ``target_soft``.

They sit in ``ROOT/captions/`` (FineCIR's code) or ``ROOT/finemt_captions/``
(FineCIR's README; for CIRR also ``ROOT/fine-cirr/finemt_captions/``); images
and image splits are those of FashionIQ and CIRR, in the layouts their loaders
accept. FineCIR's README names the files ``.json``, its code ``.jsonl``: both
are read, and so is the name without an extension (as FineCIR's code opens it); a file holding one JSON
list is accepted too.

Fine-FashionIQ's gallery is a protocol choice: ``"fine"`` is FineCIR's smaller
gallery, the images that appear in the queries (candidate then target, in order
of first appearance); ``"split"`` is the category's full split gallery.
"""

from __future__ import annotations

import json
from pathlib import Path

import zscir.benchmarks.cirr as cirr
import zscir.benchmarks.fashioniq as fashioniq
from zscir.benchmarks.base import EvalSplit, Query, read_jsonl
from zscir.benchmarks.schema import id_field, record_at, str_field, targets_all_or_none
from zscir.errors import ZscirError

FINE_GALLERIES = ("fine", "split")
FIQ_DIRS = ("captions", "finemt_captions", ".")
CIRR_DIRS = ("cirr/captions", "captions", "fine-cirr/finemt_captions", "finemt_captions", "cirr/finemt_captions")


def find_jsonl(root: Path, dirs: tuple[str, ...], stem: str, what: str) -> Path:
    # FineCIR's code opens fiq.fine.{category}.{split} with no extension at all
    candidates = [root / d / f"{stem}{ext}" for d in dirs for ext in (".jsonl", ".json", "")]
    for c in candidates:
        if c.is_file():
            return c
    raise ZscirError(f"{what} not found: expected {candidates[0]} (also tried {', '.join(map(str, candidates[1:4]))}, ...)")


def read_records(path: Path, what: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        head = f.read(64).lstrip()
    if head.startswith("["):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ZscirError(f"{what} {path} is not valid JSON: {e}") from None
    return read_jsonl(path, what)


def fine_gallery(queries: list[Query]) -> list[str]:
    """FineCIR's Fine-FashionIQ gallery: each query's candidate then target, first appearance kept."""
    order: dict[str, None] = {}
    for q in queries:
        order.setdefault(q.reference, None)
        for t in q.targets:
            order.setdefault(t, None)
    return list(order)


def load_fashioniq(root: str | Path, split: str = "val", categories=fashioniq.CATEGORIES, gallery: str = "fine",
                   benchmark: str = "fine-fashioniq") -> list[EvalSplit]:
    if gallery not in FINE_GALLERIES:
        raise ZscirError(f"unknown Fine-FashionIQ gallery {gallery!r}: expected one of {', '.join(FINE_GALLERIES)}")
    root = Path(root)
    finder = fashioniq.ImageFinder(root)
    out = []
    for category in fashioniq.check_categories(categories):
        path = find_jsonl(root, FIQ_DIRS, f"fiq.fine.{category}.{split}", f"Fine-FashionIQ {category} {split} texts")
        records = read_records(path, "Fine-FashionIQ texts")
        queries = []
        for i in range(len(records)):
            r, at = record_at(records, i, path)
            target = id_field(r, "target", at, optional=True)
            queries.append(Query(qid=str(i), reference=id_field(r, "candidate", at),
                                 captions=(str_field(r, "finemt", at),), targets=(target,) if target is not None else ()))
        targets_all_or_none(queries, path, "target")
        sources = [str(path)]
        if gallery == "fine":
            ids = fine_gallery(queries)
        else:
            ids, g_path = fashioniq.read_gallery(root, category, split)
            sources.append(str(g_path))
        label = f"fine-fashioniq-{category}-{split}" if gallery == "fine" else ""
        out.append(fashioniq.make_split(benchmark, root, category, split, queries, ids, sources, finder,
                                        notes={"gallery": gallery}, gallery_label=label))
    return out


def load_cirr(root: str | Path, split: str = "val", benchmark: str = "fine-cirr") -> list[EvalSplit]:
    root = Path(root)
    split = cirr.canonical_split(split)
    path = find_jsonl(root, CIRR_DIRS, f"cirr.fine.{split}", f"Fine-CIRR {split} texts")
    records = read_records(path, "Fine-CIRR texts")
    return [cirr.build_split(benchmark, split, root, records, path, text_field="finemt")]
