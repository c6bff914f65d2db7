"""Which index to build for a gallery, and how well an approximate one does.

The index kinds (flat, ivf-sq8, ivf-pqfs, ivf-pq, ivf, hnsw) are entries of zscir.index.kinds.
"auto" (zscir.index.autotune, in autofaiss's spirit) takes exact search up to
``exact_max`` vectors, else the IVF kind and code size that fit the memory budget;
then the search knob (``nprobe`` / ``efSearch``) is raised until recall@k against exact
search reaches the target on held-out composed queries (midpoints of two gallery
vectors that were not in the training sample). Where the fast-scan codes miss the
target before a quarter of the lists, "auto" builds the kind's fallback (SQ8) instead (if it
fits), and where that misses too, exact search; what was tried is recorded. The measured recall
is returned and recorded in index.json: an approximate answer is never silent. The IVF indexes are
trained on a sample and filled chunk by chunk; on disk the SQ8 / PQ / Flat inverted lists
are memory-mapped (faiss IO_FLAG_MMAP), so only the lists a query visits are paged in (the
fast-scan lists are read into memory: d/4 bytes a vector). Vectors are assigned to lists by fp32
centroids; queries probe lists through fp16 copies of them (zscir.index.ivf).
"""

from __future__ import annotations

import numpy as np

from zscir.errors import ZscirError
from zscir.index import kernels
from zscir.index.autotune import EXACT_MAX, ivf_bytes, plan
from zscir.index.ivf import (ADD_CHUNK, TRAIN_PER_LIST, add_assigned_in_fp32,  # noqa: F401 (re-exported)
                             ivf_nlist, search_with_fp16_centroids)
from zscir.index.kinds import (EXACT, KINDS, RERANK_FACTOR, Built, ExactIndex,  # noqa: F401 (re-exported)
                               Reranked, searcher_for)

TARGET_RECALL = 0.95        # "auto" tunes the approximate index's knob to reach this recall@k
RECALL_K = 50
RECALL_QUERIES = 256
MIN_APPROXIMATE = 2 * 39    # fewer vectors: an approximate index is not trained, exact search is used (and said)
APPROXIMATE = frozenset(name for name, kind in KINDS.items() if kind.approximate)
IVF_KINDS = frozenset(name for name, kind in KINDS.items() if kind.ivf)


def normalized_fp16(pooled: np.ndarray, out: np.ndarray | None = None, chunk: int = ADD_CHUNK) -> np.ndarray:
    """L2-normalise ``pooled`` [N, D] (any float dtype, memory-mapped is fine) into fp16, chunk by chunk."""
    out = np.empty(pooled.shape, dtype=np.float16) if out is None else out
    for start in range(0, len(pooled), chunk):
        x = np.asarray(pooled[start:start + chunk], dtype=np.float32)
        out[start:start + len(x)] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def choose_kind(n: int, exact_max: int = EXACT_MAX, d: int = 768, max_memory: int | None = None) -> str:
    return plan(n, d, exact_max=exact_max, max_memory=max_memory)["kind"]


def set_search_knob(built: Built, value: int) -> None:
    knob = KINDS[built.kind].knob
    if knob is not None:
        knob.set(built.index, value)
        built.params[knob.name] = int(value)


def apply_params(index, kind: str, params: dict) -> None:
    """Restore the tuned search knob after reading an index from disk."""
    knob = KINDS[kind].knob if kind in KINDS else None
    if knob is not None and knob.name in params:
        knob.set(index, params[knob.name])


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
    candidates = KINDS[built.kind].knob.candidates(built.index, k)
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


def build(vectors: np.ndarray, kind: str = "auto", previous=None,
          exact_max: int = EXACT_MAX, target_recall: float = TARGET_RECALL,
          max_memory: int | None = None, normalised: bool = False) -> tuple[Built, float]:
    """Build the index for ``vectors`` [N, D] (normalised here, into fp16); return it with its recall@k vs exact.

    ``max_memory``: bytes the index may take in memory (codes + centroids) when fully paged in;
    decides the code size of "auto" (zscir.index.autotune). ``normalised``: ``vectors`` are already
    L2-normalised fp16 (e.g. a memory-mapped file written by :func:`normalized_fp16`) and are used as they are.
    ``previous``: the faiss index of an earlier build, whose trained quantizers an IVF kind may keep.
    """
    auto = kind == "auto"
    if not auto and kind not in KINDS:
        raise ZscirError(f"unknown index kind {kind!r} (option --kind): expected auto, {', '.join(KINDS)}")
    if len(vectors) == 0:
        raise ZscirError("no image could be encoded: the index would be empty")
    n, d = vectors.shape
    chosen = plan(n, d, exact_max=exact_max, max_memory=max_memory, kind=None if auto else kind)
    kind = chosen.pop("kind")
    fallback = None
    if KINDS[kind].approximate and n < MIN_APPROXIMATE:
        fallback = (f"{n} images are too few for an approximate {kind} index (it needs at least "
                    f"{MIN_APPROXIMATE} to train, and exact search over so few is as fast): using exact search")
        kind = EXACT
    if not (normalised and vectors.dtype == np.float16):
        vectors = normalized_fp16(vectors)
    budget = chosen.pop("memory", None)
    entry = KINDS[kind]
    built = entry.build(vectors, previous, **chosen)
    if budget:
        built.params["memory"] = budget
    if not entry.approximate:
        if fallback:
            built.params["fallback_reason"] = fallback
        return built, 1.0
    recall = tune(built, target=target_recall)
    knob = entry.knob
    missed = knob.past_scan(built.index, built.params[knob.name])
    instead = entry.fallback
    fits = instead is not None and ivf_bytes(n, d, built.params.get("nlist", 1), KINDS[instead].codes(d)[0][1]) <= (
        budget or {}).get("max_index_memory", 0)
    if missed and auto and fits:
        # these codes did not hold the recall on these features: the next choice by measured recall
        tried = {"kind": kind, knob.name: built.params[knob.name], f"recall@{RECALL_K}": recall}
        built, recall = build(vectors, instead, previous, exact_max, target_recall, max_memory, normalised=True)
        built.params["tried_before"] = tried
        return built, recall
    if missed:
        # reaching the target needs most of the lists: slower than a plain scan, so scan
        reason = (f"IVF{built.params['nlist']} needed nprobe {built.params['nprobe']} for recall@{RECALL_K} "
                  f"{recall:.3f}; exact search is faster at that point")
        built = KINDS[EXACT].build(vectors)
        built.params["fallback_from_ivf"] = reason
        built.params["fallback_reason"] = reason + ": using exact search"
        return built, 1.0
    return built, recall
