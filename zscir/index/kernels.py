"""Exact inner-product search over fp16 vectors, with the kernel chosen by batch size and CPU.

The gallery's vectors are kept once, in fp16 (an array or a memory-mapped ``.npy``): no
fp32 copy. A scan is memory-bound for one query (it must read every byte once) and
compute-bound for a batch, so the kernel depends on both the batch size and what the CPU
can do natively:

    fp16-matmul   torch fp16 matmul straight on the stored rows; only where the CPU has
                  AVX512-FP16 (or on CUDA). Elsewhere fp16 arithmetic is emulated and
                  45-100x slower than fp32, so it is never chosen there.
    fp16-gemv     one query: torch's fp16 matrix-vector product, which widens the rows to
                  fp32 in registers (F16C) and accumulates in fp32, so it reads each stored
                  byte once and writes nothing but the scores: the memory-bound scan. Not a
                  matmul: no fp16 arithmetic, so it is fast on CPUs without AVX512-FP16 too.
    bf16-matmul   the rows converted chunk by chunk to bf16, one matmul per chunk: for
                  batches on CPUs with AMX-BF16. With AVX512-BF16 alone it is slower than
                  fp32-chunked (fp16 -> bf16 conversion goes through fp32), so it is not
                  chosen there.
    fp32-chunked  the rows converted chunk by chunk to fp32 into one cache-sized buffer,
                  one sgemm per chunk: works everywhere. Chunks must be small enough that
                  the conversion and the sgemm stay in cache (2,048 rows).

Measured by eval/bench_search_ann.py (``--kinds flat``); see docs/search_performance.md.

Every kernel returns ``RERANK_FACTOR * k`` candidates whose low-precision scores are then
recomputed exactly (fp32 dot products of the fp16 rows) and re-sorted, so the answer's
order and scores are the exact fp32 ones on the stored fp16 vectors, whatever the kernel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from zscir.utils.cpu import cpu_flags, has_native

RERANK_FACTOR = 4        # candidates re-scored exactly per requested result
CHUNK_ROWS = 2_048       # rows converted at a time by the chunked kernels (4 MB of fp32 at d = 512: stays in cache)
SCAN_ROWS = 64 * 2 ** 20  # rows x queries of scores held at once by search() (128 MB of fp16)


def has_native_fp16(flags: frozenset[str] | None = None) -> bool:
    return has_native("fp16", flags)


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    return has_native("bf16", flags)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the (possibly read-only, memory-mapped) array's memory; it is only read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(array))


def _scores_fp16(vectors: np.ndarray, queries: np.ndarray) -> torch.Tensor:
    x = _tensor(vectors)
    return x @ torch.from_numpy(queries).to(torch.float16).T


def _scores_gemv(vectors: np.ndarray, queries: np.ndarray) -> torch.Tensor:
    x = _tensor(vectors)   # one pass over the rows per query: chosen for batches of one
    return torch.stack([torch.mv(x, q) for q in torch.from_numpy(queries).to(torch.float16)], dim=1)


def _chunked(dtype: torch.dtype) -> Callable[[np.ndarray, np.ndarray], torch.Tensor]:
    def scores(vectors: np.ndarray, queries: np.ndarray) -> torch.Tensor:
        q = torch.from_numpy(queries).to(dtype).T.contiguous()
        out = torch.empty((len(vectors), q.shape[1]), dtype=dtype)
        buffer = torch.empty((min(CHUNK_ROWS, len(vectors)), q.shape[0]), dtype=dtype)
        for start in range(0, len(vectors), CHUNK_ROWS):
            rows = _tensor(vectors[start:start + CHUNK_ROWS])
            chunk = buffer[:len(rows)]
            chunk.copy_(rows)
            torch.mm(chunk, q, out=out[start:start + len(rows)])
        return out
    return scores


@dataclass(frozen=True)
class Kernel:
    name: str
    scores: Callable[[np.ndarray, np.ndarray], torch.Tensor]   # (vectors [N, D] fp16, queries [B, D] fp32) -> [N, B]
    available: Callable[[frozenset[str]], bool]


KERNELS: dict[str, Kernel] = {
    "fp16-matmul": Kernel("fp16-matmul", _scores_fp16, has_native_fp16),
    "fp16-gemv": Kernel("fp16-gemv", _scores_gemv, lambda flags: "f16c" in flags),
    "bf16-matmul": Kernel("bf16-matmul", _chunked(torch.bfloat16), lambda flags: "amx_bf16" in flags),
    "fp32-chunked": Kernel("fp32-chunked", _chunked(torch.float32), lambda flags: True),
}


def choose_kernel(batch: int, flags: frozenset[str] | None = None) -> Kernel:
    """fp16 matmul where the CPU does fp16 natively (any batch: it reads the rows once, as they are);
    else for one query the fp16 gemv (F16C widening, fp32 sums), for batches bf16 where AMX does it
    (compute-bound: bf16 tiles), else fp32 on converted chunks."""
    flags = cpu_flags() if flags is None else flags
    if has_native_fp16(flags):
        return KERNELS["fp16-matmul"]
    if batch == 1 and KERNELS["fp16-gemv"].available(flags):
        return KERNELS["fp16-gemv"]
    if batch > 1 and KERNELS["bf16-matmul"].available(flags):
        return KERNELS["bf16-matmul"]
    return KERNELS["fp32-chunked"]


def exact_rescore(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact fp32 scores of candidate ``rows`` [B, C] (-1 = none); the best ``k`` per query, best first.

    Ties are broken by row number, as a stable brute-force sort does."""
    b = rows.shape[0]
    table = _tensor_view(vectors)
    top_scores = np.full((b, k), -np.inf, dtype=np.float32)
    top_rows = np.full((b, k), -1, dtype=np.int64)
    for i in range(b):
        cand = np.unique(rows[i][rows[i] >= 0])       # sorted: file order for memory-mapped rows, row tie-break
        if not len(cand):
            continue
        s = _rescore_rows(table, cand, np.ascontiguousarray(queries[i], dtype=np.float32))
        order = np.argsort(-s, kind="stable")[:k]
        top_scores[i, :len(order)] = s[order]
        top_rows[i, :len(order)] = cand[order]
    return top_scores, top_rows


