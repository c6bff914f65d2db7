"""Index maintenance: --force, --verify, repair of derived files, damage reported on one line,
dangling symlinks and non-UTF-8 names, content keys (a moved or touched folder is not re-encoded).

Each test names the bullet of issue 13's "Why" it covers; each fails on the code before the issue
(dangling symlink aborted the index, a rerun over a damaged index rebuilt nothing, truncated files
gave tracebacks, keys were path + mtime, there was no --force / --verify).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex, build_index
from _images import draw_image as draw
from _cli import one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def gallery(folder: Path, n: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [draw(folder / f"g{i:02d}.png", i) for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny test CLIP saved as a file, so that the CLI can load it (--clip zscir-tiny-test --pretrained FILE)."""
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    model = load_backbone("zscir-tiny-test", None).model
    weights = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"weights": str(weights), "bb": load_backbone("zscir-tiny-test", str(weights))}


def top_ids(root, bb, query_image) -> list[str]:
    from zscir.index.retriever import Retriever
    from zscir.models.query import load_query_encoder

    r = Retriever(GalleryIndex.open(root), load_query_encoder("image", bb))
    return [h.id for h in r.search(query_image, "make it red", k=5, exclude_reference=False)]


def test_dangling_symlink_skipped_and_non_utf8_names_indexed_with_escaped_ids(tiny, tmp_path, capsys):
    """Why: "one dangling symlink aborts `zscir index`"; "a non-UTF-8 file name crashes ... `retrieve --html`"."""
    images = tmp_path / "photos"
    gallery(images, 6)
    os.symlink(tmp_path / "gone.png", images / "dangling.png")
    os.rename(bytes(images / "g05.png"), bytes(images) + b"/caf\xe9.png")  # a Latin-1 name: not UTF-8
    cli = ["--clip", "zscir-tiny-test", "--pretrained", tiny["weights"]]
    code, out, err = run(["index", "--images", str(images), "--out", str(tmp_path / "idx"), *cli,
                          "--json", "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["count"] == 6 and summary["skipped"] == {"count": 1, "by_reason": {"dangling symlink": 1}}
    assert summary["escaped_ids"] == 1 and "dangling symlink" in err
    ids = json.loads(next((tmp_path / "idx").glob("ids.g*.json")).read_text(encoding="utf-8"))
    assert "caf\\xe9.png" in ids["ids"] and all(i.encode("utf-8") for i in ids["ids"])  # bytes-safe

    from zscir.features.sources import fs_name
    assert os.path.isfile(fs_name(str(images / "caf\\xe9.png")))  # the escaped id names the file on disk

    page = tmp_path / "page.html"
    code, out, err = run(["retrieve", "--index", str(tmp_path / "idx"), "--model", "image", *cli,
                          "--ref", str(images / "g01.png"), "--text", "make it red", "-k", "6",
                          "--html", str(page)], capsys)
    assert code == 0, err
    html = page.read_text(encoding="utf-8")
    assert "caf\\xe9.png" in html and "unreadable" not in html  # the escaped file's thumbnail is shown
    assert "caf\\xe9.png" in out


def test_rerun_rebuilds_damaged_derived_files_without_reencoding(tiny, tmp_path):
    """Why: "a damaged index cannot be repaired by re-indexing (nothing changed, so nothing rebuilt)"."""
    from zscir.index.gallery import verify_index

    images = tmp_path / "imgs"
    paths = gallery(images)
    out = tmp_path / "idx"
    build_index(out, tiny["bb"], images=images, progress=False)
    want = top_ids(out, tiny["bb"], paths[3])
    meta = json.loads((out / "index.json").read_text())
    damage = [
        ("vectors", lambda: (out / meta["files"]["vectors"]).write_bytes(b"\x00" * 40)),
        ("ids", lambda: (out / json.loads((out / "index.json").read_text())["files"]["ids"]).unlink()),
        ("index.json", lambda: (out / "index.json").write_text((out / "index.json").read_text()[:70])),
    ]
    for what, spoil in damage:
        spoil()
        with pytest.raises(ZscirError, match=r"damaged|missing") as e:
            GalleryIndex.open(out)
        assert "\n" not in str(e.value) and "zscir index" in str(e.value), what
        summary = build_index(out, tiny["bb"], images=images, progress=False)
        assert summary["rebuilt"] and summary["features"]["encoded"] == 0, what
        assert top_ids(out, tiny["bb"], paths[3]) == want, what
        assert verify_index(out)["ok"], what


def test_damaged_features_one_line_errors_repair_and_force(tiny, tmp_path, capsys):
    """Why: "a truncated feature shard, manifest or index.json gives a traceback on every rerun"; no --force."""
    images = tmp_path / "imgs"
    paths = gallery(images, 10)
    out = tmp_path / "idx"
    cli = ["--clip", "zscir-tiny-test", "--pretrained", tiny["weights"], "--no-progress"]
    store = out / "features"
    from zscir.features import FeatureStore

    FeatureStore(store).update(tiny["bb"], [(p.name, p) for p in paths[:6]], progress=False)  # shard 1: 6 images
    code, _, err = run(["index", "--images", str(images), "--out", str(out), *cli], capsys)  # shard 2: 4 more
    assert code == 0, err
    want = top_ids(out, tiny["bb"], paths[2])

    manifest = json.loads((store / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [6, 4]
    first = store / "shards" / f"{manifest['shards'][0]['name']}.pooled.npy"
    first.write_bytes(first.read_bytes()[:100])  # a truncated shard: its 6 images are encoded again
    code, out_text, err = run(["index", "--images", str(images), "--out", str(out), *cli, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out_text)["features"]["encoded"] == 6 and "damaged" in err
    assert top_ids(out, tiny["bb"], paths[2]) == want

    (store / "manifest.json").write_text((store / "manifest.json").read_text()[:50])  # truncated manifest
    code, _, err = run(["index", "--images", str(images), "--out", str(out), *cli], capsys)
    one_line_error(code, err, r"manifest\.json' is damaged .*delete '.*idx' or run `zscir index --force")
    code, _, err = run(["index", "--out", str(out), "--verify"], capsys)
    one_line_error(code, err, r"damaged or missing file")
    code, out_text, err = run(["index", "--images", str(images), "--out", str(out), *cli, "--force", "--json"],
                              capsys)
    assert code == 0, err
    assert json.loads(out_text)["features"]["encoded"] == 10
    assert top_ids(out, tiny["bb"], paths[2]) == want
    code, out_text, _ = run(["index", "--out", str(out), "--verify", "--json"], capsys)
    assert code == 0 and json.loads(out_text)["ok"] and json.loads(out_text)["files_checked"] >= 8

    (out / "index.json").write_text("{")  # truncated index.json: retrieve says what fixes it
    code, _, err = run(["retrieve", "--index", str(out), "--model", "image", *cli[:4], "--ref", str(paths[0]),
                        "--text", "make it red"], capsys)
    one_line_error(code, err, r"index\.json' is damaged .*zscir index --force")


def test_verify_names_each_damaged_file(tiny, tmp_path, capsys):
    """Deliver 4: `--verify` checks every file of an index against its manifest."""
    from zscir.index.gallery import verify_index

    images = tmp_path / "imgs"
    gallery(images, 6)
    out = tmp_path / "idx"
    build_index(out, tiny["bb"], images=images, progress=False)
    code, text, _ = run(["index", "--out", str(out), "--verify"], capsys)
    assert code == 0 and "all match their manifest" in text
    meta = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    shard = manifest["shards"][0]["name"]
    files = [out / meta["files"]["vectors"], out / meta["files"]["ids"],
             out / "features" / "shards" / f"{shard}.pooled.npy", out / "features" / "shards" / f"{shard}.rows.json",
             out / "features" / manifest["consolidated"]["pooled"]]
    for path in files:
        original = path.read_bytes()
        spoiled = bytearray(original)
        spoiled[-2] ^= 0x01  # one flipped bit near the end: same size, still parses
        path.write_bytes(bytes(spoiled))
        code, text, err = run(["index", "--out", str(out), "--verify", "--json"], capsys)
        report = json.loads(text)
        assert code == 1 and not report["ok"] and any(path.name in p for p in report["problems"]), (path, report)
        path.write_bytes(original)
    assert verify_index(out)["ok"]


def test_moved_or_touched_folder_is_not_reencoded(tiny, tmp_path):
    """Deliver 4: images keyed by content hash (the old key was path + size + mtime)."""
    images = tmp_path / "imgs"
    paths = gallery(images)
    out = tmp_path / "idx"
    first = build_index(out, tiny["bb"], images=images, progress=False)
    assert first["features"]["encoded"] == 8
    for p in paths:
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # touched
    again = build_index(out, tiny["bb"], images=images, progress=False)
    assert again["features"]["encoded"] == 0 and again["features"]["hashed"] == 8
    again = build_index(out, tiny["bb"], images=images, progress=False)
    assert again["features"]["hashed"] == 0  # the hash cache: an unchanged file costs a stat, not a read
    moved = tmp_path / "elsewhere" / "imgs"
    moved.parent.mkdir()
    shutil.move(images, moved)
    after_move = build_index(out, tiny["bb"], images=moved, progress=False)
    assert after_move["features"]["encoded"] == 0 and after_move["rebuilt"]
    assert GalleryIndex.open(out).paths[0] == str(moved / "g00.png")  # results point at the new place
    draw(moved / "g03.png", 99)  # a changed picture is encoded again
    assert build_index(out, tiny["bb"], images=moved, progress=False)["features"]["encoded"] == 1


def test_store_written_with_stat_keys_is_reused_without_reading(tiny, tmp_path):
    """Upgrading: rows keyed by the old stat key (path + size + mtime) are kept while the file is unchanged."""
    from zscir.features import FeatureStore
    from zscir.features.sources import file_key

    paths = gallery(tmp_path / "imgs", 4)
    store = FeatureStore(tmp_path / "store")
    store.update(tiny["bb"], [(p.name, p) for p in paths], progress=False)
    for rows_file in (tmp_path / "store" / "shards").glob("*.rows.json"):  # as an older zscir wrote them
        rows = json.loads(rows_file.read_text())
        rows["keys"] = [file_key(tmp_path / "imgs" / i) for i in rows["ids"]]
        rows_file.write_text(json.dumps(rows))
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard.pop("bytes"), shard.pop("sha256")
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "store" / "hashes.json").unlink()
    report = store.update(tiny["bb"], [(p.name, p) for p in paths], progress=False)
    assert (report.reused, report.encoded, report.hashed) == (4, 0, 0)
    draw(paths[1], 77)  # changed: its stat key no longer matches, so it is hashed and encoded again
    report = store.update(tiny["bb"], [(p.name, p) for p in paths], progress=False)
    assert (report.reused, report.encoded) == (3, 1)
