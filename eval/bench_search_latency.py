"""Query latency against gallery size on RANDOM unit vectors (a worst case with no cluster structure).

Superseded for approximate-index numbers by eval/bench_search_ann.py, which measures on a
clustered Gaussian mixture (like real CLIP features), with composed queries, the index kinds
zscir now builds (fp16 exact, IVF-SQ8/PQ + exact re-rank) and the bandwidth bound in the same
run. The recall figures below say nothing about real features; this script is kept for the
fp32-vs-fp16 exact comparison on random data.

    python eval/bench_search_latency.py                               # 10k, 100k, 1M x 768 (several minutes)
    python eval/bench_search_latency.py --sizes 10000,100000 --json out.json

Gallery: N random unit vectors of width 768 (fp32; the fp16 index stores them rounded).
Queries: independent random unit vectors, searched one at a time (an interactive user's
query), median latency over --queries queries.

Bandwidth bound: an exact scan must read every stored byte once, so its latency is at least
(bytes scanned) / (memory bandwidth). The bandwidth is measured in this run as a one-thread
copy of a 1 GiB buffer, counted STREAM-style (bytes read + bytes written per second): a
single query is scanned by one thread in faiss (it parallelises over queries), so the
one-thread figure is the relevant bound.

Approximate: the IVF index `zscir index` builds for this size (nlist by zscir's rule,
k-means on a sample), searched at several nprobe values; recall@50 = mean fraction of the
exact fp32 top-50 found in the approximate top-50. Random vectors have no cluster
structure, the worst case for IVF: the recall curve here is a lower bound for real
CLIP features (see `recall` in an index's index.json for those). HNSW (M=32, the
`--kind hnsw` index) is measured too, up to --hnsw-max vectors.
"""

from __future__ import annotations

import json
import statistics
import time

import click
import faiss
import numpy as np

from zscir.index import search_index


