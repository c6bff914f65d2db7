"""CIRR (rc2), and the shared reading of CIRR-style records that Fine-CIRR reuses.

Layouts accepted (images are always relative to ROOT, as the split files say)::

    ROOT/cirr/captions/cap.rc2.{train,val,test1}.json     or  ROOT/captions/...
    ROOT/cirr/image_splits/split.rc2.{train,val,test1}.json   or  ROOT/image_splits/...
    ROOT/dev/dev-244-0-img0.png   (split files map name -> "./dev/dev-244-0-img0.png")

A record is ``{pairid, reference, target_hard, target_soft, caption, img_set:
{id, members, reference_rank, target_rank}}``; test1 has no ``target_*``. The
gallery is every image of the split file, in file order. ``target_hard`` is the
target (37 val records have one that is not a key of ``target_soft``; the
official metric ignores ``target_soft``, and so do we).
"""

from __future__ import annotations

from pathlib import Path

from zscir.benchmarks.base import EvalSplit, Query, read_json
from zscir.benchmarks.schema import (At, id_field, id_list_field, record_at, str_field, targets_all_or_none,
                                    unique_ids, wrong)
from zscir.errors import ZscirError

SPLIT_ALIASES = {"test": "test1", "dev": "val"}
# ROOT/cirr/{captions,image_splits}, ROOT/{captions,image_splits}, or FineCIR's ROOT/fine-cirr/image_splits
ANNOTATION_DIRS = ("cirr", ".", "fine-cirr")


def canonical_split(split: str) -> str:
    return SPLIT_ALIASES.get(split, split)


def find_file(root: Path, candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if (root / c).is_file():
            return root / c
    tried = " or ".join(str(root / c) for c in candidates)
    raise ZscirError(f"{what} not found: expected {tried}")


def split_file(root: Path, split: str) -> Path:
    name = f"split.rc2.{split}.json"
    return find_file(root, [Path(d) / "image_splits" / name for d in ANNOTATION_DIRS], f"CIRR {split} image split")


def read_gallery(root: Path, path: Path) -> tuple[list[str], dict[str, Path]]:
    mapping = read_json(path, "CIRR image split")
    if not isinstance(mapping, dict):
        raise ZscirError(f"{path}: expected a JSON object mapping image name -> relative path")
    for name, rel in mapping.items():
        if not isinstance(rel, str):
            wrong(At(path, "the image split"), name, "a path relative to the root (a string)", rel)
    return list(mapping), {name: root / rel for name, rel in mapping.items()}


def parse_record(records: list, path: Path, position: int, text_field: str) -> Query:
    record, at = record_at(records, position, path, id_name="pairid")
    pairid = id_field(record, "pairid", at)
    members = id_list_field(record, "img_set.members", at)
    target = id_field(record, "target_hard", at, optional=True)
    return Query(qid=pairid, reference=id_field(record, "reference", at), captions=(str_field(record, text_field, at),),
                 targets=(target,) if target is not None else (), subset=members)


def build_split(benchmark: str, split: str, root: Path, records: list, captions_path: Path,
                text_field: str) -> EvalSplit:
    if not isinstance(records, list):
        raise ZscirError(f"{captions_path}: expected a list of CIRR records, got {type(records).__name__}")
    gallery_path = split_file(root, split)
    gallery, images = read_gallery(root, gallery_path)
    queries = [parse_record(records, captions_path, i, text_field) for i in range(len(records))]
    unique_ids(queries, captions_path, "pairid")
    targets_all_or_none(queries, captions_path, "target_hard")
    notes = {}
    if records and "target_soft" in records[0]:
        notes["target_hard_not_in_target_soft"] = sum(
            1 for r in records if r.get("target_hard") not in (r.get("target_soft") or {}))
    notes["blank_captions"] = sum(1 for q in queries if not q.captions[0].strip())
    return EvalSplit(benchmark=benchmark, split=split, kind="cirr", gallery=gallery, images=images,
                     queries=queries, sources=[str(captions_path), str(gallery_path)], notes=notes,
                     gallery_label=f"cirr-{split}").check()


def load(root: str | Path, split: str = "val", benchmark: str = "cirr") -> list[EvalSplit]:
    root = Path(root)
    split = canonical_split(split)
    name = f"cap.rc2.{split}.json"
    captions_path = find_file(root, [Path(d) / "captions" / name for d in ANNOTATION_DIRS], f"CIRR {split} captions")
    records = read_json(captions_path, "CIRR captions")
    return [build_split(benchmark, split, root, records, captions_path, text_field="caption")]
