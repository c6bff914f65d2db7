"""The index kinds, one registry entry each: how it is built, what its codes cost, how it is searched.

Vectors are L2-normalised, so inner product = cosine similarity. They are kept once, in fp16
(``Built.vectors``, written as ``vectors.g<gen>.npy`` and memory-mapped at load); every kind
answers from them:

    flat      exact search over the fp16 vectors (zscir.index.kernels: the kernel is chosen by
              batch size and the CPU's native fp16/bf16 support).
    ivf-sq8   faiss IVF with 8-bit scalar-quantised codes (d bytes per vector), the top
              candidates re-ranked exactly from the fp16 vectors.
    ivf-pqfs  faiss IVF with 4-bit fast-scan PQ codes, two dimensions a sub-quantiser (d/4 bytes
              per vector; SIMD look-up tables), re-ranked the same way: "auto"'s first choice.
    ivf-pq    faiss IVF with 8-bit PQ codes (m bytes per vector) for galleries whose fast-scan
              codes exceed --max-index-memory; re-ranked the same way.
    ivf       faiss IVF with uncompressed fp32 lists (the index of earlier zscir versions).
    hnsw      faiss HNSW32 graph; only on request (``--kind hnsw``): on composed queries over
              high-dimensional features it was measured far below the recall target
              (eval/bench_search_ann.py), so "auto" never picks it.

An entry names its builder, its faiss factory string (the IVF kinds), its code sizes per vector
(what zscir.index.autotune fits to the memory budget), its search knob (tuned by measured recall
in zscir.index.search_index) and its re-rank rule. Adding a kind is adding an entry here.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np

from zscir.index import ivf, kernels

RERANK_FACTOR = 4           # an approximate index proposes this many candidates per result, re-ranked exactly
EXACT = "flat"              # the kind of exact search (small galleries, and where an approximate one misses)
AUTO = ("ivf-pqfs", "ivf-pq")   # what "auto" builds beyond exact search: the first whose codes fit the budget


# --------------------------------------------------------------------------------------------- searchers

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
    entry = KINDS.get(kind)
    if isinstance(index, ExactIndex) or vectors is None or entry is None or entry.rerank_factor is None:
        return index
    return Reranked(index, vectors, int(params.get("rerank_factor", RERANK_FACTOR)))


# ------------------------------------------------------------------------------------------ search knobs

@dataclass(frozen=True)
class Knob:
    """The search parameter of an approximate kind, raised until recall@k reaches the target."""
    name: str                                           # its key in ``Built.params`` and index.json
    set: Callable[[faiss.Index, int], None]
    candidates: Callable[[faiss.Index, int], list[int]]  # (index, k) -> the values tried, in order
    past_scan: Callable[[faiss.Index, int], bool]       # (index, value) -> an exact scan is faster there


def _set_nprobe(index: faiss.Index, value: int) -> None:
    faiss.extract_index_ivf(index).nprobe = int(value)


def _set_ef_search(index: faiss.Index, value: int) -> None:
    index.hnsw.efSearch = int(value)


NPROBE = Knob("nprobe", _set_nprobe,
              candidates=lambda index, k: [2 ** i for i in range(int(math.log2(faiss.extract_index_ivf(index).nlist)) + 1)],
              past_scan=lambda index, value: value > faiss.extract_index_ivf(index).nlist // 4)
EF_SEARCH = Knob("efSearch", _set_ef_search,
                 candidates=lambda index, k: [max(16, k)] + [2 ** i for i in range(6, 13) if 2 ** i > max(16, k)],
                 past_scan=lambda index, value: False)


# -------------------------------------------------------------------------------------------- code sizes

def pq_sizes(d: int) -> list[int]:
    """PQ code sizes (bytes = sub-quantisers of 8 bits) that divide ``d``, largest first, at least 8."""
    return [m for m in (d // 2, d // 4, d // 8, d // 16, d // 32, d // 64) if m >= 8 and d % m == 0]


def fastscan_m(d: int) -> int:
    """Sub-quantisers of the 4-bit fast-scan PQ: two dimensions each, one each where ``d`` is odd."""
    return d // 2 if d % 2 == 0 else d


def fastscan_bytes(d: int) -> int:
    """Code bytes per vector of the fast-scan PQ (two 4-bit codes a byte)."""
    return (fastscan_m(d) + 1) // 2


# ---------------------------------------------------------------------------------------------- builders

def _build_exact(kind: IndexKind, vectors: np.ndarray, previous=None, **_) -> Built:
    return Built(ExactIndex(vectors), kind.name, {"storage": "fp16"}, vectors)


def _build_ivf(kind: IndexKind, vectors: np.ndarray, previous: faiss.Index | None = None,
               nlist: int | None = None, m: int | None = None, **_) -> Built:
    """Train on a sample (or keep ``previous``'s quantizers: same structure, same lists), add in chunks."""
    n, d = vectors.shape
    nlist = nlist or ivf.ivf_nlist(n)
    spec = kind.factory(nlist, d, m)
    train_rows = ivf.train_rows(n, nlist)
    if previous is not None and ivf.reusable(previous, nlist, d, spec):
        index = previous  # same distribution, similar size: keep the trained quantizers, re-assign the vectors
        index.reset()
    else:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        index.train(np.asarray(vectors[train_rows], dtype=np.float32))
    ivf.add_assigned_in_fp32(index, vectors)
    params = {"nlist": int(nlist), "centroids": "fp16"}
    if kind.rerank_factor is not None:
        params.update(factory=spec, rerank_factor=kind.rerank_factor)
    return Built(index, kind.name, params, vectors, train_rows)


def _build_hnsw(kind: IndexKind, vectors: np.ndarray, previous=None, m: int = 32, **_) -> Built:
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    for x in ivf.chunks(vectors):
        index.add(x)
    return Built(index, kind.name, {"M": m, "efConstruction": 80}, vectors)


# -------------------------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class IndexKind:
    name: str
    builder: Callable[..., Built]      # (entry, vectors, previous=None, **plan) -> Built
    factory: Callable[[int, int, int | None], str] | None = None   # (nlist, d, m) -> faiss factory string (IVF)
    codes: Callable[[int], list[tuple[dict, int]]] | None = None
    """Per width d: (construction parameters, code bytes per vector), largest first; None: not sized by
    the memory budget."""
    knob: Knob | None = None           # tuned by measured recall; None: exact search
    rerank_factor: int | None = None   # candidates per result re-scored exactly; None: the index's own scores
    fallback: str | None = None        # "auto": the kind built instead when this one's recall needs a scan's work

    @property
    def approximate(self) -> bool:
        return self.knob is not None

    @property
    def ivf(self) -> bool:
        """An IVF index: trained lists (reusable by a rebuild), memory-mapped from disk."""
        return self.factory is not None

    def build(self, vectors: np.ndarray, previous: faiss.Index | None = None, **plan) -> Built:
        return self.builder(self, vectors, previous, **plan)


KINDS: dict[str, IndexKind] = {e.name: e for e in (
    IndexKind("flat", _build_exact),
    IndexKind("ivf-sq8", _build_ivf, factory=lambda nlist, d, m: f"IVF{nlist},SQ8",
              codes=lambda d: [({}, d)], knob=NPROBE, rerank_factor=RERANK_FACTOR),
    # 4-bit codes rank coarsely: with 8x they matched SQ8's recall at the same nprobe
    IndexKind("ivf-pqfs", _build_ivf, factory=lambda nlist, d, m: f"IVF{nlist},PQ{m or fastscan_m(d)}x4fs",
              codes=lambda d: [({"m": fastscan_m(d)}, fastscan_bytes(d))], knob=NPROBE, rerank_factor=8,
              fallback="ivf-sq8"),
    IndexKind("ivf-pq", _build_ivf, factory=lambda nlist, d, m: f"IVF{nlist},PQ{m or max(8, d // 8)}",
              codes=lambda d: [({"m": m}, m) for m in pq_sizes(d)], knob=NPROBE, rerank_factor=RERANK_FACTOR),
    IndexKind("ivf", _build_ivf, factory=lambda nlist, d, m: f"IVF{nlist},Flat",
              codes=lambda d: [({}, 4 * d)], knob=NPROBE),
    IndexKind("hnsw", _build_hnsw, knob=EF_SEARCH),
)}
