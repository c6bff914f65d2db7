"""Loaders read every record of the real annotation files (with placeholder images) and fail fast on bad layouts."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from zscir.benchmarks import BENCHMARKS, get_benchmark, load_splits
from zscir.benchmarks import circo, cirr, fashioniq, fine
from zscir.errors import ZscirError
from test_benchmarks_fixtures import (SHARED, make_circo, make_cirr, make_fashioniq, master_png, needs_shared,
                                      placeholders)

pytestmark = needs_shared


@pytest.fixture(scope="module")
def circo_root(tmp_path_factory):
    return make_circo(tmp_path_factory.mktemp("circo"))


@pytest.fixture(scope="module")
def cirr_root(tmp_path_factory):
    return make_cirr(tmp_path_factory.mktemp("cirr"))


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory):
    return make_fashioniq(tmp_path_factory.mktemp("fiq"), splits=("train", "val", "test"))


# ---------------------------------------------------------------- CIRCO
def test_circo_val_reads_every_query(circo_root):
    (s,) = load_splits("circo", circo_root, "val")
    assert s.name == "circo/val" and s.kind == "circo" and s.has_ground_truth
    assert len(s.queries) == 220
    raw = json.loads((SHARED / "circo/annotations/val.json").read_text())
    for q, r in zip(s.queries, raw):
        assert q.qid == str(r["id"]) and q.reference == str(r["reference_img_id"])
        assert q.captions == (r["relative_caption"],)
        assert q.targets == tuple(map(str, r["gt_img_ids"]))   # target first, 1-14 ground truths
        assert q.targets[0] == str(r["target_img_id"])
    assert max(len(q.targets) for q in s.queries) == 14 and min(len(q.targets) for q in s.queries) == 1
    assert s.id_type is int
    # file_name is taken from the list when present, else {id:012d}.jpg
    some = s.gallery[0]
    assert s.images[some].name == f"{int(some):012d}.jpg" and s.images[some].is_file()


def test_circo_test_has_800_queries_without_ground_truth(circo_root):
    (s,) = load_splits("circo", circo_root, "test")
    assert len(s.queries) == 800 and not s.has_ground_truth
    assert [q.qid for q in s.queries] == [str(i) for i in range(800)]


def test_circo_missing_image_names_expected_path(circo_root, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(circo_root / "annotations", root / "annotations")
    lst = root / circo.GALLERY_LIST
    lst.parent.mkdir(parents=True)
    shutil.copy(circo_root / circo.GALLERY_LIST, lst)
    ids = [e["id"] for e in json.loads(lst.read_text())["images"]]
    img_dir = root / circo.IMAGE_DIR
    placeholders([img_dir / f"{i:012d}.jpg" for i in ids[1:]], master_png(tmp_path))
    with pytest.raises(ZscirError, match=f"expected .*{ids[0]:012d}.jpg"):
        circo.load(root, "val")


def test_circo_wrong_layout_and_unknown_split(circo_root, tmp_path):
    with pytest.raises(ZscirError, match=r"expected .*annotations/val.json.*no .*annotations folder"):
        circo.load(tmp_path, "val")
    with pytest.raises(ZscirError, match=r"split 'dev'.*splits found: test, val"):
        circo.load(circo_root, "dev")
    root = tmp_path / "nolist"
    shutil.copytree(circo_root / "annotations", root / "annotations")
    with pytest.raises(ZscirError, match="image_info_unlabeled2017.json"):
        circo.load(root, "val")


def test_circo_ground_truth_outside_gallery_is_an_error(circo_root, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(circo_root / "annotations", root / "annotations")
    os.symlink(circo_root / "COCO2017_unlabeled", root / "COCO2017_unlabeled")
    val = json.loads((root / "annotations/val.json").read_text())
    val[3]["gt_img_ids"].append(999999999)
    (root / "annotations/val.json").write_text(json.dumps(val))
    with pytest.raises(ZscirError, match="query 3: ground-truth image '999999999' is not in the gallery"):
        circo.load(root, "val")


# ---------------------------------------------------------------- CIRR
def test_cirr_val_reads_every_pair_and_keeps_quirks(cirr_root):
    (s,) = load_splits("cirr", cirr_root, "val")
    assert s.kind == "cirr" and len(s.queries) == 4181 and len(s.gallery) == 2297
    assert s.images[s.gallery[0]] == cirr_root / "dev" / f"{s.gallery[0]}.png"
    raw = json.loads((SHARED / "cirr/captions/cap.rc2.val.json").read_text())
    assert all(q.targets == (r["target_hard"],) and q.subset == tuple(r["img_set"]["members"])
               for q, r in zip(s.queries, raw))
    # 37 records have a target_hard outside target_soft: target_hard stays the target
    assert s.notes["target_hard_not_in_target_soft"] == 37
    odd = [q for q, r in zip(s.queries, raw) if r["target_hard"] not in r["target_soft"]]
    assert len(odd) == 37 and all(q.targets[0] in s.gallery_index for q in odd)


def test_cirr_test1_blank_caption_and_alias(cirr_root):
    (s,) = load_splits("cirr", cirr_root, "test")
    assert s.split == "test1" and len(s.queries) == 4148 and len(s.gallery) == 2315 and not s.has_ground_truth
    blank = [q for q in s.queries if not q.captions[0].strip()]
    assert len(blank) == 1 and blank[0].captions == (" ",) and blank[0].qid == "27098"
    assert s.notes["blank_captions"] == 1


def test_cirr_flat_layout(tmp_path):
    root = make_cirr(tmp_path, nested=False, splits=("val",))
    (s,) = cirr.load(root, "val")
    assert len(s.queries) == 4181 and len(s.gallery) == 2297


def test_cirr_missing_image_and_missing_files(cirr_root, tmp_path):
    with pytest.raises(ZscirError, match=r"CIRR val captions not found: expected .*cirr/captions/cap.rc2.val.json"):
        cirr.load(tmp_path, "val")
    root = tmp_path / "r"
    shutil.copytree(cirr_root / "cirr", root / "cirr")
    with pytest.raises(ZscirError, match=r"image missing: expected .*/dev/dev-.*png \(2297 files missing"):
        cirr.load(root, "val")


# ---------------------------------------------------------------- FashionIQ
@pytest.mark.parametrize("split,expected", [
    ("val", {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}),
    ("test", {"dress": (2024, 3818), "shirt": (2038, 6346), "toptee": (2056, 5374)}),
    ("train", {"dress": (5985, 11452), "shirt": (5988, 19036), "toptee": (6027, 16121)}),
])
def test_fashioniq_reads_every_record(fiq_root, split, expected):
    splits = load_splits("fashioniq", fiq_root, split)
    assert [s.category for s in splits] == ["dress", "shirt", "toptee"]
    for s in splits:
        n_q, n_g = expected[s.category]
        assert (len(s.queries), len(s.gallery)) == (n_q, n_g), s.name
        assert all(len(q.captions) == 2 for q in s.queries)
        assert s.has_ground_truth == (split != "test")
        assert s.images[s.gallery[0]].suffix == ".png"


def test_fashioniq_empty_captions_kept(fiq_root):
    by_cat = {s.category: s for s in load_splits("fashioniq", fiq_root, "val")}
    empties = {c: s.notes["empty_captions"] for c, s in by_cat.items()}
    assert empties == {"dress": 0, "shirt": 1, "toptee": 2}
    q = next(q for q in by_cat["toptee"].queries if not all(c.strip() for c in q.captions))
    assert len(q.captions) == 2


def test_fashioniq_per_category_jpg_folders_and_category_option(tmp_path):
    root = make_fashioniq(tmp_path, splits=("val",), image_layout="per-category")
    (s,) = load_splits("fashioniq", root, "val", categories=["shirt"])
    assert s.category == "shirt" and len(s.queries) == 2038
    assert s.images[s.gallery[0]] == root / "shirt" / f"{s.gallery[0]}.jpg"
    with pytest.raises(ZscirError, match="unknown FashionIQ category 'pants'"):
        load_splits("fashioniq", root, "val", categories=["pants"])


def test_fashioniq_missing_image_names_path(fiq_root, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(fiq_root / "captions", root / "captions")
    shutil.copytree(fiq_root / "image_splits", root / "image_splits")
    asins = json.loads((root / "image_splits/split.dress.val.json").read_text())
    placeholders([root / "images" / f"{a}.png" for a in asins[1:]], master_png(tmp_path))
    with pytest.raises(ZscirError, match=rf"image '{asins[0]}' missing: expected .*images/{asins[0]}.png"):
        fashioniq.load(root, "val", categories=["dress"])


# ---------------------------------------------------------------- Fine-FashionIQ / Fine-CIRR
def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fine_fashioniq_look_alike_files(fiq_root, tmp_path):
    root = tmp_path / "ffiq"
    shutil.copytree(fiq_root / "image_splits", root / "image_splits")
    os.symlink(fiq_root / "images", root / "images")
    raw = json.loads((fiq_root / "captions/cap.dress.val.json").read_text())[:40]
    rows = [{"target": r["target"], "candidate": r["candidate"], "finemt": f"1. {r['captions'][0]}\n2. {r['captions'][1]}"}
            for r in raw]
    write_jsonl(root / "captions/fiq.fine.dress.val.jsonl", rows)
    (s,) = load_splits("fine-fashioniq", root, "val", categories=["dress"], gallery="fine")
    assert len(s.queries) == 40 and s.queries[0].captions == (rows[0]["finemt"],)
    expected = list(dict.fromkeys(x for r in rows for x in (r["candidate"], r["target"])))
    assert s.gallery == expected   # FineCIR's gallery: candidate then target, first appearance
    (full,) = load_splits("fine-fashioniq", root, "val", categories=["dress"], gallery="split")
    assert len(full.gallery) == 3817
    with pytest.raises(ZscirError, match=r"Fine-FashionIQ shirt val texts not found: expected .*fiq.fine.shirt.val.jsonl"):
        load_splits("fine-fashioniq", root, "val", categories=["shirt"])
    with pytest.raises(ZscirError, match="unknown Fine-FashionIQ gallery 'tiny'"):
        fine.load_fashioniq(root, "val", categories=["dress"], gallery="tiny")


def test_fine_cirr_look_alike_files(cirr_root, tmp_path):
    root = tmp_path / "fcirr"
    shutil.copytree(cirr_root / "cirr" / "image_splits", root / "fine-cirr" / "image_splits")
    os.symlink(cirr_root / "dev", root / "dev")
    raw = json.loads((cirr_root / "cirr/captions/cap.rc2.val.json").read_text())
    rows = [{k: v for k, v in r.items() if k not in ("caption", "target_soft")} | {"finemt": "1. " + r["caption"]}
            for r in raw[:100]]
    write_jsonl(root / "fine-cirr/finemt_captions/cirr.fine.val.json", rows)  # FineCIR's README naming
    (s,) = load_splits("fine-cirr", root, "val")
    assert s.kind == "cirr" and len(s.queries) == 100 and len(s.gallery) == 2297
    assert s.queries[5].captions == ("1. " + raw[5]["caption"],) and s.queries[5].targets == (raw[5]["target_hard"],)
    bad = [dict(r) for r in rows]
    del bad[7]["finemt"]
    write_jsonl(root / "captions/cirr.fine.val.jsonl", bad)
    with pytest.raises(ZscirError, match=r"cirr.fine.val.jsonl: record 7 has no field 'finemt'"):
        load_splits("fine-cirr", root, "val")


# ---------------------------------------------------------------- registry
def test_registry_names_and_errors(tmp_path):
    assert set(BENCHMARKS) == {"circo", "cirr", "fashioniq", "fine-fashioniq", "fine-cirr", "shapes"}
    assert get_benchmark("cirr").remove_reference and not get_benchmark("circo").remove_reference
    with pytest.raises(ZscirError, match="unknown benchmark 'coco'"):
        get_benchmark("coco")
    with pytest.raises(ZscirError, match="CIRCO needs --root"):
        load_splits("circo", None, "val")
    with pytest.raises(ZscirError, match="is not a directory"):
        load_splits("circo", tmp_path / "nope", "val")


# ---------------------------------------------------------------- shapes world (CIRCO layout)
def test_shapes_world_loads_every_split_through_the_circo_loader(tmp_path):
    build = pytest.importorskip("zscir.world.build")
    root = build.generate_world(tmp_path / "world", build.WorldConfig.tiny(), workers=1, progress=False,
                                log=lambda *_: None)
    record = json.loads((root / "world.json").read_text())["counts"]
    for split in ("val", "val_coarse", "test", "test_coarse"):
        (s,) = load_splits("shapes", root, split)
        raw = json.loads((root / "annotations" / f"{split}.json").read_text())
        assert s.kind == "circo" and s.has_ground_truth and len(s.queries) == len(raw) == 16
        assert len(s.gallery) == record["eval_gallery"] and s.gallery_name == "shapes"
        assert all(q.targets == tuple(map(str, r["gt_img_ids"])) for q, r in zip(s.queries, raw))
        assert s.images[s.gallery[0]].suffix == ".png"
    for split in ("train", "train_coarse"):
        (s,) = load_splits("shapes", root, split)
        assert len(s.gallery) == record["train_gallery"] and s.gallery_name == "shapes-train"
