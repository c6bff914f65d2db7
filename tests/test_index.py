"""Gallery index: size-based choice, approximate recall against brute force, incremental rebuilds."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from zscir.errors import ZscirError
from zscir.features import FeatureStore
from zscir.index import search_index
from zscir.index.gallery import GalleryIndex, build_index, normalized

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    return unit(centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)))


def brute_top_k(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_auto_choice_by_size_and_nlist_rule():
    assert search_index.choose_kind(50_000) == "flat" and search_index.choose_kind(50_001) == "ivf-pqfs"
    assert search_index.ivf_nlist(1_000_000) == 4096 and search_index.ivf_nlist(100_000) == 1024
    assert search_index.ivf_nlist(1000) == 16  # 4 sqrt(1000) ~ 126, but at least 39 training points per list


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_tuned_and_truthful(kind):
    vectors = clustered(4000)
    built, recall = search_index.build(vectors, kind, target_recall=0.95)
    assert built.kind == kind and recall >= 0.95
    knob = "nprobe" if kind == "ivf" else "efSearch"
    assert built.params[knob] >= 1 and built.params["recall@50"] == recall
    # the recorded recall equals an independent recount against a numpy brute force on the same queries
    queries, _ = search_index.heldout_queries(built)
    exact = brute_top_k(vectors, queries, 50)
    found = built.search(queries, 50)[1]
    recount = np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact)])
    assert abs(recount - recall) < 0.01
    if kind == "ivf":  # tuning stops at the smallest sufficient nprobe
        smaller = built.params["nprobe"] // 2
        if smaller >= 1:
            faiss.extract_index_ivf(built.index).nprobe = smaller
            lower = np.mean([len(set(f) & set(e)) / 50 for f, e in zip(built.search(queries, 50)[1], exact)])
            assert lower < 0.95


def test_flat_index_equals_brute_force_and_tiny_galleries_stay_exact():
    vectors = clustered(300)
    built, recall = search_index.build(vectors, "auto")
    assert built.kind == "flat" and recall == 1.0
    q = unit(np.random.default_rng(1).standard_normal((5, 32)))
    np.testing.assert_array_equal(built.search(q, 10)[1], brute_top_k(built.vectors.astype(np.float64), q, 10))
    assert search_index.build(vectors[:50], "ivf")[0].kind == "flat"  # too few to train
    with pytest.raises(ZscirError, match="--kind"):
        search_index.build(vectors, "lsh")


# ---------------------------------------------------------------------------------------------- on disk


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    model = load_backbone("zscir-tiny-test", None).model
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return load_backbone("zscir-tiny-test", str(path))


def write_image(path, seed, size=(36, 28)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def search_all(index: GalleryIndex, queries, k):
    scores, rows = index.search(queries, k)
    return scores, [[index.ids[r] for r in row] for row in rows]


def test_incremental_index_equals_fresh_build(bb, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        write_image(folder / ("sub" if i % 3 == 0 else "") / f"im{i:02d}.png", i, (30 + i, 28))
    s1 = build_index(tmp_path / "idx", bb, images=folder, progress=False)
    assert s1["count"] == 12 and s1["kind"] == "flat" and s1["features"]["encoded"] == 12
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["backbone"] == bb.identity and meta["preprocess"] == bb.preprocess_name
    assert meta["recall"]["value"] == 1.0 and meta["backbone_source"]["name"] == "zscir-tiny-test"
    assert build_index(tmp_path / "idx", bb, images=folder, progress=False)["rebuilt"] is False

    # add two, change one, delete two, and rebuild
    write_image(folder / "new1.png", 101)
    write_image(folder / "sub" / "new2.png", 102)
    changed = folder / "im01.png"
    write_image(changed, 555, (40, 40))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    (folder / "im02.png").unlink()
    (folder / "sub" / "im03.png").unlink()
    s2 = build_index(tmp_path / "idx", bb, images=folder, progress=False)
    f = s2["features"]
    assert (f["encoded"], f["deleted"], f["reused"], s2["count"]) == (3, 3, 9, 12)
    build_index(tmp_path / "fresh", bb, images=folder, progress=False)

    inc, fresh = GalleryIndex.open(tmp_path / "idx"), GalleryIndex.open(tmp_path / "fresh")
    assert sorted(inc.ids) == sorted(fresh.ids) and "sub/new2.png" in inc.ids and "im02.png" not in inc.ids
    assert inc.paths[inc.ids.index("im01.png")] == str(changed.absolute())
    q = unit(np.random.default_rng(3).standard_normal((4, bb.embed_dim)))
    (sa, ia), (sb, ib) = search_all(inc, q, 12), search_all(fresh, q, 12)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert ia == ib
    # and both equal a brute-force ranking of freshly encoded images
    feats = FeatureStore(tmp_path / "fresh" / "features").load(ids=fresh.ids)
    brute = normalized(feats.pooled) @ q.T
    for j in range(len(q)):
        order = np.argsort(-brute[:, j], kind="stable")
        np.testing.assert_allclose(sb[j], brute[order, j], atol=2e-3)  # the index stores fp16 vectors
    # only the current generation's files remain
    assert sorted(p.name for p in (tmp_path / "idx").glob("*.g*")) == sorted(inc.meta["files"].values())


def test_index_errors(bb, tmp_path):
    with pytest.raises(ZscirError, match="no zscir index at"):
        GalleryIndex.open(tmp_path / "nothing")
    with pytest.raises(ZscirError, match="no images"):
        (tmp_path / "empty").mkdir()
        build_index(tmp_path / "idx", bb, images=tmp_path / "empty", progress=False)
    (tmp_path / "imgs").mkdir()
    write_image(tmp_path / "imgs" / "a.png", 1)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    s = build_index(tmp_path / "idx", bb, images=tmp_path / "imgs", progress=False)
    assert s["count"] == 1 and s["features"]["num_corrupt"] == 1

    class Other:
        identity = {"model": "ViT-B-32", "pretrained": "openai"}
        preprocess_name = "targetpad-1.25"
    with pytest.raises(ZscirError, match="was built with zscir-tiny-test"):
        build_index(tmp_path / "idx", Other(), images=tmp_path / "imgs", progress=False)
    with pytest.raises(ZscirError, match="uses ViT-B-32@openai"):
        GalleryIndex.open(tmp_path / "idx").check_backbone(Other())


def test_ivf_falls_back_to_exact_when_it_would_scan_most_lists():
    vectors = unit(np.random.default_rng(0).standard_normal((3000, 64)))  # no structure for IVF to exploit
    built, recall = search_index.build(vectors, "ivf")
    assert built.kind == "flat" and recall == 1.0 and "nprobe" in built.params["fallback_from_ivf"]


def test_ivf_rebuild_keeps_trained_centroids_while_size_stays_in_range():
    vectors = clustered(4000)
    first, _ = search_index.build(vectors, "ivf")
    centroids = faiss.extract_index_ivf(first.index).quantizer.reconstruct_n(0, first.params["nlist"])
    grown = np.concatenate([vectors, clustered(300, seed=5)])
    again, recall = search_index.build(grown, "ivf", previous=first.index)
    ivf = faiss.extract_index_ivf(again.index)
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), centroids)
    assert again.index.ntotal == len(grown) and recall >= 0.95
    q = search_index.sample_queries(grown, 64, seed=3)
    exact = brute_top_k(grown, q, 50)
    assert search_index.recall_at_k(again.index.search(q, 50)[1], exact) >= 0.9
