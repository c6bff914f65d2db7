"""The index plan for a gallery from its size and a memory budget, in autofaiss's spirit.

    plan(n=100_000_000, d=512, max_memory=parse_size("16GB"))
    -> {"kind": "ivf-pq", "nlist": 65536, "m": 128, "memory": {...}}

Exact search up to ``exact_max`` vectors (it is as fast as an approximate index there).
Beyond, an IVF index with compressed codes: 8-bit scalar quantisation (``d`` bytes per
vector; on clustered CLIP-like features with exact re-ranking it holds recall@50 >= 0.95
where PQ with few bytes does not, see eval/bench_search_ann.py) when the codes fit the
budget, else PQ with the most bytes per vector that fit. The budget counts what the index
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
    if kind in (None, "ivf-sq8"):
        need = ivf_bytes(n, d, nlist, d)
        if kind == "ivf-sq8" or need <= budget:
            return {"kind": "ivf-sq8", "nlist": nlist, "memory": {**memory, "index_bytes": need,
                                                                  "bytes_per_vector": d + 8}}
    if kind == "ivf":
        return {"kind": "ivf", "nlist": nlist, "memory": {**memory, "index_bytes": ivf_bytes(n, d, nlist, 4 * d)}}
    for m in pq_sizes(d):
        need = ivf_bytes(n, d, nlist, m)
        if need <= budget or (kind == "ivf-pq" and m == pq_sizes(d)[-1]):
            return {"kind": "ivf-pq", "nlist": nlist, "m": m,
                    "memory": {**memory, "index_bytes": need, "bytes_per_vector": m + 8}}
    smallest = ivf_bytes(n, d, nlist, pq_sizes(d)[-1]) if pq_sizes(d) else ivf_bytes(n, d, nlist, d)
    raise ZscirError(f"--max-index-memory {budget / 1e9:.3g}GB cannot hold an index of {n:,} vectors of width {d} "
                     f"(the smallest, IVF{nlist} with PQ codes, takes {math.ceil(smallest / 1e9)}GB): raise it")
