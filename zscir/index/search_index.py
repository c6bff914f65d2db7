"""Which index to build for a gallery, and how well an approximate one does.

Vectors are L2-normalised, so inner product = cosine similarity. They are kept once, in
fp16 (``Built.vectors``, written as ``vectors.g<gen>.npy`` and memory-mapped at load);
every index kind answers from them:

    flat      exact search over the fp16 vectors (zscir.index.kernels: the kernel is
              chosen by batch size and the CPU's native fp16/bf16 support).
    ivf-sq8   faiss IVF with 8-bit scalar-quantised codes (d bytes per vector), the
              top candidates re-ranked exactly from the fp16 vectors.
    ivf-pqfs  faiss IVF with 4-bit fast-scan PQ codes, two dimensions a sub-quantiser (d/4
              bytes per vector; SIMD look-up tables), re-ranked the same way: "auto"'s choice.
    ivf-pq    faiss IVF with 8-bit PQ codes (m bytes per vector) for galleries whose fast-scan
              codes exceed --max-index-memory; re-ranked the same way.
    ivf       faiss IVF with uncompressed fp32 lists (the index of earlier zscir versions).
    hnsw      faiss HNSW32 graph; only on request (``--kind hnsw``): on composed queries
              over high-dimensional features it was measured far below the recall target
              (eval/bench_search_ann.py), so "auto" never picks it.

"auto" (zscir.index.autotune, in autofaiss's spirit) takes exact search up to
``exact_max`` vectors, else the IVF kind and code size that fit the memory budget;
then the search knob (``nprobe`` / ``efSearch``) is raised until recall@k against exact
search reaches the target on held-out composed queries (midpoints of two gallery
vectors that were not in the training sample). Where the fast-scan codes miss the
target before a quarter of the lists, "auto" builds SQ8 instead (if it fits), and where
that misses too, exact search; what was tried is recorded. The measured recall is returned
and recorded in index.json: an approximate answer is never silent. The IVF indexes are
trained on a sample and filled chunk by chunk; on disk the SQ8 / PQ / Flat inverted lists
are memory-mapped (faiss IO_FLAG_MMAP), so only the lists a query visits are paged in (the
fast-scan lists are read into memory: d/4 bytes a vector). Vectors are assigned to lists by fp32
centroids; queries probe lists through fp16 copies of them (half the bytes a query streams).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np

from zscir.errors import ZscirError
from zscir.index import kernels
from zscir.index.autotune import fastscan_m

EXACT_MAX = 50_000          # "auto" uses exact search up to this many images
TARGET_RECALL = 0.95        # "auto" tunes the approximate index's knob to reach this recall@k
RECALL_K = 50
RECALL_QUERIES = 256
MIN_APPROXIMATE = 2 * 39    # fewer vectors: an approximate index is not trained, exact search is used (and said)
TRAIN_PER_LIST = 64         # k-means training points per IVF list (faiss samples 256 anyway; 64 is plenty)
ADD_CHUNK = 262_144         # vectors converted to fp32 and added at a time
RERANK_FACTOR = 4           # an approximate index proposes this many candidates per result, re-ranked exactly
RERANK_FACTORS = {"ivf-pqfs": 8}   # 4-bit codes rank coarsely: with 8x they matched SQ8's recall at the same nprobe


class ExactIndex:
    """Exact inner-product search over fp16 vectors (duck-types faiss's ``search``/``ntotal``/``d``)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self.ntotal, self.d = vectors.shape

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return kernels.search(self.vectors, queries, k)


class Reranked:
    """A faiss index proposing ``factor * k`` candidates, re-scored exactly from the fp16 vectors."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray, factor: int = RERANK_FACTOR):
        self.index, self.vectors, self.factor = index, vectors, factor
        self.ntotal, self.d = index.ntotal, index.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal))
        with _one_thread_for_one_query(len(queries)):
            rows = self.index.search(queries, min(self.ntotal, self.factor * k))[1]
        return kernels.exact_rescore(self.vectors, queries, rows, k)


@contextmanager
def _one_thread_for_one_query(count: int):
    """faiss on one OpenMP thread for a single query: waking a second thread for one query costs more than
    it saves (eval/bench_search_ann.py at 10M; docs/search_performance.md). The setting is the
    calling thread's own (an OpenMP ICV), so concurrent searches on other threads are unaffected."""
    if count != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass
class Built:
    index: faiss.Index | ExactIndex      # the faiss index (approximate kinds) or the exact fp16 index
    kind: str
    params: dict                         # construction and search parameters (nlist, nprobe, M, efSearch ...)
    vectors: np.ndarray | None = None    # the normalised fp16 vectors every kind answers from
    train_rows: np.ndarray | None = field(default=None, repr=False)  # rows the index was trained on

    def searcher(self):
        return searcher_for(self.index, self.kind, self.vectors, self.params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher().search(queries, k)


def searcher_for(index, kind: str, vectors: np.ndarray | None, params: dict):
    """What answers queries: the exact index, or the faiss index with exact re-ranking from ``vectors``."""
    if isinstance(index, ExactIndex) or vectors is None or kind not in RERANKED:
        return index
    return Reranked(index, vectors, int(params.get("rerank_factor", RERANK_FACTOR)))


def normalized_fp16(pooled: np.ndarray, out: np.ndarray | None = None, chunk: int = ADD_CHUNK) -> np.ndarray:
    """L2-normalise ``pooled`` [N, D] (any float dtype, memory-mapped is fine) into fp16, chunk by chunk."""
    out = np.empty(pooled.shape, dtype=np.float16) if out is None else out
    for start in range(0, len(pooled), chunk):
        x = np.asarray(pooled[start:start + chunk], dtype=np.float32)
        out[start:start + len(x)] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def _chunks(vectors: np.ndarray, chunk: int = ADD_CHUNK):
    for start in range(0, len(vectors), chunk):
        yield np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32)


def _train_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    if n <= TRAIN_PER_LIST * nlist:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, TRAIN_PER_LIST * nlist, replace=False))