def unit_vectors(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best of ``repeats`` one-thread copies of ``nbytes``: (read + written bytes) / s."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def median_latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    index.search(queries[:1], k)  # warm the pages and caches
    times, rows = [], []
    for q in queries:
        t = time.perf_counter()
        _, r = index.search(q[None], k)
        times.append(time.perf_counter() - t)
        rows.append(r[0])
    return statistics.median(times), np.stack(rows)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return search_index.recall_at_k(found, exact)


def bench_size(n: int, d: int, n_queries: int, k: int, bandwidth: float, nprobes: list[int], seed: int,
               hnsw_max: int, ef_searches: list[int]) -> dict:
    gallery = unit_vectors(n, d, seed)
    queries = unit_vectors(n_queries, d, seed + 1)
    row: dict = {"n": n, "d": d}

    flat = faiss.IndexFlatIP(d)
    flat.add(gallery)
    lat32, exact = median_latency(flat, queries, k)
    bytes32 = n * d * 4
    row["fp32"] = {"ms": lat32 * 1e3, "bound_ms": bytes32 / bandwidth * 1e3, "bytes": bytes32}
    del flat

    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    sq.add(gallery)
    lat16, rows16 = median_latency(sq, queries, k)
    bytes16 = n * d * 2
    row["fp16"] = {"ms": lat16 * 1e3, "bound_ms": bytes16 / bandwidth * 1e3, "bytes": bytes16,
                   "recall@k_vs_fp32": recall(rows16, exact)}
    del sq

    t = time.perf_counter()
    built = search_index.KINDS["ivf"].build(gallery)
    build_s = time.perf_counter() - t
    nlist = faiss.extract_index_ivf(built.index).nlist
    curve = []
    for nprobe in [p for p in nprobes if p <= nlist]:
        search_index.set_search_knob(built, nprobe)
        lat, found = median_latency(built.index, queries, k)
        curve.append({"nprobe": nprobe, "ms": lat * 1e3, "recall@k": recall(found, exact)})
    row["ivf"] = {"nlist": nlist, "build_s": build_s, "curve": curve}
    del built

    if n <= hnsw_max:
        t = time.perf_counter()
        built = search_index.KINDS["hnsw"].build(gallery)
        build_s = time.perf_counter() - t
        curve = []
        for ef in ef_searches:
            search_index.set_search_knob(built, max(ef, k))
            lat, found = median_latency(built.index, queries, k)
            curve.append({"efSearch": max(ef, k), "ms": lat * 1e3, "recall@k": recall(found, exact)})
        row["hnsw"] = {"M": built.params["M"], "build_s": build_s, "curve": curve}
    return row


def print_row(row: dict, k: int) -> None:
    f32, f16 = row["fp32"], row["fp16"]
    print(f"\nN = {row['n']:,} x {row['d']}")
    print(f"  exact fp32  {f32['ms']:9.2f} ms   bound {f32['bound_ms']:8.2f} ms   ratio {f32['ms'] / f32['bound_ms']:5.2f}x")
    print(f"  exact fp16  {f16['ms']:9.2f} ms   bound {f16['bound_ms']:8.2f} ms   ratio {f16['ms'] / f16['bound_ms']:5.2f}x"
          f"   recall@{k} vs fp32 {f16['recall@k_vs_fp32']:.4f}   fp16/fp32 time {f16['ms'] / f32['ms']:.2f}")
    ivf = row["ivf"]
    print(f"  IVF{ivf['nlist']},Flat (built in {ivf['build_s']:.1f} s):")
    for p in ivf["curve"]:
        print(f"    nprobe {p['nprobe']:5d}  {p['ms']:9.2f} ms   recall@{k} {p['recall@k']:.3f}"
              f"   speed-up vs exact fp32 {f32['ms'] / p['ms']:6.1f}x")
    if "hnsw" in row:
        h = row["hnsw"]
        print(f"  HNSW{h['M']},Flat (built in {h['build_s']:.1f} s):")
        for p in h["curve"]:
            print(f"    efSearch {p['efSearch']:4d}  {p['ms']:9.2f} ms   recall@{k} {p['recall@k']:.3f}"
                  f"   speed-up vs exact fp32 {f32['ms'] / p['ms']:6.1f}x")


@click.command()
@click.option("--sizes", default="10000,100000,1000000", show_default=True, help="Gallery sizes, comma-separated.")
@click.option("--dim", default=768, show_default=True)
@click.option("--queries", "n_queries", default=50, show_default=True, help="Single queries timed per setting.")
@click.option("-k", "k", default=50, show_default=True)
@click.option("--nprobes", default="1,4,16,64,256,1024", show_default=True, help="IVF nprobe values to measure.")
@click.option("--hnsw-max", default=100_000, show_default=True,
              help="Also build and measure HNSW up to this size (its build is slow on 2 cores).")
@click.option("--ef-searches", default="64,256,1024", show_default=True, help="HNSW efSearch values to measure.")
@click.option("--threads", type=int, default=None, help="faiss OpenMP threads (default: all cores).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here.")
@click.option("--seed", default=0, show_default=True)
def main(sizes, dim, n_queries, k, nprobes, hnsw_max, ef_searches, threads, json_path, seed):
    if threads:
        faiss.omp_set_num_threads(threads)
    bandwidth = copy_bandwidth()
    print(f"measured one-thread copy bandwidth: {bandwidth / 1e9:.2f} GB/s (read + write); "
          f"faiss threads {faiss.omp_get_max_threads()}; {n_queries} single queries per setting, k = {k}")
    rows = []
    for n in (int(s) for s in sizes.split(",")):
        row = bench_size(n, dim, n_queries, k, bandwidth, [int(p) for p in nprobes.split(",")], seed,
                         hnsw_max, [int(e) for e in ef_searches.split(",")])
        print_row(row, k)
        rows.append(row)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"copy_bandwidth_bytes_per_s": bandwidth, "k": k, "queries": n_queries, "results": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
