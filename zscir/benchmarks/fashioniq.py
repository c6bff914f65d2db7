"""FashionIQ, one evaluation split per category (dress, shirt, toptee).

Layout::

    ROOT/captions/cap.{dress,shirt,toptee}.{train,val,test}.json     [{candidate, target?, captions: [2 texts]}]
    ROOT/image_splits/split.{category}.{split}.json                 [ASIN, ...]   (the gallery, in order)
    images: ROOT/images/ASIN.png|.jpg, or per category ROOT/images/{category}/, ROOT/{category}/,
            ROOT/resized_image/{category}/ (the layout FineCIR uses)

The test split has no ``target``. Some captions are empty strings: they are
kept here, and the protocol decides how two captions become one query text.
A query's id in result files is its position in the caption file.
"""

from __future__ import annotations

import os
from pathlib import Path

from zscir.benchmarks.base import EvalSplit, Query, read_json
from zscir.benchmarks.schema import id_field, record_at, str_list_field, targets_all_or_none
from zscir.errors import ZscirError

CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def check_categories(categories) -> tuple[str, ...]:
    categories = tuple(categories)
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories:
        raise ZscirError(f"unknown FashionIQ category {bad[0] if bad else '(none)'!r}: "
                         f"expected some of {', '.join(CATEGORIES)}")
    return categories


class ImageFinder:
    """Finds ``ASIN`` files in the accepted image folders, listing each folder once."""

    def __init__(self, root: Path):
        self.root = root
        self._listings: dict[Path, dict[str, Path]] = {}

    def folders(self, category: str) -> list[Path]:
        r = self.root
        return [r / "images" / category, r / category, r / "resized_image" / category, r / "images"]

    def _listing(self, folder: Path) -> dict[str, Path]:
        if folder not in self._listings:
            found: dict[str, Path] = {}
            if folder.is_dir():
                with os.scandir(folder) as it:
                    for entry in it:
                        stem, ext = os.path.splitext(entry.name)
                        if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                            # .png first when both exist: the order of IMAGE_EXTENSIONS
                            prev = found.get(stem)
                            if prev is None or IMAGE_EXTENSIONS.index(ext.lower()) < IMAGE_EXTENSIONS.index(prev.suffix.lower()):
                                found[stem] = Path(entry.path)
            self._listings[folder] = found
        return self._listings[folder]

    def resolve(self, category: str, asins: list[str], what: str) -> dict[str, Path]:
        folders = self.folders(category)
        out, missing = {}, []
        for asin in asins:
            for folder in folders:
                path = self._listing(folder).get(asin)
                if path is not None:
                    out[asin] = path
                    break
            else:
                missing.append(asin)
        if missing:
            first = missing[0]
            raise ZscirError(
                f"{what}: image {first!r} missing: expected {self.root / 'images' / (first + '.png')} "
                f"(or .jpg, or under {self.root / 'images' / category}, {self.root / category}, "
                f"{self.root / 'resized_image' / category}); {len(missing)} of {len(asins)} images missing")
        return out


def gallery_path(root: Path, category: str, split: str) -> Path:
    return root / "image_splits" / f"split.{category}.{split}.json"


def read_gallery(root: Path, category: str, split: str) -> tuple[list[str], Path]:
    path = gallery_path(root, category, split)
    asins = read_json(path, f"FashionIQ {category} {split} image split")
    if not isinstance(asins, list) or not all(isinstance(a, str) for a in asins):
        raise ZscirError(f"{path}: expected a JSON list of image ids (ASIN strings)")
    return asins, path


def parse_record(records: list, path: Path, position: int) -> Query:
    record, at = record_at(records, position, path)
    captions = str_list_field(record, "captions", at, length=2)   # FashionIQ annotates two per pair
    target = id_field(record, "target", at, optional=True)
    return Query(qid=str(position), reference=id_field(record, "candidate", at), captions=captions,
                 targets=(target,) if target is not None else ())


def make_split(benchmark: str, root: Path, category: str, split: str, queries: list[Query], gallery: list[str],
               sources: list[str], finder: ImageFinder, notes: dict | None = None,
               gallery_label: str = "") -> EvalSplit:
    needed = list(dict.fromkeys(gallery + [q.reference for q in queries]))
    images = finder.resolve(category, needed, f"{benchmark} {category} {split}")
    return EvalSplit(benchmark=benchmark, split=split, kind="fashioniq", category=category, gallery=gallery,
                     images=images, queries=queries, sources=sources, notes=notes or {},
                     gallery_label=gallery_label or f"fashioniq-{category}-{split}").check()


def load(root: str | Path, split: str = "val", categories=CATEGORIES, benchmark: str = "fashioniq") -> list[EvalSplit]:
    root = Path(root)
    finder = ImageFinder(root)
    out = []
    for category in check_categories(categories):
        cap_path = root / "captions" / f"cap.{category}.{split}.json"
        records = read_json(cap_path, f"FashionIQ {category} {split} captions")
        if not isinstance(records, list):
            raise ZscirError(f"{cap_path}: expected a JSON list of records")
        queries = [parse_record(records, cap_path, i) for i in range(len(records))]
        targets_all_or_none(queries, cap_path, "target")
        gallery, g_path = read_gallery(root, category, split)
        notes = {"empty_captions": sum(1 for q in queries for c in q.captions if not c.strip())}
        out.append(make_split(benchmark, root, category, split, queries, gallery, [str(cap_path), str(g_path)],
                              finder, notes))
    return out
