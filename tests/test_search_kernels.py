"""Exact fp16 search kernels against a brute-force reference (faiss-style: fast path vs numpy on small data)."""

from __future__ import annotations

import numpy as np
import pytest

from zscir.index import kernels
from zscir.index.rows import Lookup, StringColumn

FP16_CPU = frozenset({"avx512f", "avx512_fp16", "avx512_bf16", "f16c"})
BF16_CPU = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "f16c"})
ZEN4_CPU = frozenset({"avx512f", "avx512_bf16", "f16c"})      # bf16 dot products, no AMX
OLD_CPU = frozenset({"avx2", "f16c", "fma"})


def stored(n=3000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, d))
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def reference(vectors, queries, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


@pytest.mark.parametrize("kernel", list(kernels.KERNELS))
@pytest.mark.parametrize("batch", [1, 7, 33])
@pytest.mark.parametrize("scan_rows", [kernels.SCAN_ROWS, 20_000])
def test_kernel_equals_brute_force(kernel, batch, scan_rows, monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK_ROWS", 1000)  # several chunks, the last one partial
    monkeypatch.setattr(kernels, "SCAN_ROWS", scan_rows)  # 20k: the scan in row blocks, candidates merged
    vectors = stored()
    rng = np.random.default_rng(batch)
    q = rng.standard_normal((batch, vectors.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, rows = kernels.search(vectors, q, 20, kernel)
    want_scores, want_rows = reference(vectors, q, 20)
    assert scores.shape == rows.shape == (batch, 20) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)   # re-ranked: exact fp32 on the fp16 vectors
    # ties aside (a neighbour within 1e-5), the same rows in the same order
    tie = np.zeros_like(want_scores, dtype=bool)
    close = np.abs(np.diff(want_scores, axis=1)) <= 1e-5
    tie[:, 1:] |= close
    tie[:, :-1] |= close
    np.testing.assert_array_equal(rows[~tie], want_rows[~tie])
    assert (~tie).mean() > 0.9


def test_kernel_on_memory_mapped_vectors_and_small_galleries(tmp_path):
    vectors = stored(500, 16)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    q = vectors[:3].astype(np.float32)
    scores, rows = kernels.search(mapped, q, 5)
    assert (rows[:, 0] == [0, 1, 2]).all() and np.allclose(scores[:, 0], np.sum(vectors[:3].astype(np.float32) ** 2, 1))
    scores, rows = kernels.search(mapped[:3], q, 10)    # k larger than the gallery: clipped to it
    assert rows.shape == (3, 3) and sorted(rows[0]) == [0, 1, 2]


def test_kernel_choice_follows_the_cpu_flags():
    for batch in (1, 2, 16, 256):
        assert kernels.choose_kernel(batch, FP16_CPU).name == "fp16-matmul"
        # no AVX512-FP16: fp16 arithmetic is emulated there (45-100x slower), never chosen
        # one query: the fp16 gemv (F16C widening, fp32 sums: no fp16 arithmetic) wherever F16C is there
        assert kernels.choose_kernel(batch, BF16_CPU).name == ("fp16-gemv" if batch == 1 else "bf16-matmul")
        assert kernels.choose_kernel(batch, OLD_CPU).name == ("fp16-gemv" if batch == 1 else "fp32-chunked")
        # AVX512-BF16 without AMX: fp16 -> bf16 conversion made bf16 batches 2x slower than fp32 there
        assert kernels.choose_kernel(batch, ZEN4_CPU).name == ("fp16-gemv" if batch == 1 else "fp32-chunked")
        assert kernels.choose_kernel(batch, frozenset()).name == "fp32-chunked"
    with open("/proc/cpuinfo") as f:
        text = f.read()
    assert kernels.has_native_fp16() == (" avx512_fp16" in text)


def test_exact_rescore_handles_missing_candidates():
    vectors = stored(50, 8)
    q = vectors[:2].astype(np.float32)
    rows = np.array([[3, -1, 0, 7], [-1, -1, 5, -1]])
    scores, top = kernels.exact_rescore(vectors, q, rows, 3)
    assert top[0].tolist()[0] == 0 and set(top[0].tolist()) == {0, 3, 7}
    assert top[1].tolist() == [5, -1, -1] and np.isinf(scores[1, 1:]).all()
    np.testing.assert_allclose(scores[0], np.sort(vectors[[0, 3, 7]].astype(np.float32) @ q[0])[::-1], atol=1e-6)


def test_string_column_and_lookup_are_compact_and_exact():
    values = ["a.png", None, "sub/ü.jpg", "bad\udcff.png", "a.png", ""]
    col = StringColumn(values)
    assert list(col) == values and len(col) == 6 and col[-1] == "" and col[1:3] == values[1:3]
    assert col.index("sub/ü.jpg") == 2 and col == values
    look = Lookup(col)
    assert look.rows("a.png") == [0, 4] and look.rows("bad\udcff.png") == [3] and look.rows("zzz") == []
    assert look.rows(None) == [] and "" in look
    # the first column wins where it has a value (real paths resolved at build time, else the path)
    both = Lookup(StringColumn([None, "/real/x", None]), StringColumn(["/p/a", "/p/b", None]))
    assert both.rows("/real/x") == [1] and both.rows("/p/b") == [] and both.rows("/p/a") == [0]
    many = [f"images/{i:07d}.jpg" for i in range(20000)]
    assert StringColumn(many).nbytes < 30 * len(many)   # ~18 characters + 8 bytes offset per row


@pytest.mark.parametrize("n,batch", [(1000, 1), (64 * 50 + 7, 3), (40_000, 16), (30, 2)])
def test_block_preselection_keeps_every_top_row(n, batch):
    import torch

    scores = torch.from_numpy(np.random.default_rng(n).standard_normal((n, batch)).astype(np.float16))
    count = min(n, 40)       # as search() asks
    rows = kernels.top_candidates(scores, count)
    for j in range(batch):
        col = scores[:, j].float().numpy()
        kth = np.sort(col)[::-1][count - 1]
        want = np.nonzero(col > kth)[0]                       # ties at the 40th score aside
        assert set(want.tolist()) <= set(rows[j].tolist()) and len(set(rows[j].tolist())) >= count
        assert len(rows[j]) <= count + kernels.BLOCK


def test_fp16_gemv_sums_in_fp32():
    """The single-query kernel's low-precision scores: fp32 sums (only the output rounded to fp16).

    Summed in fp16, 4,096 products of 0.0156 would stall once the sum's ulp passes them (the exact 64 is
    out of reach); widened to fp32, every product counts."""
    x = np.full((3, 4096), 0.125, dtype=np.float16)
    q = np.full((1, 4096), 0.125, dtype=np.float32)
    assert kernels.KERNELS["fp16-gemv"].scores(x, q)[:, 0].tolist() == [64.0, 64.0, 64.0]
    vectors = stored(2000, 768, seed=3)
    q = vectors[:4].astype(np.float32) + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = kernels.KERNELS["fp16-gemv"].scores(vectors, q).double().numpy()
    want = vectors.astype(np.float64) @ q.astype(np.float16).astype(np.float64).T
    assert np.abs(got - want).max() < 1e-3     # fp16 output rounding of scores in [-1, 1]
