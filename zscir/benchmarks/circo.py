"""CIRCO (and every dataset in its layout, such as the shapes world).

Layout (as distributed by miccunifi/CIRCO)::

    ROOT/annotations/{val,test}.json
    ROOT/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{"id", "file_name"}, ...]}
    ROOT/COCO2017_unlabeled/unlabeled2017/<file_name>                   COCO: {id:012d}.jpg

The gallery is every image of the list, in list order (123,403 COCO images for
CIRCO). A query is ``{id, reference_img_id, relative_caption, shared_concept,
target_img_id?, gt_img_ids?}``; the test split has no ground truth. The split
name selects the annotation file, so other files in the same layout (the shapes
world's ``val_coarse.json``) load unchanged.
"""

from __future__ import annotations

from pathlib import Path

from zscir.benchmarks.base import EvalSplit, Query, read_json
from zscir.benchmarks.schema import (At, id_field, id_list_field, list_field, record_at, str_field,
                                    targets_all_or_none, unique_ids, wrong)
from zscir.errors import ZscirError

GALLERY_LIST = Path("COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")
IMAGE_DIR = Path("COCO2017_unlabeled/unlabeled2017")


def annotation_path(root: Path, split: str) -> Path:
    path = root / "annotations" / f"{split}.json"
    if not path.is_file():
        folder = root / "annotations"
        found = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        hint = f" (splits found: {', '.join(found)})" if found else f" (no {folder} folder: is --root a CIRCO folder?)"
        raise ZscirError(f"CIRCO annotations for split {split!r} not found: expected {path}{hint}")
    return path


def read_gallery(root: Path, gallery_list: Path = GALLERY_LIST,
                 image_dir: Path = IMAGE_DIR) -> tuple[list[str], dict[str, Path]]:
    """Image ids in list order and their files (``file_name`` when given, else ``{id:012d}.jpg``)."""
    list_path = root / gallery_list
    info = read_json(list_path, "CIRCO gallery list (COCO 2017 unlabeled image info)")
    if not isinstance(info, dict):
        raise ZscirError(f"{list_path}: expected a JSON object with an 'images' list, got a JSON {type(info).__name__}")
    top = At(list_path, "the top-level object")
    ids, files = [], {}
    for i, entry in enumerate(list_field(info, "images", top)):
        if not isinstance(entry, dict):
            wrong(top, f"images[{i}]", "an object with 'id' and 'file_name'", entry)
        image_id = id_field(entry, "id", At(list_path, f"images[{i}]"))
        if entry.get("file_name") is None and image_id.isdigit():
            name = f"{int(image_id):012d}.jpg"   # COCO's own naming, for lists that leave file_name out
        else:
            name = str_field(entry, "file_name", At(list_path, f"images[{i}]", image_id))
        ids.append(image_id)
        files[image_id] = root / image_dir / name
    return ids, files


def parse_query(records: list, path: Path, position: int) -> Query:
    record, at = record_at(records, position, path, id_name="id")
    qid = id_field(record, "id", at)
    reference = id_field(record, "reference_img_id", at)
    caption = str_field(record, "relative_caption", at)
    # "" and null entries are padding (SEARLE's loader pads the lists to 50 that way)
    gts = list(id_list_field(record, "gt_img_ids", at, optional=True, padding=("", None)))
    target = id_field(record, "target_img_id", at, optional=True)
    if target is not None:
        # the annotated target comes first (recall@k is measured on it, mAP on all ground truths)
        gts = [target] + [g for g in gts if g != target]
    return Query(qid=qid, reference=reference, captions=(caption,), targets=tuple(gts))


def load(root: str | Path, split: str = "val", benchmark: str = "circo", gallery_list: Path = GALLERY_LIST,
         image_dir: Path = IMAGE_DIR, gallery_label: str | None = None) -> list[EvalSplit]:
    """One split in the CIRCO layout; ``gallery_list``/``image_dir`` (relative to root) may name another gallery."""
    root = Path(root)
    ann_path = annotation_path(root, split)
    records = read_json(ann_path, f"CIRCO {split} annotations")
    if not isinstance(records, list):
        raise ZscirError(f"{ann_path}: expected a JSON list of queries, got {type(records).__name__}")
    queries = [parse_query(records, ann_path, i) for i in range(len(records))]
    unique_ids(queries, ann_path, "id")
    targets_all_or_none(queries, ann_path, "target_img_id")
    gallery, images = read_gallery(root, gallery_list, image_dir)
    split_obj = EvalSplit(benchmark=benchmark, split=split, kind="circo", gallery=gallery, images=images,
                          queries=queries, id_type=_id_type(gallery),
                          sources=[str(ann_path), str(root / gallery_list)], gallery_label=gallery_label or benchmark)
    return [split_obj.check()]


def _id_type(gallery: list[str]):
    """CIRCO's submission files spell image ids as JSON integers; keep strings if an id is not one."""
    return int if all(g.isdigit() for g in gallery) else str