def _flat(vectors: np.ndarray, previous=None, **_) -> Built:
    return Built(ExactIndex(vectors), "flat", {"storage": "fp16"}, vectors)


def _ivf_family(factory: Callable[[int, int], str], kind: str):
    def make(vectors: np.ndarray, previous: faiss.Index | None = None, nlist: int | None = None, **plan) -> Built:
        n, d = vectors.shape
        nlist = nlist or ivf_nlist(n)
        spec = factory(nlist, d, **plan)
        train_rows = _train_rows(n, nlist)
        if previous is not None and _reusable_ivf(previous, nlist, d, spec):
            index = previous  # same distribution, similar size: keep the trained quantizers, re-assign the vectors
            index.reset()
        else:
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            index.train(np.asarray(vectors[train_rows], dtype=np.float32))
        add_assigned_in_fp32(index, vectors)
        factor = RERANK_FACTORS.get(kind, RERANK_FACTOR)
        params = {"nlist": int(nlist), "centroids": "fp16"}
        if kind in RERANKED:
            params.update(factory=spec, rerank_factor=factor)
        return Built(index, kind, params, vectors, train_rows)
    return make


def add_assigned_in_fp32(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add ``vectors`` to IVF ``index``, assigned to lists by fp32 centroids (a matrix product, which
    faiss does with BLAS); then let it search with fp16 centroids (:func:`search_with_fp16_centroids`)."""
    ivf = faiss.extract_index_ivf(index)
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        _set_quantizer(ivf, _coarse_quantizer(ivf.quantizer.reconstruct_n(0, ivf.nlist), fp16=False))
    for x in _chunks(vectors):
        index.add(x)
    search_with_fp16_centroids(index)


def search_with_fp16_centroids(index: faiss.Index) -> None:
    """Replace IVF ``index``'s coarse quantizer by one holding its centroids in fp16.

    One query streams every centroid once: in fp16 that is half the bytes, and the coarse quantizer
    is a large share of faiss's time for one query; the gain grows with the number of lists. The fp16
    centroids pick the same lists as the fp32 ones almost always, and the candidates are re-ranked
    exactly anyway. Measured by eval/bench_search_ann.py ``--fp32-centroids-too``; see
    docs/search_performance.md.
    """
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexScalarQuantizer) and quantizer.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        return
    _set_quantizer(ivf, _coarse_quantizer(ivf.quantizer.reconstruct_n(0, ivf.nlist), fp16=True))


def _coarse_quantizer(centroids: np.ndarray, fp16: bool) -> faiss.Index:
    d = centroids.shape[1]
    quantizer = (faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                 if fp16 else faiss.IndexFlatIP(d))
    quantizer.add(centroids)
    return quantizer


def _set_quantizer(ivf: faiss.IndexIVF, quantizer: faiss.Index) -> None:
    """Replace ``ivf``'s coarse quantizer; ``ivf`` owns (and later deletes) the new one, Python the old one."""
    old = ivf.quantizer
    quantizer.this.disown()
    ivf.quantizer = quantizer
    if ivf.own_fields:
        old.this.acquire()
    ivf.own_fields = True


def _reusable_ivf(previous: faiss.Index, nlist: int, d: int, spec: str) -> bool:
    try:
        ivf = faiss.extract_index_ivf(previous)
    except RuntimeError:
        return False
    probe = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    return (previous.d == d and previous.is_trained and ivf.nlist == nlist
            and type(faiss.downcast_index(probe)) is type(faiss.downcast_index(previous)))


def _hnsw(vectors: np.ndarray, previous: faiss.Index | None = None, m: int = 32, **_) -> Built:
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    for x in _chunks(vectors):
        index.add(x)
    return Built(index, "hnsw", {"M": m, "efConstruction": 80}, vectors)


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists (autofaiss's rule of thumb), a power of two, at least 1 per 39 training points."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    cap = 2 ** int(math.log2(max(n // 39, 1)))
    return int(min(nlist, cap))


KINDS: dict[str, Callable[..., Built]] = {
    "flat": _flat,
    "ivf-sq8": _ivf_family(lambda nlist, d, **_: f"IVF{nlist},SQ8", "ivf-sq8"),
    "ivf-pqfs": _ivf_family(lambda nlist, d, m=None, **_: f"IVF{nlist},PQ{m or fastscan_m(d)}x4fs", "ivf-pqfs"),
    "ivf-pq": _ivf_family(lambda nlist, d, m=None, **_: f"IVF{nlist},PQ{m or max(8, d // 8)}", "ivf-pq"),
    "ivf": _ivf_family(lambda nlist, d, **_: f"IVF{nlist},Flat", "ivf"),
    "hnsw": _hnsw,
}
APPROXIMATE = {"ivf", "ivf-sq8", "ivf-pqfs", "ivf-pq", "hnsw"}
IVF_KINDS = {"ivf", "ivf-sq8", "ivf-pqfs", "ivf-pq"}
RERANKED = {"ivf-sq8", "ivf-pqfs", "ivf-pq"}        # compressed codes: re-rank exactly from the fp16 vectors


def choose_kind(n: int, exact_max: int = EXACT_MAX, d: int = 768, max_memory: int | None = None) -> str:
    from zscir.index.autotune import plan

    return plan(n, d, exact_max=exact_max, max_memory=max_memory)["kind"]


def set_search_knob(built: Built, value: int) -> None:
    if built.kind in IVF_KINDS:
        faiss.extract_index_ivf(built.index).nprobe = int(value)
        built.params["nprobe"] = int(value)
    elif built.kind == "hnsw":
        built.index.hnsw.efSearch = int(value)
        built.params["efSearch"] = int(value)


def apply_params(index: faiss.Index, kind: str, params: dict) -> None:
    """Restore the tuned search knob after reading an index from disk."""
    if kind in IVF_KINDS and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw" and "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])


