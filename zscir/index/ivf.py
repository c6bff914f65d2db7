"""Building blocks of the IVF index kinds: the list count, the training sample, fp32 assignment, fp16 centroids.

Vectors are assigned to lists by fp32 centroids; queries probe lists through fp16 copies of them
(half the bytes a query streams). A rebuild of a similar gallery keeps the trained quantizers
(:func:`reusable`) and only re-assigns the vectors.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

TRAIN_PER_LIST = 64         # k-means training points per IVF list (faiss samples 256 anyway; 64 is plenty)
ADD_CHUNK = 262_144         # vectors converted to fp32 and added at a time


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists (autofaiss's rule of thumb), a power of two, at least 1 per 39 training points."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    cap = 2 ** int(math.log2(max(n // 39, 1)))
    return int(min(nlist, cap))


def chunks(vectors: np.ndarray, chunk: int = ADD_CHUNK):
    """``vectors`` as contiguous fp32 blocks of ``chunk`` rows (any dtype, memory-mapped is fine)."""
    for start in range(0, len(vectors), chunk):
        yield np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32)


def train_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows k-means trains on: all of them up to ``TRAIN_PER_LIST`` a list, else a seeded sample (sorted)."""
    if n <= TRAIN_PER_LIST * nlist:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, TRAIN_PER_LIST * nlist, replace=False))


def add_assigned_in_fp32(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add ``vectors`` to IVF ``index``, assigned to lists by fp32 centroids (a matrix product, which
    faiss does with BLAS); then let it search with fp16 centroids (:func:`search_with_fp16_centroids`)."""
    ivf = faiss.extract_index_ivf(index)
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        _set_quantizer(ivf, _coarse_quantizer(ivf.quantizer.reconstruct_n(0, ivf.nlist), fp16=False))
    for x in chunks(vectors):
        index.add(x)
    search_with_fp16_centroids(index)


def search_with_fp16_centroids(index: faiss.Index) -> None:
    """Replace IVF ``index``'s coarse quantizer by one holding its centroids in fp16.

    One query streams every centroid once: in fp16 that is half the bytes, and the coarse quantizer
    is a large part of an IVF query's time. The fp16 centroids pick nearly the same lists as the fp32
    ones, and the candidates are re-ranked exactly anyway (eval/bench_search_ann.py measures both).
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


def reusable(previous: faiss.Index, nlist: int, d: int, spec: str) -> bool:
    """Whether ``previous`` is a trained IVF index of the same structure as factory string ``spec``."""
    try:
        ivf = faiss.extract_index_ivf(previous)
    except RuntimeError:
        return False
    probe = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    return (previous.d == d and previous.is_trained and ivf.nlist == nlist
            and type(faiss.downcast_index(probe)) is type(faiss.downcast_index(previous)))
