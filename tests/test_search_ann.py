"""Approximate indexes: re-ranked IVF against brute force, the memory-budget plan, memory-mapped loading."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest

from zscir.errors import ZscirError
from zscir.index import autotune, ivf, kinds, search_index


def clustered(n, d=32, clusters=60, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    scale = rng.uniform(0.1, 0.6, (clusters, d))          # anisotropic clusters
    x = centers[rng.integers(0, clusters, n)]
    x = x + scale[rng.integers(0, clusters, n)] * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(vectors16, queries, k):
    scores = queries.astype(np.float64) @ vectors16.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def recount(found, exact):
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / exact.shape[1] for f, e in zip(found, exact)]))


@pytest.fixture(scope="module")
def sq8(request):
    mp = pytest.MonkeyPatch()
    mp.setattr(ivf, "TRAIN_PER_LIST", 16)     # train on a sample, so that queries can be held out
    vectors = clustered(12000)
    built, recall = search_index.build(vectors, "ivf-sq8", target_recall=0.95)
    mp.undo()
    return vectors, built, recall


def test_ivf_sq8_is_trained_on_a_sample_and_its_recall_is_measured_on_held_out_queries(sq8):
    vectors, built, recall = sq8
    nlist = built.params["nlist"]
    assert built.kind == "ivf-sq8" and built.params["factory"] == f"IVF{nlist},SQ8"
    assert len(built.train_rows) == 16 * nlist < len(vectors)
    assert built.params["recall_queries"] == {"count": 256, "composed": True, "held_out_from_training": True}
    assert recall >= 0.95 and built.params["recall@50"] == recall
    queries, held_out = search_index.heldout_queries(built)
    assert held_out
    found = built.search(queries, 50)[1]
    assert abs(recount(found, brute(built.vectors, queries, 50)[1]) - recall) < 1e-9
    # the smallest sufficient nprobe: half of it misses the target
    nprobe = built.params["nprobe"]
    search_index.set_search_knob(built, nprobe // 2)
    assert recount(built.search(queries, 50)[1], brute(built.vectors, queries, 50)[1]) < 0.95
    search_index.set_search_knob(built, nprobe)


def test_reranked_scores_are_exact_and_beat_the_codes_alone(sq8):
    vectors, built, _ = sq8
    queries = search_index.sample_queries(built.vectors, 64, seed=5)
    scores, rows = built.search(queries, 10)
    exact_of_rows = np.einsum("bkd,bd->bk", built.vectors[rows].astype(np.float64), queries)
    np.testing.assert_allclose(scores, exact_of_rows, atol=1e-5)     # scores are exact, not SQ8 estimates
    assert np.all(np.diff(scores, axis=1) <= 1e-7)
    exact = brute(built.vectors, queries, 10)[1]
    codes_only = built.index.search(queries, 10)[1]
    assert recount(rows, exact) >= recount(codes_only, exact)


def test_memory_mapped_index_answers_the_same(sq8, tmp_path):
    _, built, _ = sq8
    faiss.write_index(built.index, str(tmp_path / "i.index"))
    np.save(tmp_path / "v.npy", built.vectors)
    index = faiss.read_index(str(tmp_path / "i.index"), faiss.IO_FLAG_MMAP)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists), faiss.OnDiskInvertedLists)
    search_index.apply_params(index, "ivf-sq8", built.params)
    mapped = search_index.searcher_for(index, "ivf-sq8", np.load(tmp_path / "v.npy", mmap_mode="r"), built.params)
    queries = search_index.sample_queries(built.vectors, 32, seed=9)
    for a, b in zip(mapped.search(queries, 20), built.search(queries, 20)):
        np.testing.assert_array_equal(a, b)


def test_ivf_pq_is_reranked_exactly():
    vectors = clustered(1200, d=16)     # PQ training is the slow part: keep it small
    built, recall = search_index.build(vectors, "ivf-pq", target_recall=0.9)
    assert built.kind == "ivf-pq" and built.params["factory"].endswith(",PQ8") and recall >= 0.9
    queries = search_index.sample_queries(built.vectors, 16, seed=2)
    scores, rows = built.search(queries, 5)
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", built.vectors[rows].astype(np.float64), queries),
                               atol=1e-5)


def test_plan_from_size_and_memory_budget_never_picks_hnsw():
    gb = 10 ** 9
    assert autotune.plan(50_000, 512)["kind"] == "flat"
    p = autotune.plan(1_000_000, 512, max_memory=16 * gb)
    assert p["kind"] == "ivf-pqfs" and p["nlist"] == 4096 and p["m"] == 256 and p["memory"]["bytes_per_vector"] == 136
    p = autotune.plan(100_000_000, 512, max_memory=16 * gb)     # fast-scan codes: 13.7 GB
    assert p["kind"] == "ivf-pqfs" and p["memory"]["index_bytes"] == 100_000_000 * 136 + 32768 * 512 * 4
    p = autotune.plan(100_000_000, 512, max_memory=10 * gb)     # they do not fit: the largest smaller 8-bit PQ
    assert p["kind"] == "ivf-pq" and p["m"] == 64 and p["memory"]["index_bytes"] <= 10 * gb
    assert autotune.plan(100_000_000, 512, max_memory=5 * gb)["m"] == 32
    assert autotune.plan(1_000_000, 512, kind="ivf-sq8")["memory"]["bytes_per_vector"] == 520
    assert autotune.plan(1_000_000, 511, kind="ivf-pqfs")["m"] == 511    # odd width: one dimension a sub-quantiser
    for n in (10 ** 5, 10 ** 6, 10 ** 7, 10 ** 8):
        for budget in (2 * gb, 16 * gb, 1000 * gb):
            try:
                assert autotune.plan(n, 768, max_memory=budget)["kind"] != "hnsw"
            except ZscirError as e:
                assert "--max-index-memory" in str(e)
    with pytest.raises(ZscirError, match="--max-index-memory .*cannot hold"):
        autotune.plan(10 ** 9, 512, max_memory=gb)
    assert autotune.parse_size("16GB") == 16 * gb and autotune.parse_size("2GiB") == 2 ** 31
    assert autotune.parse_size("1.5g") == 1.5 * gb
    for bad in ("lots", "16 parsecs", "0GB"):
        with pytest.raises(ZscirError, match="--max-index-memory"):
            autotune.parse_size(bad)


def test_build_auto_follows_the_plan():
    vectors = clustered(6000, d=16)
    built, recall = search_index.build(vectors, "auto", exact_max=1000, target_recall=0.9, max_memory=10 ** 9)
    assert built.kind == "ivf-pqfs" and built.params["memory"]["max_index_memory"] == 10 ** 9 and recall >= 0.9
    assert built.params["factory"] == f"IVF{built.params['nlist']},PQ8x4fs"
    # a budget below the fast-scan codes (d = 64: 16 + 8 B a vector + centroids = 177 kB): 8-bit PQ8
    # (built in test_ivf_pq_is_reranked_exactly; PQ training is slow here)
    p = autotune.plan(6000, 64, exact_max=1000, max_memory=150_000)
    assert p["kind"] == "ivf-pq" and p["m"] == 8


def test_auto_builds_sq8_where_the_fastscan_codes_miss_the_recall_target(monkeypatch):
    # with 4x re-ranking the 4-bit codes of these 32-d clusters top out at recall@50 ~0.92 (8x: 0.98)
    monkeypatch.setattr(ivf, "TRAIN_PER_LIST", 16)
    monkeypatch.setitem(kinds.KINDS, "ivf-pqfs", dataclasses.replace(kinds.KINDS["ivf-pqfs"], rerank_factor=4))
    built, recall = search_index.build(clustered(12000), "auto", exact_max=1000, target_recall=0.95)
    tried = built.params["tried_before"]
    assert built.kind == "ivf-sq8" and recall >= 0.95
    assert tried["kind"] == "ivf-pqfs" and tried["recall@50"] < 0.95 and tried["nprobe"] > built.params["nlist"] // 4


def test_ivf_fastscan_pq_reaches_the_recall_target_and_answers_exact_scores():
    mp = pytest.MonkeyPatch()
    mp.setattr(ivf, "TRAIN_PER_LIST", 16)
    vectors = clustered(12000)
    built, recall = search_index.build(vectors, "ivf-pqfs", target_recall=0.95)
    mp.undo()
    nlist = built.params["nlist"]
    assert built.params["factory"] == f"IVF{nlist},PQ16x4fs"
    assert isinstance(faiss.downcast_index(built.index), faiss.IndexIVFPQFastScan)
    queries, held_out = search_index.heldout_queries(built)
    exact = brute(built.vectors, queries, 50)[1]
    scores, rows = built.search(queries, 50)
    assert held_out and recall >= 0.95 and abs(recount(rows, exact) - recall) < 1e-9
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", built.vectors[rows].astype(np.float64), queries),
                               atol=1e-5)
    # the codes alone (4 bits per two dimensions) rank worse than the re-ranked answer
    assert recount(built.index.search(queries, 50)[1], exact) < recall


def test_gallery_ivf_sq8_index_on_disk_is_memory_mapped_and_reranked(tmp_path, monkeypatch):
    import json

    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone
    from zscir.features import FeatureStore
    from zscir.index.gallery import GalleryIndex, build_index, verify_index

    torch.manual_seed(0)
    model = load_backbone("zscir-tiny-test", None).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    bb = load_backbone("zscir-tiny-test", str(tmp_path / "tiny.safetensors"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(160):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    (folder / "link.png").symlink_to(folder / "im007.png")
    # random images have no clusters: tune to nprobe 1 (recall recorded as measured), else the index
    # would rightly fall back to exact search, and the on-disk IVF path would go untested
    tune = search_index.tune
    monkeypatch.setattr(search_index, "tune", lambda built, target=0.95, **kw: tune(built, target=0.0, **kw))
    s = build_index(tmp_path / "idx", bb, images=folder, kind="ivf-sq8", progress=False, max_index_memory=10 ** 9)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert s["kind"] == "ivf-sq8" and meta["max_index_memory"] == 10 ** 9 and set(meta["files"]) == {
        "faiss", "ids", "vectors"}
    assert meta["params"]["memory"]["max_index_memory"] == 10 ** 9 and meta["params"]["nprobe"] == 1
    assert meta["recall"]["value"] == meta["params"]["recall@50"] > 0
    rows = json.loads((tmp_path / "idx" / meta["files"]["ids"]).read_text())
    assert rows["realpaths"][rows["ids"].index("link.png")] == str((folder / "im007.png").resolve())
    index = GalleryIndex.open(tmp_path / "idx")
    assert isinstance(index.searcher, search_index.Reranked) and isinstance(index.searcher.vectors, np.memmap)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.index).invlists),
                      faiss.OnDiskInvertedLists)
    feats = FeatureStore(tmp_path / "idx" / "features").load(ids=list(index.ids), tokens=False)
    vectors16 = search_index.normalized_fp16(feats.pooled)
    q = search_index.sample_queries(vectors16, 8, seed=4)
    scores, found = index.search(q, 5)
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", vectors16[found].astype(np.float64), q), atol=1e-5)
    assert verify_index(tmp_path / "idx")["ok"]


def list_of_each(ivf, n: int) -> np.ndarray:
    """The inverted list each of the ``n`` vectors was added to."""
    members = np.full(n, -1)
    for lst in range(ivf.nlist):
        if size := ivf.invlists.list_size(lst):
            members[faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size)] = lst
    return members


def test_lists_are_assigned_by_fp32_centroids_and_probed_through_fp16_ones():
    vectors = clustered(6000).astype(np.float16)
    index = faiss.index_factory(32, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors.astype(np.float32))
    ivf = faiss.extract_index_ivf(index)
    fp32 = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    search_index.add_assigned_in_fp32(index, vectors)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexScalarQuantizer) and quantizer.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    fp16 = quantizer.reconstruct_n(0, ivf.nlist)
    np.testing.assert_array_equal(fp16, fp32.astype(np.float16).astype(np.float32))
    # every vector sits in the list of its best fp32 centroid (brute force)
    members = list_of_each(ivf, len(vectors))
    best32 = np.argmax(vectors.astype(np.float64) @ fp32.T.astype(np.float64), axis=1)
    assert (members == best32).mean() > 0.9995 and (members >= 0).all()
    # a query probes the lists of its best fp16 centroids
    q = search_index.sample_queries(vectors, 32, seed=2)
    probed = quantizer.search(q, 4)[1]
    best16 = np.argsort(-(q.astype(np.float64) @ fp16.T.astype(np.float64)), axis=1)[:, :4]
    assert (np.sort(probed, 1) == np.sort(best16, 1)).mean() > 0.99
    # a rebuild on the same centroids assigns by fp32 again (the fp16 ones rounded: the same lists here)
    index.reset()
    search_index.add_assigned_in_fp32(index, vectors)
    assert (list_of_each(ivf, len(vectors)) == members).mean() > 0.999
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexScalarQuantizer)


def test_built_ivf_records_fp16_centroids(sq8):
    _, built, _ = sq8
    assert built.params["centroids"] == "fp16"
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(built.index).quantizer), faiss.IndexScalarQuantizer)