def sample_queries(vectors: np.ndarray, count: int = RECALL_QUERIES, seed: int = 0,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """Queries that look like composed ones: normalised sums of two random gallery vectors (from ``rows``)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(vectors)) if rows is None else rows
    a = np.asarray(vectors[np.sort(pool[rng.integers(0, len(pool), count)])], dtype=np.float32)
    b = np.asarray(vectors[np.sort(pool[rng.integers(0, len(pool), count)])], dtype=np.float32)
    rng.shuffle(b)
    q = a + b
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def heldout_queries(built: Built, count: int = RECALL_QUERIES, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Composed queries from gallery vectors outside the training sample; (queries, held_out?)."""
    n = len(built.vectors)
    rows = None
    if built.train_rows is not None and len(built.train_rows) < n:
        mask = np.ones(n, dtype=bool)
        mask[built.train_rows] = False
        rows = np.nonzero(mask)[0]
    return sample_queries(built.vectors, count, seed, rows), rows is not None


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    k = exact_rows.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits) / k)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-``k`` (exact fp32 scores of the stored vectors)."""
    return kernels.search(vectors, queries, k)[1]


def tune(built: Built, vectors: np.ndarray | None = None, target: float = TARGET_RECALL, k: int = RECALL_K,
         queries: np.ndarray | None = None) -> float:
    """Raise the search knob (powers of two) until recall@k >= target on held-out composed queries;
    return the recall reached (recorded in ``built.params``)."""
    vectors = built.vectors if vectors is None else vectors
    k = min(k, len(vectors))
    held_out = False
    if queries is None:
        queries, held_out = heldout_queries(built)
    exact = exact_top_k(vectors, queries, k)
    if built.kind in IVF_KINDS:
        candidates = [2 ** i for i in range(int(math.log2(faiss.extract_index_ivf(built.index).nlist)) + 1)]
    else:
        candidates = [max(16, k)] + [2 ** i for i in range(6, 13) if 2 ** i > max(16, k)]
    searcher = built.searcher()
    recall = 0.0
    for value in candidates:
        set_search_knob(built, value)
        recall = recall_at_k(searcher.search(queries, k)[1], exact)
        if recall >= target:
            break
    built.params[f"recall@{k}"] = recall
    built.params["recall_queries"] = {"count": int(len(queries)), "composed": True,
                                      "held_out_from_training": bool(held_out)}
    return recall


def build(vectors: np.ndarray, kind: str = "auto", previous: faiss.Index | None = None,
          exact_max: int = EXACT_MAX, target_recall: float = TARGET_RECALL,
          max_memory: int | None = None, normalised: bool = False) -> tuple[Built, float]:
    """Build the index for ``vectors`` [N, D] (normalised here, into fp16); return it with its recall@k vs exact.

    ``max_memory``: bytes the index may take in memory (codes + centroids) when fully paged in;
    decides the code size of "auto" (zscir.index.autotune). ``normalised``: ``vectors`` are already
    L2-normalised fp16 (e.g. a memory-mapped file written by :func:`normalized_fp16`) and are used as they are.
    """
    from zscir.index.autotune import ivf_bytes, plan

    auto = kind == "auto"
    if not auto and kind not in KINDS:
        raise ZscirError(f"unknown index kind {kind!r} (option --kind): expected auto, {', '.join(KINDS)}")
    if len(vectors) == 0:
        raise ZscirError("no image could be encoded: the index would be empty")
    n, d = vectors.shape
    chosen = plan(n, d, exact_max=exact_max, max_memory=max_memory, kind=None if auto else kind)
    kind = chosen.pop("kind")
    fallback = None
    if kind in APPROXIMATE and n < MIN_APPROXIMATE:
        fallback = (f"{n} images are too few for an approximate {kind} index (it needs at least "
                    f"{MIN_APPROXIMATE} to train, and exact search over so few is as fast): using exact search")
        kind = "flat"
    if not (normalised and vectors.dtype == np.float16):
        vectors = normalized_fp16(vectors)
    budget = chosen.pop("memory", None)
    built = KINDS[kind](vectors, previous, **chosen)
    if budget:
        built.params["memory"] = budget
    if kind not in APPROXIMATE:
        if fallback:
            built.params["fallback_reason"] = fallback
        return built, 1.0
    recall = tune(built, target=target_recall)
    missed = built.kind in IVF_KINDS and built.params["nprobe"] > faiss.extract_index_ivf(built.index).nlist // 4
    sq8_fits = ivf_bytes(n, d, built.params.get("nlist", 1), d) <= (budget or {}).get("max_index_memory", 0)
    if missed and auto and kind == "ivf-pqfs" and sq8_fits:
        # the 4-bit codes did not hold the recall on these features: SQ8, the next choice by measured recall
        tried = {"kind": kind, "nprobe": built.params["nprobe"], f"recall@{RECALL_K}": recall}
        built, recall = build(vectors, "ivf-sq8", previous, exact_max, target_recall, max_memory, normalised=True)
        built.params["tried_before"] = tried
        return built, recall
    if missed:
        # reaching the target needs most of the lists: slower than a plain scan, so scan
        reason = (f"IVF{built.params['nlist']} needed nprobe {built.params['nprobe']} for recall@{RECALL_K} "
                  f"{recall:.3f}; exact search is faster at that point")
        built = _flat(vectors)
        built.params["fallback_from_ivf"] = reason
        built.params["fallback_reason"] = reason + ": using exact search"
        return built, 1.0
    return built, recall
