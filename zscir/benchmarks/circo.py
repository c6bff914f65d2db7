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

from zscir.benchmarks.base import EvalSplit, Query, field_of, read_json
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
    entries = field_of(info, "images", list_path, "the top-level object")
    ids, files = [], {}
    for i, entry in enumerate(entries):
        image_id = field_of(entry, "id", list_path, f"images[{i}]")
        name = entry.get("file_name") or f"{int(image_id):012d}.jpg"
        ids.append(str(image_id))
        files[str(image_id)] = root / image_dir / name
    return ids, files


def parse_query(record: dict, path: Path, position: int) -> Query:
    where = f"record {position}"
    qid = field_of(record, "id", path, where)
    reference = field_of(record, "reference_img_id", path, where)
    caption = field_of(record, "relative_caption", path, where)
    gts = [str(g) for g in record.get("gt_img_ids") or [] if g not in ("", None)]
    target = record.get("target_img_id")
    if target is not None:
        # the annotated target comes first (recall@k is measured on it, mAP on all ground truths)
        gts = [str(target)] + [g for g in gts if g != str(target)]
    return Query(qid=str(qid), reference=str(reference), captions=(caption,), targets=tuple(gts))


def load(root: str | Path, split: str = "val", benchmark: str = "circo", gallery_list: Path = GALLERY_LIST,
         image_dir: Path = IMAGE_DIR, gallery_label: str | None = None) -> list[EvalSplit]:
    """One split in the CIRCO layout; ``gallery_list``/``image_dir`` (relative to root) may name another gallery."""
    root = Path(root)
    ann_path = annotation_path(root, split)
    records = read_json(ann_path, f"CIRCO {split} annotations")
    if not isinstance(records, list):
        raise ZscirError(f"{ann_path}: expected a JSON list of queries, got {type(records).__name__}")
    queries = [parse_query(r, ann_path, i) for i, r in enumerate(records)]
    gallery, images = read_gallery(root, gallery_list, image_dir)
    split_obj = EvalSplit(benchmark=benchmark, split=split, kind="circo", gallery=gallery, images=images,
                          queries=queries, id_type=_id_type(gallery),
                          sources=[str(ann_path), str(root / gallery_list)], gallery_label=gallery_label or benchmark)
    return [split_obj.check()]


def _id_type(gallery: list[str]):
    """CIRCO's submission files spell image ids as JSON integers; keep strings if an id is not one."""
    return int if all(g.isdigit() for g in gallery) else str
