"""Helpers (no tests): benchmark folders made of the real annotation files plus placeholder images.

The real annotation files live in ../shared/data/benchmarks (no images). Tests copy them into a
tmp dir in each official layout and create one tiny PNG under every file name they reference, as
hard links to a single file so that tens of thousands of placeholders take a second.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data/benchmarks")

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="real benchmark annotation files not available")


def png_bytes(color=(200, 30, 30), size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def placeholders(paths, master: Path) -> None:
    """Create every path as a hard link to ``master`` (a copy where links are not allowed)."""
    made_dirs = set()
    for p in paths:
        p = Path(p)
        if p.parent not in made_dirs:
            p.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(p.parent)
        if p.exists():
            continue
        try:
            os.link(master, p)
        except OSError:
            shutil.copyfile(master, p)


def master_png(tmp: Path) -> Path:
    m = tmp / "placeholder.png"
    if not m.exists():
        m.write_bytes(png_bytes())
    return m


def make_circo(tmp: Path) -> Path:
    """CIRCO layout with the real annotations and a gallery list of every id they mention."""
    root = tmp / "CIRCO"
    shutil.copytree(SHARED / "circo" / "annotations", root / "annotations")
    ids = set()
    for split in ("val", "test"):
        for r in json.loads((root / "annotations" / f"{split}.json").read_text()):
            ids.add(r["reference_img_id"])
            ids.update(r.get("gt_img_ids", []))
    ids = sorted(ids)
    lst = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    lst.parent.mkdir(parents=True)
    # the real COCO list carries file_name and more fields; give file_name to half, to test the fallback
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} if n % 2 else {"id": i} for n, i in enumerate(ids)]
    lst.write_text(json.dumps({"info": {}, "images": images}))
    placeholders([root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg" for i in ids], master_png(tmp))
    return root


def make_cirr(tmp: Path, nested: bool = True, splits=("val", "test1")) -> Path:
    """CIRR layout: ROOT/cirr/{captions,image_splits} (nested) or ROOT/{captions,image_splits}."""
    root = tmp / ("CIRR" if nested else "CIRR_flat")
    ann = root / "cirr" if nested else root
    (ann / "captions").mkdir(parents=True)
    (ann / "image_splits").mkdir(parents=True)
    paths = []
    for split in splits:
        shutil.copy(SHARED / "cirr" / "captions" / f"cap.rc2.{split}.json", ann / "captions")
        shutil.copy(SHARED / "cirr" / "image_splits" / f"split.rc2.{split}.json", ann / "image_splits")
        rel = json.loads((SHARED / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text())
        paths += [root / r for r in rel.values()]
    placeholders(paths, master_png(tmp))
    return root


def make_fashioniq(tmp: Path, splits=("val", "test"), image_layout: str = "flat") -> Path:
    """FashionIQ layout; images flat in images/ (.png), or per category folder (.jpg)."""
    root = tmp / "FashionIQ"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir(parents=True)
    paths = []
    for cat in ("dress", "shirt", "toptee"):
        for split in splits:
            shutil.copy(SHARED / "fashioniq" / "captions" / f"cap.{cat}.{split}.json", root / "captions")
            shutil.copy(SHARED / "fashioniq" / "image_splits" / f"split.{cat}.{split}.json", root / "image_splits")
            asins = json.loads((SHARED / "fashioniq" / "image_splits" / f"split.{cat}.{split}.json").read_text())
            if image_layout == "flat":
                paths += [root / "images" / f"{a}.png" for a in asins]
            else:
                paths += [root / cat / f"{a}.jpg" for a in asins]
    placeholders(paths, master_png(tmp))
    return root