def _tensor_view(vectors: np.ndarray) -> torch.Tensor:
    """``vectors`` as a torch tensor over the same memory, no copy (torch warns that a read-only memory
    map is not writable; it is only read here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(vectors)


def _rescore_rows(table: torch.Tensor, cand: np.ndarray, query: np.ndarray) -> np.ndarray:
    """fp32 dot products of the rows ``cand`` of the fp16 ``table`` [N, D] with ``query`` [D].

    torch gathers the rows on its threads and widens them (F16C; numpy's fp16 cast is scalar, 2-3x
    slower). The gather is what takes the time: a few hundred random 1 KB rows, each a wait on memory,
    which two threads wait for side by side; it helps while torch's threads are awake (queries back to
    back), not when they sleep between queries (OMP_WAIT_POLICY=PASSIVE). Measured with
    eval/bench_search_ann.py; see docs/search_performance.md."""
    rows = torch.index_select(table, 0, torch.from_numpy(cand))
    return torch.mv(rows.float(), torch.from_numpy(query)).numpy()


BLOCK = 64   # candidate pre-selection: rows are grouped in blocks of this many, blocks ranked by their best score


def top_candidates(scores: torch.Tensor, count: int) -> np.ndarray:
    """Rows [B, <=count + tail] that include the ``count`` best of each column of ``scores`` [N, B].

    A full top-k over N scores per query costs as much as the scan itself for a batch. Instead,
    every block of BLOCK rows is summarised by its best score; a row among a column's ``count``
    best lies in a block whose best is at least that column's count-th score, and there are at
    most ``count`` such blocks, so the ``count`` best blocks hold every wanted row (ties aside,
    which the exact re-rank sorts out). The rows after the last full block are always kept.
    """
    n, b = scores.shape
    full = (n // BLOCK) * BLOCK
    tail = torch.arange(full, n).expand(b, n - full)
    if full == 0 or n // BLOCK <= count:
        return torch.topk(scores.T.float(), min(n, count), dim=1).indices.numpy()
    best = scores[:full].view(n // BLOCK, BLOCK, b).amax(dim=1)                 # [blocks, B]
    blocks = torch.topk(best.T.float(), count, dim=1).indices                    # [B, count]
    rows = (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).reshape(b, -1)     # [B, count * BLOCK]
    picked = torch.gather(scores.T, 1, rows) if b > 1 else scores[rows[0], 0][None]
    keep = torch.topk(picked.float(), count, dim=1).indices
    rows = torch.gather(rows, 1, keep)
    return torch.cat([rows, tail], dim=1).numpy()


def search(vectors: np.ndarray, queries: np.ndarray, k: int, kernel: Kernel | str | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores [B, k] fp32, rows [B, k]) of fp16 ``vectors`` for fp32 ``queries``."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = len(vectors)
    k = max(1, min(int(k), n))
    kernel = KERNELS[kernel] if isinstance(kernel, str) else kernel or choose_kernel(len(queries))
    count = min(n, RERANK_FACTOR * k + 8)
    # scores [rows, B] are held for SCAN_ROWS rows at a time (100M x 256 queries would be 51 GB at once)
    step = max(SCAN_ROWS // max(1, len(queries)), count)
    parts = []
    for start in range(0, n, step):
        block = vectors[start:start + step]
        scores = kernel.scores(block, queries)                     # [rows, B] low precision
        parts.append(top_candidates(scores, min(len(block), count)) + start)
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return exact_rescore(vectors, queries, rows, k)
