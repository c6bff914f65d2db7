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
The code sizes are the kinds' own (zscir.index.kinds); the search knob is tuned afterwards
by measured recall (search_index.tune).
"""

from __future__ import annotations

import math
import re

from zscir.errors import ZscirError
from zscir.index.ivf import ivf_nlist
from zscir.index.kinds import AUTO, EXACT, KINDS, fastscan_bytes, fastscan_m, pq_sizes  # noqa: F401 (re-exported)

EXACT_MAX = 50_000          # "auto" uses exact search up to this many images
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


def plan(n: int, d: int, exact_max: int = EXACT_MAX, max_memory: int | None = None, kind: str | None = None) -> dict:
    """The kind and construction parameters for ``n`` vectors of width ``d`` (``kind`` forces one).

    A forced kind takes its largest codes that fit the budget, else its smallest; "auto" takes the first
    codes that fit among :data:`zscir.index.kinds.AUTO`'s kinds (largest codes first), else refuses."""
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    nlist = ivf_nlist(n)
    if kind is None and n <= exact_max:
        kind = EXACT
    if kind is not None and KINDS[kind].codes is None:
        return {"kind": kind}
    memory = {"max_index_memory": budget}
    options = ([(kind, params, code) for params, code in KINDS[kind].codes(d)] if kind is not None else
               [(name, params, code) for name in AUTO for params, code in KINDS[name].codes(d)])
    for i, (name, params, code) in enumerate(options):
        need = ivf_bytes(n, d, nlist, code)
        if need <= budget or (kind is not None and i == len(options) - 1):
            return {"kind": name, "nlist": nlist, **params,
                    "memory": {**memory, "index_bytes": need, "bytes_per_vector": code + 8}}
    last_resort = KINDS[AUTO[-1]].codes(d)
    smallest = ivf_bytes(n, d, nlist, last_resort[-1][1] if last_resort else d)
    raise ZscirError(f"--max-index-memory {budget / 1e9:.3g}GB cannot hold an index of {n:,} vectors of width {d} "
                     f"(the smallest, IVF{nlist} with PQ codes, takes {math.ceil(smallest / 1e9)}GB): raise it")
