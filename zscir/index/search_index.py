"""Which faiss index to build for a gallery, and how well an approximate one does.

Small galleries get exact inner-product search: scanning 50k x 768 fp32 vectors
takes ~15 ms, so there is nothing to gain from approximation. Larger ones get
an approximate index, as autofaiss does, with its search-time knob (IVF's
``nprobe``, HNSW's ``efSearch``) raised until recall@k against exact search
reaches a target on sample queries. The measured recall is returned so that it
can be recorded in the index metadata: an approximate answer is never silent.

Vectors are L2-normalised, so inner product = cosine similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from zscir.errors import ZscirError

EXACT_MAX = 50_000          # "auto" uses exact search up to this many images
TARGET_RECALL = 0.95        # "auto" tunes the approximate index's knob to reach this recall@k
RECALL_K = 50
RECALL_QUERIES = 256
MIN_APPROXIMATE = 2 * 39    # fewer vectors: an approximate index is not trained, exact search is used (and said)


@dataclass
class Built:
    index: faiss.Index
    kind: str
    params: dict            # construction and search parameters (nlist, nprobe, M, efSearch ...)


def _flat(vectors: np.ndarray, previous: faiss.Index | None = None) -> Built:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return Built(index, "flat", {})


def _ivf(vectors: np.ndarray, previous: faiss.Index | None = None) -> Built:
    n, d = vectors.shape
    if previous is not None and _reusable_ivf(previous, n, d):
        # same distribution, similar size: keep the trained centroids, only re-assign the vectors
        index = previous
        index.reset()
        nlist = faiss.extract_index_ivf(index).nlist
    else:
        nlist = ivf_nlist(n)
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        train = vectors
        if n > 64 * nlist:  # faiss k-means samples 256 per centroid anyway; 64 is plenty and 4x faster
            rng = np.random.default_rng(0)
            train = vectors[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.train(train)
    index.add(vectors)
    return Built(index, "ivf", {"nlist": int(nlist)})


def _reusable_ivf(previous: faiss.Index, n: int, d: int) -> bool:
    try:
        ivf = faiss.extract_index_ivf(previous)
    except RuntimeError:
        return False
    return previous.d == d and previous.is_trained and ivf.nlist == ivf_nlist(n)


def _hnsw(vectors: np.ndarray, previous: faiss.Index | None = None, m: int = 32) -> Built:
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(vectors)
    return Built(index, "hnsw", {"M": m, "efConstruction": 80})


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists (autofaiss's rule of thumb), a power of two, at least 1 per 39 training points."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    cap = 2 ** int(math.log2(max(n // 39, 1)))
    return int(min(nlist, cap))


KINDS: dict[str, Callable[..., Built]] = {"flat": _flat, "ivf": _ivf, "hnsw": _hnsw}
APPROXIMATE = {"ivf", "hnsw"}


def choose_kind(n: int, exact_max: int = EXACT_MAX) -> str:
    return "flat" if n <= exact_max else "ivf"


def set_search_knob(built: Built, value: int) -> None:
    if built.kind == "ivf":
        faiss.extract_index_ivf(built.index).nprobe = int(value)
        built.params["nprobe"] = int(value)
    elif built.kind == "hnsw":
        built.index.hnsw.efSearch = int(value)
        built.params["efSearch"] = int(value)


def apply_params(index: faiss.Index, kind: str, params: dict) -> None:
    """Restore the tuned search knob after reading an index from disk."""
    if kind == "ivf" and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw" and "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])


def sample_queries(vectors: np.ndarray, count: int = RECALL_QUERIES, seed: int = 0) -> np.ndarray:
    """Queries that look like composed ones: normalised midpoints of two random gallery vectors."""
    rng = np.random.default_rng(seed)
    a = vectors[rng.integers(0, len(vectors), count)]
    b = vectors[rng.integers(0, len(vectors), count)]
    q = a + b
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    k = exact_rows.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits) / k)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, k)[1]


def tune(built: Built, vectors: np.ndarray, target: float = TARGET_RECALL, k: int = RECALL_K,
         queries: np.ndarray | None = None) -> float:
    """Raise the search knob (powers of two) until recall@k >= target; return the recall reached."""
    k = min(k, len(vectors))
    queries = sample_queries(vectors) if queries is None else queries
    exact = exact_top_k(vectors, queries, k)
    if built.kind == "ivf":
        candidates = [2 ** i for i in range(int(math.log2(faiss.extract_index_ivf(built.index).nlist)) + 1)]
    else:
        candidates = [max(16, k)] + [2 ** i for i in range(6, 13) if 2 ** i > max(16, k)]
    recall = 0.0
    for value in candidates:
        set_search_knob(built, value)
        recall = recall_at_k(built.index.search(queries, k)[1], exact)
        if recall >= target:
            break
    built.params[f"recall@{k}"] = recall
    return recall


def build(vectors: np.ndarray, kind: str = "auto", previous: faiss.Index | None = None,
          exact_max: int = EXACT_MAX, target_recall: float = TARGET_RECALL) -> tuple[Built, float]:
    """Build the index for L2-normalised fp32 ``vectors``; return it with its recall@k vs exact (1.0 if exact)."""
    if kind == "auto":
        kind = choose_kind(len(vectors), exact_max)
    if kind not in KINDS:
        raise ZscirError(f"unknown index kind {kind!r} (option --kind): expected auto, {', '.join(KINDS)}")
    if len(vectors) == 0:
        raise ZscirError("no image could be encoded: the index would be empty")
    fallback = None
    if kind in APPROXIMATE and len(vectors) < MIN_APPROXIMATE:
        fallback = (f"{len(vectors)} images are too few for an approximate {kind} index (it needs at least "
                    f"{MIN_APPROXIMATE} to train, and exact search over so few is as fast): using exact search")
        kind = "flat"
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    built = KINDS[kind](vectors, previous)
    if kind not in APPROXIMATE:
        if fallback:
            built.params["fallback_reason"] = fallback
        return built, 1.0
    recall = tune(built, vectors, target_recall)
    if built.kind == "ivf" and built.params["nprobe"] > faiss.extract_index_ivf(built.index).nlist // 4:
        # reaching the target needs most of the lists: slower than a plain scan, so scan
        reason = (f"IVF{built.params['nlist']} needed nprobe {built.params['nprobe']} for recall@{RECALL_K} "
                  f"{recall:.3f}; exact search is faster at that point")
        built = _flat(vectors)
        built.params["fallback_from_ivf"] = reason
        built.params["fallback_reason"] = reason + ": using exact search"
        return built, 1.0
    return built, recall
