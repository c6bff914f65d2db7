"""Issue 27, index trust: what `retrieve` and `index` used to accept silently.

Each test fails on the code before issue 27: a flipped byte in the vectors file ranked an image
first with a score in the thousands; swapped names in the ids file mislabelled results; a plain
rerun kept a changed feature shard; --verify passed an edited features/meta.json and --force
refused to repair it; --verify called an index damaged whose store held an interrupted update;
`--out photos/rocket.jpg` left `photos/.rocket.jpg.lock`; `--exact-max -1` was accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex, build_index, verify_index
from _cli import one_line_error, run
from _images import draw_image as draw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    model = load_backbone("zscir-tiny-test", None).model
    weights = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"weights": str(weights), "bb": load_backbone("zscir-tiny-test", str(weights)),
            "cli": ["--clip", "zscir-tiny-test", "--pretrained", str(weights)]}


def built(tmp_path, bb, n=8) -> tuple[Path, Path, list[Path]]:
    images = tmp_path / "imgs"
    images.mkdir()
    paths = [draw(images / f"g{i:02d}.png", i) for i in range(n)]
    out = tmp_path / "idx"
    build_index(out, bb, images=images, progress=False)
    return images, out, paths


def edit(path: Path, change) -> None:
    """Change a file's bytes as an editor would; its mtime moves on (explicitly by 1 s: a write within the
    file system's timestamp granularity would otherwise keep it, whatever the machine's speed)."""
    st = path.stat()
    path.write_bytes(change(path.read_bytes()))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))


def flip(data: bytes, at: int = -2) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


def test_flipped_vector_byte_is_refused_on_open(tiny, tmp_path, capsys):
    images, out, paths = built(tmp_path, tiny["bb"])
    meta = json.loads((out / "index.json").read_text())
    assert meta["bytes"]["vectors"] == (out / meta["files"]["vectors"]).stat().st_size
    vectors = out / meta["files"]["vectors"]
    edit(vectors, lambda b: flip(b, len(b) - 2 * 16 * 3 - 1))  # the high byte of one fp16 value: a huge score
    with pytest.raises(ZscirError, match=r"vectors\.g\d+\.npy' is damaged \(bytes 0-\d+ differ .*crc32.*"
                                         r"zscir index --verify"):
        GalleryIndex.open(out)
    code, _, err = run(["retrieve", "--index", str(out), "--model", "image", *tiny["cli"], "--ref", str(paths[1]),
                        "--text", "make it red"], capsys)
    one_line_error(code, err, r"index file .*vectors\.g\d+\.npy' is damaged")
    summary = build_index(out, tiny["bb"], images=images, progress=False)  # a rerun rebuilds it
    assert summary["rebuilt"] and summary["features"]["encoded"] == 0
    index = GalleryIndex.open(out)
    scores, rows = index.search(np.asarray(index.index.vectors[:4], dtype=np.float32), 3)
    assert rows[:, 0].tolist() == [0, 1, 2, 3] and scores.max() <= 1.001  # unit vectors again, no huge score


def test_swapped_names_in_ids_file_are_refused(tiny, tmp_path):
    _, out, _ = built(tmp_path, tiny["bb"])
    ids_file = out / json.loads((out / "index.json").read_text())["files"]["ids"]

    def swap(data: bytes) -> bytes:
        rows = json.loads(data)
        for column in ("ids", "paths"):
            rows[column][0], rows[column][1] = rows[column][1], rows[column][0]
        text = json.dumps(rows)
        return text.encode()[:len(data)].ljust(len(data), b" ")  # same size: only the sha256 tells

    edit(ids_file, swap)
    with pytest.raises(ZscirError, match=r"ids\.g\d+\.json' is damaged \(content differs from index\.json"):
        GalleryIndex.open(out)
    json.loads((out / "index.json").read_text())  # index.json itself is untouched


def test_truncated_file_named_by_size_and_old_index_opens_with_one_note(tiny, tmp_path, capsys):
    _, out, _ = built(tmp_path, tiny["bb"])
    meta = json.loads((out / "index.json").read_text())
    vectors = out / meta["files"]["vectors"]
    original = vectors.read_bytes()
    vectors.write_bytes(original[:-64])
    with pytest.raises(ZscirError, match=r"vectors\.g\d+\.npy' is damaged \(\d+ bytes, index\.json records \d+"):
        GalleryIndex.open(out)
    vectors.write_bytes(original)
    old = {k: v for k, v in meta.items() if k not in ("bytes", "blocks")}  # as an older zscir wrote it
    (out / "index.json").write_text(json.dumps(old))
    capsys.readouterr()
    GalleryIndex.open(out)
    GalleryIndex.open(out)
    err = capsys.readouterr().err
    assert err.count("built before zscir recorded file sizes") == 1, err
    summary = build_index(out, tiny["bb"], images=tmp_path / "imgs", progress=False)  # a rerun records them
    assert not summary["rebuilt"] and "blocks" in json.loads((out / "index.json").read_text())


def test_rerun_reencodes_a_changed_feature_shard(tiny, tmp_path):
    images, out, paths = built(tmp_path, tiny["bb"])
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    shard = out / "features" / "shards" / f"{manifest['shards'][0]['name']}.pooled.npy"
    good = shard.read_bytes()
    edit(shard, flip)  # same size: only its sha256 tells
    summary = build_index(out, tiny["bb"], images=images, progress=False)
    assert summary["features"]["encoded"] == 8 and summary["rebuilt"]
    assert verify_index(out)["ok"]
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    fresh = out / "features" / "shards" / f"{manifest['shards'][0]['name']}.pooled.npy"
    assert fresh.read_bytes()[128:] == good[128:]  # the same features, encoded again
    again = build_index(out, tiny["bb"], images=images, progress=False)
    assert again["features"]["encoded"] == 0 and not again["rebuilt"]


def test_edited_feature_meta_fails_verify_and_force_repairs_it(tiny, tmp_path, capsys):
    images, out, _ = built(tmp_path, tiny["bb"])
    meta_path = out / "features" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["backbone"] = {**meta["backbone"], "model": "ViT-B-32"}  # another model's description
    meta_path.write_text(json.dumps(meta))
    code, text, _ = run(["index", "--out", str(out), "--verify", "--json"], capsys)
    report = json.loads(text)
    assert code == 1 and any("meta.json" in p for p in report["problems"]), report
    code, _, err = run(["index", "--images", str(images), "--out", str(out), *tiny["cli"], "--no-progress"], capsys)
    one_line_error(code, err, r"meta\.json' is damaged .*edited.*--force")
    code, text, err = run(["index", "--images", str(images), "--out", str(out), *tiny["cli"], "--no-progress",
                           "--force", "--json"], capsys)
    assert code == 0, err
    assert json.loads(text)["features"]["encoded"] == 8
    assert verify_index(out)["ok"]
    assert json.loads(meta_path.read_text())["backbone"]["model"] == "zscir-tiny-test"


def test_verify_after_an_interrupted_update_is_ok_with_a_note(tiny, tmp_path, capsys):
    from zscir.features import FeatureStore

    images, out, paths = built(tmp_path, tiny["bb"], n=6)
    extra = [draw(images / f"new{i}.png", 50 + i) for i in range(3)]
    # what a killed update leaves: a new shard committed, not consolidated, index.json not rewritten
    FeatureStore(out / "features").update(tiny["bb"], [(p.name, p) for p in paths + extra], progress=False,
                                          consolidate=False)
    report = verify_index(out)
    assert report["ok"] and not report["problems"], report
    assert report["notes"] and "interrupted" in report["notes"][0]
    code, text, _ = run(["index", "--out", str(out), "--verify"], capsys)
    assert code == 0 and "all match" in text


def test_out_naming_an_image_file_is_refused_without_a_lock_file(tiny, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rocket = draw(photos / "rocket.jpg", 3)
    before = rocket.read_bytes()
    code, _, err = run(["index", "--images", str(photos), "--out", str(rocket), *tiny["cli"], "--no-progress"],
                       capsys)
    one_line_error(code, err, r"--out .*rocket\.jpg' is a file, not an index directory")
    assert sorted(p.name for p in photos.iterdir()) == ["rocket.jpg"] and rocket.read_bytes() == before
    (photos / "notes").mkdir()
    (photos / "notes" / "a.txt").write_text("mine")
    code, _, err = run(["index", "--images", str(photos), "--out", str(photos / "notes"), *tiny["cli"],
                        "--no-progress"], capsys)
    one_line_error(code, err, r"exists and is not a zscir index")
    assert not (photos / ".notes.lock").exists()


def test_exact_max_negative_is_a_usage_error(tiny, tmp_path, capsys):
    code, _, err = run(["index", "--images", str(tmp_path), "--out", str(tmp_path / "idx"), "--exact-max", "-1"],
                       capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "--exact-max" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "idx").exists()
