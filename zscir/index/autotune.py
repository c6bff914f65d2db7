"""The index plan for a gallery from its size and a memory budget, in autofaiss's spirit.

    plan(n=100_000_000, d=512, max_memory=parse_size("16GB"))
    -> {"kind": "ivf-pqfs", "nlist": 65536, "m": 256, "memory": {...}}

Exact search up to ``exact_max`` vectors (it is as fast as an approximate index there).
Beyond, an IVF index with compressed codes, re-ranked exactly from the fp16 vectors:
4-bit fast-scan PQ with one sub-quantiser per two dimensions (``d/4`` bytes per vector)
when it fits the budget -- on clustered CLIP-like features it holds recall@50 >= 0.95 at
a quarter of SQ8's memory and ~3x its speed (SIMD table look-ups instead of decoding,
eval/bench_search_ann.py) --, else 8-bit PQ with the most bytes per vector that fit.
SQ8 (``d`` bytes) is built on request (``--kind ivf-sq8``). The budget counts what the index
takes when fully paged in (codes + ids + centroids); the fp16 vectors used for re-ranking
stay on disk, memory-mapped, and only the candidates' rows are read. HNSW is never
chosen here: its recall on composed queries must be measured (``--kind hnsw`` does).
The search knob is tuned afterwards by measured recall (search_index.tune).
"""

from __future__ import annotations

import math
import re

from zscir.errors import ZscirError

DEFAULT_MAX_MEMORY = 16 * 10 ** 9
_UNITS = {"": 1, "B": 1, "K": 10 ** 3, "KB": 10 ** 3, "M": 10 ** 6, "MB": 10 ** 6, "G": 10 ** 9, "GB": 10 ** 9,
          "T": 10 ** 12, "TB": 10 ** 12, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text: str | int | None, option: str = "--max-index-memory") -> int | None:
    """'16GB', '512MiB', '2e9' -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ZscirError(f"{option} {text!r}: expected a size such as 16GB, 512MB or 2GiB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ZscirError(f"{option} {text!r}: expected a positive size")
    return value


def ivf_bytes(n: int, d: int, nlist: int, code_bytes: int) -> int:
    """Bytes of an IVF index fully in memory: codes + 8-byte ids per vector, fp32 centroids."""
    return n * (code_bytes + 8) + nlist * d * 4


def pq_sizes(d: int) -> list[int]:
    """PQ code sizes (bytes = sub-quantisers of 8 bits) that divide ``d``, largest first, at least 8."""
    return [m for m in (d // 2, d // 4, d // 8, d // 16, d // 32, d // 64) if m >= 8 and d % m == 0]


def fastscan_m(d: int) -> int:
    """Sub-quantisers of the 4-bit fast-scan PQ: two dimensions each, one each where ``d`` is odd."""
    return d // 2 if d % 2 == 0 else d


def fastscan_bytes(d: int) -> int:
    """Code bytes per vector of the fast-scan PQ (two 4-bit codes a byte)."""
    return (fastscan_m(d) + 1) // 2


def plan(n: int, d: int, exact_max: int = 50_000, max_memory: int | None = None, kind: str | None = None) -> dict:
    """The kind and construction parameters for ``n`` vectors of width ``d`` (``kind`` forces one)."""
    from zscir.index.search_index import ivf_nlist

    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    nlist = ivf_nlist(n)
    if kind is None and n <= exact_max:
        kind = "flat"
    if kind in ("flat", "hnsw"):
        return {"kind": kind}
    memory = {"max_index_memory": budget}
    fixed = {"ivf-sq8": d, "ivf": 4 * d, "ivf-pqfs": fastscan_bytes(d)}       # code bytes of the kinds with one size
    if kind in fixed or (kind is None and ivf_bytes(n, d, nlist, fixed["ivf-pqfs"]) <= budget):
        kind = kind or "ivf-pqfs"
        code = fixed[kind]
        return {"kind": kind, "nlist": nlist, **({"m": fastscan_m(d)} if kind == "ivf-pqfs" else {}),
                "memory": {**memory, "index_bytes": ivf_bytes(n, d, nlist, code), "bytes_per_vector": code + 8}}
    for m in (m for m in pq_sizes(d) if kind == "ivf-pq" or m < fixed["ivf-pqfs"]):
        need = ivf_bytes(n, d, nlist, m)
        if need <= budget or (kind == "ivf-pq" and m == pq_sizes(d)[-1]):
            return {"kind": "ivf-pq", "nlist": nlist, "m": m,
                    "memory": {**memory, "index_bytes": need, "bytes_per_vector": m + 8}}
    smallest = ivf_bytes(n, d, nlist, pq_sizes(d)[-1]) if pq_sizes(d) else ivf_bytes(n, d, nlist, d)
    raise ZscirError(f"--max-index-memory {budget / 1e9:.3g}GB cannot hold an index of {n:,} vectors of width {d} "
                     f"(the smallest, IVF{nlist} with PQ codes, takes {math.ceil(smallest / 1e9)}GB): raise it")
