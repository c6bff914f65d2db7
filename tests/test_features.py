"""The feature store against a brute-force recompute with a tiny random-init backbone."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.errors import ZscirError
from zscir.features import FeatureStore, RowView

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def bb():
    from zscir.backbone import load_backbone
    torch.manual_seed(0)
    return load_backbone("zscir-tiny-test", pretrained=None)


def write_image(path: Path, seed: int, size=(40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_folder(folder: Path, n: int, seed0: int = 0) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(40, 30), (32, 32), (20, 50), (64, 16)]
    return [(f"img{i:03d}", write_image(folder / f"img{i:03d}.png", seed0 + i, sizes[i % 4])) for i in range(n)]


def brute_force(bb, path: Path):
    """One image, alone, through the backbone: the reference every cached row must match."""
    x = bb.preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
    f = bb.encode_image(x, with_tokens=True)
    return f.pooled[0].numpy(), f.tokens[0].numpy()


def assert_matches_brute_force(bb, store: FeatureStore, items, with_tokens=True):
    ids, pooled, tokens = store.load()
    assert sorted(ids) == sorted(i for i, _ in items)
    paths = dict(items)
    assert pooled.dtype == np.float16 and pooled.shape == (len(items), bb.embed_dim)
    for row, image_id in enumerate(ids):
        ref_pooled, ref_tokens = brute_force(bb, paths[image_id])
        np.testing.assert_allclose(pooled[row].astype(np.float32), ref_pooled, rtol=2e-3, atol=2e-3)
        if with_tokens:
            np.testing.assert_allclose(tokens[row].astype(np.float32), ref_tokens, rtol=2e-3, atol=2e-3)


def as_dict(store: FeatureStore):
    ids, pooled, tokens = store.load()
    return {i: (np.asarray(pooled[n]), None if tokens is None else tokens[n]) for n, i in enumerate(ids)}


def test_build_load_and_incremental_update_equals_fresh_build(bb, tmp_path):
    items = make_folder(tmp_path / "imgs", 10)
    store = FeatureStore(tmp_path / "store")
    rep = store.update(bb, items, with_tokens=True, batch_size=4, shard_size=4, progress=False)
    assert (rep.encoded, rep.reused, rep.deleted, rep.corrupt) == (10, 0, 0, [])
    ids, pooled, tokens = store.load()
    assert isinstance(pooled, np.memmap)  # one consolidated file, memory-mapped
    assert tokens.shape == (10, 17, 64) and isinstance(tokens, RowView)
    assert_matches_brute_force(bb, store, items)
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["backbone"] == bb.identity and meta["preprocess"] == "targetpad-1.25" and meta["format_version"] == 1

    # rerun with nothing changed: nothing encoded
    rep = store.update(bb, items, with_tokens=True, batch_size=4, shard_size=4, progress=False)
    assert (rep.encoded, rep.reused, rep.deleted) == (0, 10, 0)

    # add two, change one (content and mtime), delete two
    paths = dict(items)
    added = [(f"new{i}", write_image(tmp_path / "imgs" / f"new{i}.png", 100 + i)) for i in range(2)]
    write_image(paths["img003"], 999, (33, 33))
    st = paths["img003"].stat()
    os.utime(paths["img003"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    for gone in ("img000", "img007"):
        paths[gone].unlink()
        del paths[gone]
    items2 = sorted(paths.items()) + added
    rep = store.update(bb, items2, with_tokens=True, batch_size=4, shard_size=4, progress=False)
    assert (rep.encoded, rep.reused, rep.deleted) == (3, 7, 3)
    assert_matches_brute_force(bb, store, items2)

    fresh = FeatureStore(tmp_path / "fresh")
    fresh.update(bb, items2, with_tokens=True, batch_size=4, shard_size=4, progress=False)
    a, b = as_dict(store), as_dict(fresh)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k][0].astype(np.float32), b[k][0].astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(a[k][1].astype(np.float32), b[k][1].astype(np.float32), atol=2e-3)
    # no leftover files: only referenced shards and one consolidated pair
    leftovers = [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [] and len(list((tmp_path / "store").glob("pooled.g*.npy"))) == 1


def test_subset_load_compaction_and_tokens_upgrade(bb, tmp_path):
    items = make_folder(tmp_path / "imgs", 8)
    store = FeatureStore(tmp_path / "store")
    store.update(bb, items, with_tokens=False, batch_size=8, shard_size=8, progress=False)
    ids, pooled, tokens = store.load()
    assert tokens is None
    with pytest.raises(ZscirError, match="no token features"):
        store.load(tokens=True)
    want = ["img005", "img001", "img006"]
    sub = store.load(ids=want)
    assert sub.ids == want
    np.testing.assert_array_equal(sub.pooled, np.asarray(pooled)[[ids.index(i) for i in want]])
    with pytest.raises(ZscirError, match="'nope'"):
        store.load(ids=["img001", "nope"])

    # delete 5 of the single shard's 8 rows: it is rewritten with the 3 survivors
    rep = store.update(bb, items[:3], progress=False)
    assert (rep.deleted, rep.reused, rep.encoded) == (5, 3, 0)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert [(s["rows"], s["dead"]) for s in manifest["shards"]] == [(3, [])]
    assert len(list((tmp_path / "store" / "shards").glob("*.pooled.npy"))) == 1

    # asking for tokens re-encodes the rows that lack them
    rep = store.update(bb, items[:3], with_tokens=True, progress=False)
    assert (rep.deleted, rep.encoded) == (3, 3)
    assert_matches_brute_force(bb, store, items[:3])
    sub = store.load(ids=["img002", "img000"])
    np.testing.assert_array_equal(sub.tokens[[1, 0]], store.load().tokens[:][[0, 2]])


def test_corrupt_images_are_skipped_and_counted(bb, tmp_path):
    items = make_folder(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"this is not a png")
    good = (tmp_path / "imgs" / "img001.png").read_bytes()
    (tmp_path / "imgs" / "truncated.png").write_bytes(good[: len(good) // 2])
    items += [("garbage", tmp_path / "imgs" / "garbage.png"), ("truncated", tmp_path / "imgs" / "truncated.png")]
    store = FeatureStore(tmp_path / "store")
    rep = store.update(bb, items, batch_size=3, progress=False)
    assert rep.encoded == 4 and sorted(i for i, _ in rep.corrupt) == ["garbage", "truncated"]
    assert rep.to_dict()["num_corrupt"] == 2
    assert sorted(store.load().ids) == [f"img{i:03d}" for i in range(4)]


def test_items_with_content_hash_and_backbone_mismatch(bb, tmp_path):
    class Item:  # the data package's ImageItem shape: id, load(), content_hash
        def __init__(self, id, seed):
            self.id, self.seed, self.content_hash = id, seed, f"{seed:064x}"

        def load(self):
            rng = np.random.default_rng(self.seed)
            return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))

    store = FeatureStore(tmp_path / "store")
    rep = store.update(bb, [Item("a", 1), Item("b", 2)], progress=False)
    assert rep.encoded == 2
    rep = store.update(bb, [Item("a", 1), Item("b", 3)], progress=False)  # b's content changed
    assert (rep.reused, rep.encoded, rep.deleted) == (1, 1, 1)
    x = bb.preprocess(Item("b", 3).load()).unsqueeze(0)
    np.testing.assert_allclose(store.load(ids=["b"]).pooled[0].astype(np.float32), bb.encode_image(x).pooled[0],
                               atol=2e-3, rtol=2e-3)

    class Other:
        identity = {"model": "ViT-B-32", "pretrained": "openai"}
        preprocess_name = "targetpad-1.25"
    with pytest.raises(ZscirError, match="ViT-B-32@openai"):
        store.update(Other(), [Item("a", 1)], progress=False)
    with pytest.raises(ZscirError, match="twice"):
        store.update(bb, [Item("a", 1), Item("a", 1)], progress=False)


def test_row_view_gathers_and_pickles_by_path(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 2)).astype(np.float16) for n in (4, 5)]
    paths = []
    for k, p in enumerate(parts):
        paths.append(tmp_path / f"{k}.npy")
        np.save(paths[-1], p)
    order = [(1, 4), (0, 0), (1, 0), (0, 3), (0, 1)]
    view = RowView(paths, [s for s, _ in order], [r for _, r in order])
    full = np.stack([parts[s][r] for s, r in order])
    np.testing.assert_array_equal(np.asarray(view), full)
    np.testing.assert_array_equal(view[[4, 0, 0, 2]], full[[4, 0, 0, 2]])
    np.testing.assert_array_equal(view[1:4], full[1:4])
    np.testing.assert_array_equal(view[3], full[3])
    view.arrays  # open the maps, then make sure pickling does not carry their data
    blob = pickle.dumps(view)
    assert len(blob) < 2000
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), full)


class ConvBackbone:
    """A deterministic stand-in with the backbone's interface, importable without open_clip.

    The kill/resume test starts a child process; importing open_clip there would cost
    most of the test's time. (Every other test here uses the real tiny CLIP.)
    """

    identity = {"model": "conv-test", "pretrained": "seed0"}
    preprocess_name = "resize-32"
    embed_dim = 4
    device = torch.device("cpu")

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.patch = torch.randn(8, 3, 8, 8, generator=g)
        self.proj = torch.randn(8, 4, generator=g)

    @staticmethod
    def preprocess(image):
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255).permute(2, 0, 1)

    def encode_image(self, images, with_tokens=False):
        patches = torch.nn.functional.conv2d(images.float(), self.patch, stride=8).flatten(2).transpose(1, 2)
        tokens = torch.cat([patches.mean(1, keepdim=True), patches], 1)  # [B, 17, 8]
        return SimpleNamespace(pooled=tokens[:, 0] @ self.proj, tokens=tokens if with_tokens else None)


def test_killed_update_keeps_finished_shards_and_resumes(tmp_path):
    items = make_folder(tmp_path / "imgs", 9)
    store_dir = tmp_path / "store"
    # a child process encodes in shards of 2 and is SIGKILLed once three shards (6 images) are written;
    # the 7th image's loader waits for that (workers=0: decoded in the process that is killed)
    script = textwrap.dedent(f"""
        import json, os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from PIL import Image
        from test_features import ConvBackbone
        from zscir.features import FeatureStore, KeyedImage, file_key
        items = {[(i, str(p)) for i, p in items]!r}
        def loader(n, path):
            def load():
                while n >= 6:
                    manifest = {str(store_dir / "manifest.json")!r}
                    if os.path.exists(manifest) and len(json.load(open(manifest))["shards"]) == 3:
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(0.01)
                return Image.open(path).convert("RGB")
            return load
        sources = [KeyedImage(i, file_key(p), loader(n, p)) for n, (i, p) in enumerate(items)]
        FeatureStore({str(store_dir)!r}).update(ConvBackbone(), sources, with_tokens=True, batch_size=2,
                                                 shard_size=2, workers=0, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == 6 and manifest["consolidated"] is None

    bb = ConvBackbone()
    store = FeatureStore(store_dir)
    partial = store.load()  # readable without consolidation, gathered from the finished shards
    assert partial.ids == [f"img{i:03d}" for i in range(6)]
    rep = store.update(bb, items, with_tokens=True, batch_size=2, shard_size=2, progress=False)
    assert (rep.reused, rep.encoded, rep.deleted) == (6, 3, 0)
    assert_matches_brute_force(bb, store, items)


def test_data_package_items_prune_and_unreadable_bytes(bb, tmp_path):
    from zscir.data.sources import open_image_source

    make_folder(tmp_path / "imgs", 5)
    items = list(open_image_source(str(tmp_path / "imgs")))
    (tmp_path / "imgs" / "img004.png").unlink()  # vanishes between listing and hashing: counted, not fatal
    store = FeatureStore(tmp_path / "store")
    rep = store.update(bb, items, progress=False)
    assert rep.encoded == 4 and [i for i, _ in rep.corrupt] == ["img004.png"] and rep.total == 5
    keys = json.loads(next((tmp_path / "store" / "shards").glob("*.rows.json")).read_text())["keys"]
    assert all(k.startswith("sha256:") and len(k) == 71 for k in keys)
    assert all(item._data is None for item in items[:4])  # bytes released after hashing and encoding
    assert_matches_brute_force(bb, store, [(i.id, tmp_path / "imgs" / i.id) for i in items[:4]], with_tokens=False)

    # prune=False keeps images that are not in this call (a store shared by several image sets)
    other = make_folder(tmp_path / "more", 2, seed0=50)
    rep = store.update(bb, other, progress=False, prune=False)
    assert (rep.encoded, rep.deleted) == (2, 0) and len(store) == 6
    rep = store.update(bb, other, progress=False)
    assert rep.deleted == 4 and sorted(store.load().ids) == ["img000", "img001"]


def test_hashing_threads_keep_the_items_order_and_report_unreadable_ones(tmp_path):
    from zscir.features.sources import HASH_RUN, as_sources, content_key

    folder = tmp_path / "many"
    folder.mkdir()
    items = []
    for i in range(3 * HASH_RUN + 5):               # several runs, the last one short
        path = folder / f"f{i:03d}.png"
        if i % 17 != 5:                               # every 17th file is missing
            Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
        items.append((f"f{i:03d}", path))
    sources, unusable = as_sources(items, workers=3)
    present = [(i, p) for i, p in items if p.exists()]
    assert [s.id for s in sources] == [i for i, _ in present]
    assert [s.key for s in sources] == [content_key(p.read_bytes()) for _, p in present]
    assert unusable == [(i, "missing file") for i, p in items if not p.exists()]
