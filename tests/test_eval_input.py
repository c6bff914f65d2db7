"""Bad benchmark input (issue 27): annotation files checked by schema at load, unreadable images, existing runs,
options that do not apply. Each case is a small annotation file written here; every error is one line naming the
file, the record and the field."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zscir.benchmarks import load_splits
from zscir.errors import ZscirError
from _cli import one_line_error, run

TINY = "zscir-tiny-test"


# ---------------------------------------------------------------- small benchmark folders
def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(path)


def circo_folder(root: Path, records: list | None = None, images=None, n=6, corrupt: tuple[int, ...] = ()) -> Path:
    """CIRCO layout: images 1..n (``corrupt`` ones are not images), and val.json (three queries by default)."""
    img_dir = root / "COCO2017_unlabeled" / "unlabeled2017"
    for i in range(1, n + 1):
        if i in corrupt:
            img_dir.mkdir(parents=True, exist_ok=True)
            (img_dir / f"{i:012d}.png").write_bytes(b"not an image")
        else:
            _png(img_dir / f"{i:012d}.png", i)
    if images is None:
        images = {"images": [{"id": i, "file_name": f"{i:012d}.png"} for i in range(1, n + 1)]}
    lst = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text(json.dumps(images))
    if records is None:
        records = circo_records()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "val.json").write_text(json.dumps(records))
    return root


def circo_records() -> list[dict]:
    return [{"id": q, "reference_img_id": q + 1, "relative_caption": f"make it {c}", "shared_concept": "a thing",
             "target_img_id": q + 2, "gt_img_ids": [q + 2, q + 3]} for q, c in enumerate(["red", "blue", "green"])]


def cirr_folder(root: Path, records: list | None = None, mapping: dict | None = None) -> Path:
    names = [f"dev-{i}-0-img0" for i in range(6)]
    for i, name in enumerate(names):
        _png(root / "dev" / f"{name}.png", i)
    if mapping is None:
        mapping = {name: f"./dev/{name}.png" for name in names}
    if records is None:
        records = [{"pairid": 100 + q, "reference": names[q], "target_hard": names[q + 1],
                    "target_soft": {names[q + 1]: 1.0}, "caption": f"add a {c}",
                    "img_set": {"id": q, "members": names[:6], "reference_rank": 0, "target_rank": 1}}
                   for q, c in enumerate(["dog", "cat", "hat"])]
    for folder, name, data in (("captions", "cap.rc2.val.json", records),
                               ("image_splits", "split.rc2.val.json", mapping)):
        (root / "cirr" / folder).mkdir(parents=True, exist_ok=True)
        (root / "cirr" / folder / name).write_text(json.dumps(data))
    return root


def fiq_folder(root: Path, records: list) -> Path:
    asins = [f"B00{i}" for i in range(5)]
    for i, a in enumerate(asins):
        _png(root / "images" / f"{a}.png", i)
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir(parents=True)
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(records))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(asins))
    return root


def fiq_record(n: int, captions=("is red", "has sleeves"), target=True) -> dict:
    r = {"candidate": f"B00{n}", "captions": list(captions)}
    if target:
        r["target"] = f"B00{n + 1}"
    return r


def edited(records: list[dict], position: int, **change) -> list[dict]:
    out = [dict(r) for r in records]
    for key, value in change.items():
        if value is ...:
            del out[position][key]
        else:
            out[position][key] = value
    return out


# ---------------------------------------------------------------- CIRCO
@pytest.mark.parametrize("change, pattern", [
    ({"relative_caption": None}, r"record 1 \(id 1\): field 'relative_caption': expected a string, got null"),
    ({"relative_caption": 42}, r"record 1 \(id 1\): field 'relative_caption': expected a string, got 42 \(a number\)"),
    ({"gt_img_ids": 5}, r"record 1 \(id 1\): field 'gt_img_ids': expected a list of ids, got 5 \(a number\)"),
    # read character by character today: ids '1', '2', '3'
    ({"gt_img_ids": "123"}, r"record 1 \(id 1\): field 'gt_img_ids': expected a list of ids, got '123' \(a string\)"),
    ({"gt_img_ids": [3, [4]]}, r"record 1 \(id 1\): field 'gt_img_ids\[1\]': expected an id"),
    ({"reference_img_id": 2.5}, r"record 1 \(id 1\): field 'reference_img_id': expected an id \(an integer or a non-empty string\)"),
    ({"id": 0}, r"record 1 \(id 0\): field 'id': expected a unique query id, got the id of record 0 again"),
])
def test_circo_wrong_fields_name_file_record_and_field(tmp_path, change, pattern):
    root = circo_folder(tmp_path / "c", edited(circo_records(), 1, **change))
    with pytest.raises(ZscirError, match=r"val\.json: " + pattern):
        load_splits("circo", root, "val")


@pytest.mark.parametrize("images, pattern", [
    ({"images": 5}, r"the top-level object: field 'images': expected a list, got 5 \(a number\)"),
    ({"images": [{"id": 1, "file_name": "000000000001.png"}, 5]}, r"the top-level object: field 'images\[1\]': expected an object with 'id' and 'file_name', got 5"),
    ({"images": [{"id": "photo-a"}]}, r"images\[0\] has no field 'file_name' \(id photo-a\)"),
    ({"images": [{"id": 1, "file_name": 7}]}, r"images\[0\] \(id 1\): field 'file_name': expected a string"),
    ([1, 2], r"expected a JSON object with an 'images' list"),
])
def test_circo_gallery_list_checked(tmp_path, images, pattern):
    root = circo_folder(tmp_path / "c", images=images)
    with pytest.raises(ZscirError, match=r"image_info_unlabeled2017\.json: " + pattern):
        load_splits("circo", root, "val")


def test_circo_integer_ids_without_file_name_keep_coco_naming(tmp_path):
    root = circo_folder(tmp_path / "c", images={"images": [{"id": i} for i in range(1, 7)]})
    for i in range(1, 7):   # COCO's naming: {id:012d}.jpg
        (root / "COCO2017_unlabeled/unlabeled2017" / f"{i:012d}.png").rename(
            root / "COCO2017_unlabeled/unlabeled2017" / f"{i:012d}.jpg")
    (s,) = load_splits("circo", root, "val")
    assert s.images["3"].name == "000000000003.jpg"
    assert [q.targets for q in s.queries] == [("2", "3"), ("3", "4"), ("4", "5")]


def test_one_record_without_target_is_an_error_a_split_without_any_is_a_test_split(tmp_path):
    root = circo_folder(tmp_path / "c", edited(circo_records(), 2, target_img_id=..., gt_img_ids=...))
    with pytest.raises(ZscirError, match=r"val\.json: record 2 \(id 2\): field 'target_img_id': expected a target, "
                                         r"as 2 of the 3 records have"):
        load_splits("circo", root, "val")
    test_split = [{k: v for k, v in r.items() if k not in ("target_img_id", "gt_img_ids")} for r in circo_records()]
    (s,) = load_splits("circo", circo_folder(tmp_path / "t", test_split), "val")
    assert not s.has_ground_truth and all(q.targets == () for q in s.queries)


def test_circo_cli_one_line_instead_of_a_traceback(tmp_path, capsys):
    root = circo_folder(tmp_path / "c", edited(circo_records(), 0, relative_caption=None))
    code, _, err = run(["eval", "circo", "--root", str(root), "--model", "sum", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, r"val\.json: record 0 \(id 0\): field 'relative_caption': expected a string, got null")


# ---------------------------------------------------------------- CIRR
@pytest.mark.parametrize("edit, pattern", [
    (lambda rs: rs[1]["img_set"].update(members=5),
     r"cap\.rc2\.val\.json: record 1 \(id 101\): field 'img_set\.members': expected a list of ids, got 5"),
    (lambda rs: rs[1].update(img_set=3), r"record 1 \(id 101\): field 'img_set': expected an object, got 3"),
    (lambda rs: rs[2].update(caption=None),   # evaluated as the text "None" today
     r"cap\.rc2\.val\.json: record 2 \(id 102\): field 'caption': expected a string, got null"),
    (lambda rs: rs[2].update(pairid=100), r"record 2 \(id 100\): field 'pairid': expected a unique query id"),
    (lambda rs: rs[0].pop("target_hard"), r"record 0 \(id 100\): field 'target_hard': expected a target"),
])
def test_cirr_wrong_fields(tmp_path, edit, pattern):
    root = cirr_folder(tmp_path / "c")
    path = root / "cirr/captions/cap.rc2.val.json"
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))
    with pytest.raises(ZscirError, match=pattern):
        load_splits("cirr", root, "val")


def test_cirr_null_split_path(tmp_path, capsys):
    names = [f"dev-{i}-0-img0" for i in range(6)]
    mapping = {name: f"./dev/{name}.png" for name in names} | {names[4]: None}
    root = cirr_folder(tmp_path / "c", mapping=mapping)
    code, _, err = run(["eval", "cirr", "--root", str(root), "--model", "sum", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, r"split\.rc2\.val\.json: the image split: field 'dev-4-0-img0': expected a path "
                              r"relative to the root \(a string\), got null")


def test_cirr_members_not_a_list_is_one_line(tmp_path, capsys):
    root = cirr_folder(tmp_path / "c")
    path = root / "cirr/captions/cap.rc2.val.json"
    records = json.loads(path.read_text())
    records[0]["img_set"]["members"] = 5
    path.write_text(json.dumps(records))
    code, _, err = run(["eval", "cirr", "--root", str(root), "--model", "sum", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, r"record 0 \(id 100\): field 'img_set\.members': expected a list of ids")


# ---------------------------------------------------------------- FashionIQ
@pytest.mark.parametrize("captions", [["is red"], ["is red", "has sleeves", "is long"]])
def test_fashioniq_needs_exactly_two_captions(tmp_path, captions):
    records = [fiq_record(0), fiq_record(1, captions), fiq_record(2)]
    root = fiq_folder(tmp_path / "f", records)
    with pytest.raises(ZscirError, match=r"cap\.dress\.val\.json: record 1: field 'captions': expected a list of 2 "
                                         rf"strings, got a list of {len(captions)} item"):
        load_splits("fashioniq", root, "val", categories=["dress"])


def test_fashioniq_target_mix_and_wrong_types(tmp_path):
    root = fiq_folder(tmp_path / "f", [fiq_record(0), fiq_record(1, target=False), fiq_record(2)])
    with pytest.raises(ZscirError, match=r"cap\.dress\.val\.json: record 1 \(id 1\): field 'target': expected a "
                                         r"target, as 2 of the 3 records have"):
        load_splits("fashioniq", root, "val", categories=["dress"])
    root = fiq_folder(tmp_path / "g", [fiq_record(0), dict(fiq_record(1), candidate=None)])
    with pytest.raises(ZscirError, match=r"record 1: field 'candidate': expected an id .*, got null"):
        load_splits("fashioniq", root, "val", categories=["dress"])
    root = fiq_folder(tmp_path / "h", [fiq_record(0), fiq_record(1, ("is red", None))])
    with pytest.raises(ZscirError, match=r"record 1: field 'captions\[1\]': expected a string, got null"):
        load_splits("fashioniq", root, "val", categories=["dress"])


# ---------------------------------------------------------------- Fine-FashionIQ
def test_fine_fashioniq_null_text(tmp_path):
    root = fiq_folder(tmp_path / "f", [fiq_record(0)])
    rows = [{"candidate": "B000", "target": "B001", "finemt": "1. is red"},
            {"candidate": "B001", "target": "B002", "finemt": None}]
    (root / "captions" / "fiq.fine.dress.val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ZscirError, match=r"fiq\.fine\.dress\.val\.jsonl: record 1: field 'finemt': expected a "
                                         r"string, got null"):
        load_splits("fine-fashioniq", root, "val", categories=["dress"])


# ---------------------------------------------------------------- `zscir eval`: images, runs, options
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """The random tiny CLIP saved to a file (its identity is then a content hash)."""
    import torch
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone(TINY, None)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    return str(path)


def eval_args(root, out, weights, cache, *more):
    return ["eval", "circo", "--root", str(root), "--model", "image", "--clip", TINY, "--pretrained", weights,
            "--no-progress", "--cache-dir", str(cache), "--out", str(out), *more]


def test_unreadable_gallery_image_refused_unless_allowed(tmp_path, tiny_weights, capsys):
    root = circo_folder(tmp_path / "c", n=6, corrupt=(5,))   # image 5: a ground truth of query 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run(eval_args(root, tmp_path / "r", tiny_weights, tmp_path / "cache"), capsys)
        one_line_error(code, err, r"circo/val: 1 image could not be read \(first: .*000000000005\.png: .*\): leaving them "
                                  r"out would change the metrics; .*--allow-missing-images")
        assert not (tmp_path / "r" / "results.json").exists()
        code, _, err = run(eval_args(root, tmp_path / "r", tiny_weights, tmp_path / "cache",
                                     "--allow-missing-images"), capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "could not be read" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: circo/val: 1 image could not be read (first: ")
    assert "000000000005.png" in warned[0] and warned[0].endswith("left out (--allow-missing-images)")
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["allow_missing_images"] is True
    split = results["models"][0]["splits"]["circo/val"]
    assert [c["id"] for c in split["corrupt_images"]] == ["5"] and "000000000005.png" in split["unreadable"]


def test_eval_out_with_results_is_refused_unless_overwrite(tmp_path, tiny_weights, capsys):
    root = circo_folder(tmp_path / "c")
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"mine": 1}')
    code, _, err = run(eval_args(root, out, tiny_weights, tmp_path / "cache"), capsys)
    one_line_error(code, err, r"--out .*run already holds evaluation results \(results\.json\): pass --overwrite")
    assert (out / "results.json").read_text() == '{"mine": 1}'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run(eval_args(root, out, tiny_weights, tmp_path / "cache", "--overwrite"), capsys)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["benchmark"] == "circo"


@pytest.mark.parametrize("name", ["shapes", "circo", "cirr"])
def test_category_for_a_benchmark_without_categories_is_a_usage_error(tmp_path, capsys, name):
    code, _, err = run(["eval", name, "--category", "dress", "--root", str(tmp_path)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--category: {name} has no categories (only fashioniq, fine-fashioniq take --category)" in lines[0]
