"""Search on realistic (clustered) vectors: latency and recall of exact and approximate indexes, in one run.

    python eval/bench_search_ann.py --sizes 1000000 --json eval/results/search_ann_1m.json --md eval/results/search_ann_1m.md
    python eval/bench_search_ann.py --sizes 10000000 --kinds pqfs --workdir /tmp/zscir_bench   # 10 GB on disk

Gallery: a Gaussian mixture shaped like CLIP features (not random vectors, which have no
cluster structure and make every IVF look broken): --clusters anisotropic clusters of
Zipf-distributed sizes; cluster c draws x = mu_c + (s_c * z) R, with per-cluster scales
s_c spread over a decade and one random rotation R (so the anisotropy is not axis-aligned),
then normalised; the vectors are written in fp16 to a memory-mapped file in chunks.
Queries: "plain" = fresh draws from the mixture (not in the gallery); "composed" = the
normalised sum of two independent plain ones (what a reference + modification query looks
like to the index). Recall@k = mean fraction of the exact top-k (exact fp32 inner product
of the stored fp16 vectors) found in the index's top-k. Latency: median over single queries
(one at a time, an interactive user's query), all faiss/torch threads.

Also in the same run: exact search (zscir.index.kernels, fp16 vectors) for one query and for
a batch of 16 against the memory-bandwidth bound, measured as a streaming read of the same
bytes (torch sum of the fp16 array) and as a one-thread copy.

OMP_WAIT_POLICY defaults to PASSIVE here: on a shared, oversubscribed machine OpenMP's
spin-waiting makes faiss's k-means 20-100x slower (measured: PQ training 7 s -> 0.3 s).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from zscir.index import kernels, search_index  # noqa: E402
from zscir.index.autotune import fastscan_bytes, fastscan_m  # noqa: E402


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


class Mixture:
    def __init__(self, d: int, clusters: int, seed: int, spread: float):
        rng = np.random.default_rng(seed)
        self.d, self.clusters = d, clusters
        mu = rng.standard_normal((clusters, d)).astype(np.float32)
        self.mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
        # per-cluster anisotropic scales: log-uniform over a decade, a few strong directions per cluster
        self.scale = (spread / np.sqrt(d) * np.exp(rng.uniform(np.log(0.3), np.log(3.0), (clusters, d)))).astype(np.float32)
        self.rot = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        w = 1.0 / np.arange(1, clusters + 1) ** 0.7
        self.weights = rng.permutation(w / w.sum())

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.choice(self.clusters, n, p=self.weights)
        z = rng.standard_normal((n, self.d), dtype=np.float32) * self.scale[c]
        x = self.mu[c] + z @ self.rot
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def gallery_file(path: Path, n: int, mix: Mixture, seed: int, chunk: int = 200_000) -> np.ndarray:
    """fp16 [n, d] on disk (reused when present with the same shape), memory-mapped."""
    if path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, mix.d):
            return arr
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, mix.d))
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n, chunk):
        out[start:start + chunk] = mix.draw(min(chunk, n - start), rng)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def median_ms(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    (ms,), (rows,) = interleaved_median_ms([search], queries, k)
    return ms, rows


def interleaved_median_ms(searches: list, queries: np.ndarray, k: int) -> tuple[list[float], list[np.ndarray]]:
    """Median single-query latency of each search, query by query in turn (the order alternating), so
    that the machine's drift weighs on all of them alike; and the rows each found."""
    for search in searches:
        search(queries[:1], k)
    times = [[] for _ in searches]
    rows = [[] for _ in searches]
    for i, q in enumerate(queries):
        order = range(len(searches)) if i % 2 == 0 else reversed(range(len(searches)))
        for j in order:
            t = time.perf_counter()
            r = searches[j](q[None], k)[1]
            times[j].append(time.perf_counter() - t)
            rows[j].append(r[0])
    return [statistics.median(t) * 1e3 for t in times], [np.stack(r) for r in rows]


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return search_index.recall_at_k(found[:, :k], exact[:, :k])


def stream_read_s(vectors: np.ndarray, repeats: int = 3) -> float:
    """Best time to read every byte of ``vectors`` once: the fastest of a numpy integer sum over the
    bytes and a torch fp16 sum (both memory-bound reads, all threads torch has)."""
    flat = np.asarray(vectors).reshape(-1).view(np.uint64)
    t16 = torch.from_numpy(np.asarray(vectors))
    best = float("inf")
    for read in (lambda: flat.sum(), lambda: t16.sum()):
        for _ in range(repeats):
            t = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def curve(name, index, knob_set, knobs, queries, exact, k, reranked_vectors=None, factor=search_index.RERANK_FACTOR,
          fp32_centroids=None):
    """Latency and recall per knob value; with ``fp32_centroids`` (a second copy of ``index`` searching
    with fp32 centroids) both are timed query by query in turn and the copy's rows go under
    ``"fp32_centroids"``."""
    points = []
    indexes = [index] if fp32_centroids is None else [index, fp32_centroids]
    searches = [i.search if reranked_vectors is None else search_index.Reranked(i, reranked_vectors, factor).search
                for i in indexes]
    for value in knobs:
        for i in indexes:
            knob_set(i, value)
        row = {"knob": value}
        for qname, q in queries.items():
            ms, found = interleaved_median_ms(searches, q, k)
            stats = [{"ms": t, "recall@10": recall(f, exact[qname], 10), "recall@50": recall(f, exact[qname], 50)}
                     for t, f in zip(ms, found)]
            row[qname] = stats[0]
            if fp32_centroids is not None:
                row.setdefault("fp32_centroids", {})[qname] = stats[1]
        points.append(row)
        for label, r in (("", row), (" (fp32 centroids)", row.get("fp32_centroids"))):
            if r:
                print(f"  {name + label:44s} {value:5d}  " + "  ".join(
                    f"{qn}: {r[qn]['ms']:7.3f} ms r@10 {r[qn]['recall@10']:.3f} r@50 {r[qn]['recall@50']:.3f}"
                    for qn in queries), flush=True)
    return points


def ivf_index(spec: str, vectors: np.ndarray, nlist: int, train_per_list: int, quantizer=None
              ) -> tuple[faiss.Index, float]:
    """Train (on a sample; the coarse quantizer of an earlier index is reused when given) and fill chunk-wise."""
    t = time.perf_counter()
    d = vectors.shape[1]
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), min(len(vectors), train_per_list * nlist),
                                                   replace=False))
    sample = np.asarray(vectors[rows], dtype=np.float32)
    if quantizer is None:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    else:
        code = spec.split(",")[1]
        if code == "Flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        elif code == "SQ8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        elif code.endswith("x4fs"):
            index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, int(code[2:-4]), 4, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, nlist, int(code[2:]), 8, faiss.METRIC_INNER_PRODUCT)
    threads = faiss.omp_get_max_threads()
    if ",PQ" in spec and not spec.endswith("fs"):  # 8-bit PQ k-means: 64 points per centroid, one thread
        faiss.downcast_index(faiss.extract_index_ivf(index)).pq.cp.max_points_per_centroid = 64
        faiss.omp_set_num_threads(1)
    index.train(sample)
    faiss.omp_set_num_threads(threads)
    for start in range(0, len(vectors), 262_144):
        index.add(np.asarray(vectors[start:start + 262_144], dtype=np.float32))
    return index, time.perf_counter() - t


def bench(n, d, clusters, kinds, n_queries, n_latency, k, workdir, seed, nprobes, efs, hnsw_n, pq_m, mmap,
          train_per_list, reuse_index=False, fp32_centroids_too=False):
    mix = Mixture(d, clusters, seed, spread=1.0)
    t = time.perf_counter()
    vectors = gallery_file(Path(workdir) / f"gmm_{n}x{d}_c{clusters}_s{seed}.npy", n, mix, seed)
    gen_s = time.perf_counter() - t
    in_memory = n * d * 2 <= 4 * 2 ** 30
    if in_memory:
        vectors = np.ascontiguousarray(vectors)  # 1M x 512 fp16 = 1 GB: held in memory like an opened index
    rng = np.random.default_rng(seed + 7)
    plain = mix.draw(n_queries, rng).astype(np.float32)
    composed = plain + mix.draw(n_queries, rng)
    composed = (composed / np.linalg.norm(composed, axis=1, keepdims=True)).astype(np.float32)
    queries = {"plain": plain[:n_latency], "composed": composed[:n_latency]}
    t = time.perf_counter()
    exact = {name: kernels.search(vectors, q, 50)[1] for name, q in queries.items()}
    exact_batch_s = time.perf_counter() - t
    out = {"n": n, "d": d, "clusters": clusters, "generate_s": gen_s, "vectors_in_memory": in_memory,
           "fp16_bytes": n * d * 2, "fp32_flat_bytes": n * d * 4, "methods": {}}
    print(f"\nN = {n:,} x {d}, {clusters} clusters (generated/reused in {gen_s:.0f} s); exact ground truth "
          f"for {2 * n_latency} queries in {exact_batch_s:.1f} s; RSS {rss_gib():.2f} GiB", flush=True)

    # ---- exact search against the memory bound (same run, same bytes)
    if "flat" in kinds:
        read_s = stream_read_s(vectors) if in_memory else float("nan")
        bw = copy_bandwidth()
        one_ms, found = median_ms(lambda q, kk: kernels.search(vectors, q, kk), queries["composed"][:20], k)
        b16 = queries["composed"][:16]
        kernels.search(vectors, b16, k)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            kernels.search(vectors, b16, k)
            times.append(time.perf_counter() - t)
        batch_ms = min(times) * 1e3
        out["exact"] = {"kernel_single": kernels.choose_kernel(1).name, "kernel_batch16": kernels.choose_kernel(16).name,
                        "single_ms": one_ms, "batch16_ms": batch_ms,
                        "qps_single": 1e3 / one_ms, "qps_batch16": 16e3 / batch_ms,
                        "batch16_qps_over_single": (16e3 / batch_ms) / (1e3 / one_ms),
                        "stream_read_ms": read_s * 1e3, "single_over_stream_read": one_ms / (read_s * 1e3),
                        "copy_bandwidth_GBps_one_thread": bw / 1e9,
                        "copy_bound_ms": n * d * 2 / bw * 1e3, "single_over_copy_bound": one_ms / (n * d * 2 / bw * 1e3)}
        e = out["exact"]
        print(f"  exact fp16 ({e['kernel_single']}): one query {one_ms:.1f} ms; streaming read of the same "
              f"{n * d * 2 / 1e9:.2f} GB {e['stream_read_ms']:.1f} ms -> {e['single_over_stream_read']:.2f}x; "
              f"one-thread copy bound {e['copy_bound_ms']:.1f} ms -> {e['single_over_copy_bound']:.2f}x; "
              f"batch of 16 {batch_ms:.1f} ms = {e['batch16_qps_over_single']:.1f}x the QPS of single queries",
              flush=True)

    nlist = search_index.ivf_nlist(n)

    def ivf_knob(index, value):
        faiss.extract_index_ivf(index).nprobe = int(value)

    probes = [p for p in nprobes if p <= nlist]
    specs = {"ivf": f"IVF{nlist},Flat", "sq8": f"IVF{nlist},SQ8", "pq": f"IVF{nlist},PQ{pq_m}",
             "pqfs": f"IVF{nlist},PQ{fastscan_m(d)}x4fs"}
    codes = {"ivf": 4 * d, "sq8": d, "pq": pq_m, "pqfs": fastscan_bytes(d)}
    factors = {"pqfs": search_index.KINDS["ivf-pqfs"].rerank_factor}
    quantizer = None
    for kind in ("ivf", "sq8", "pq", "pqfs"):
        if kind not in kinds:
            continue
        saved = Path(workdir) / f"{kind}_{n}.index"
        if reuse_index and saved.exists():   # the index an earlier run of this command built and saved
            index, build_s = faiss.read_index(str(saved)), None
            print(f"  {specs[kind]} read from {saved} (--reuse-index)", flush=True)
        else:
            index, build_s = ivf_index(specs[kind], vectors, nlist, train_per_list, quantizer)
        if quantizer is None:  # the same coarse k-means for every IVF kind: they differ only in their codes
            quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
            faiss.extract_index_ivf(index).own_fields = False
        resident = None
        if mmap or not in_memory:
            if build_s is not None:
                faiss.write_index(index, str(saved))
            del index
            index = faiss.read_index(str(saved), faiss.IO_FLAG_MMAP)
        code = codes[kind]
        if build_s is not None:
            print(f"  {specs[kind]} built in {build_s:.0f} s ({code} B/vector codes)", flush=True)
        m = {"factory": specs[kind], "build_s": build_s, "train_points": min(n, train_per_list * nlist), "code_bytes_per_vector": code,
             "index_bytes": n * (code + 8) + nlist * d * 4}
        search_index.search_with_fp16_centroids(index)   # as zscir index leaves it
        twin = None
        if fp32_centroids_too and mmap:
            twin = faiss.read_index(str(saved), faiss.IO_FLAG_MMAP)   # as assigned: fp32 centroids
        if kind in ("sq8", "pq", "pqfs"):
            factor = factors.get(kind, search_index.RERANK_FACTOR)
            m["rerank_factor"] = factor
            m["reranked"] = curve(specs[kind] + f" + re-rank {factor}k", index, ivf_knob, probes, queries,
                                  exact, k, reranked_vectors=vectors, factor=factor, fp32_centroids=twin)
        if kind not in ("pq", "pqfs"):
            m["curve"] = curve(specs[kind], index, ivf_knob, probes, queries, exact, k, fp32_centroids=twin)
        del twin
        resident = rss_gib()
        m["rss_gib_after_queries"] = resident
        out["methods"][kind] = m
        del index

    if "hnsw" in kinds:
        sub = np.ascontiguousarray(vectors[:hnsw_n])
        sub_exact = {name: kernels.search(sub, q, 50)[1] for name, q in queries.items()}
        t = time.perf_counter()
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        for start in range(0, len(sub), 100_000):
            index.add(np.asarray(sub[start:start + 100_000], dtype=np.float32))
        build_s = time.perf_counter() - t
        print(f"  HNSW32 (efConstruction 40) on the first {hnsw_n:,} vectors, built in {build_s:.0f} s", flush=True)
        out["methods"]["hnsw"] = {"n": hnsw_n, "build_s": build_s, "curve": curve(
            "HNSW32", index, lambda i, v: setattr(i.hnsw, "efSearch", int(v)), efs, queries, sub_exact, k)}
        del index
    out["rss_gib_end"] = rss_gib()
    return out


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(f"### {r['n']:,} x {r['d']} Gaussian mixture ({r['clusters']} anisotropic clusters)\n")
        if "exact" in r:
            e = r["exact"]
            lines += ["| exact (fp16 vectors) | ms | vs streaming read | vs 1-thread copy bound | QPS |",
                      "|---|---|---|---|---|",
                      f"| one query ({e['kernel_single']}) | {e['single_ms']:.1f} | {e['single_over_stream_read']:.2f}x "
                      f"| {e['single_over_copy_bound']:.2f}x | {e['qps_single']:.1f} |",
                      f"| batch of 16 ({e['kernel_batch16']}) | {e['batch16_ms']:.1f} | | | {e['qps_batch16']:.1f} "
                      f"({e['batch16_qps_over_single']:.1f}x) |", ""]
        lines += ["| index | knob | plain ms | plain R@10 | plain R@50 | composed ms | composed R@10 | composed R@50 |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, m in r["methods"].items():
            rerank = f" + re-rank {m.get('rerank_factor', search_index.RERANK_FACTOR)}k"
            rows = []
            for label, pts in (("", m.get("curve")), (rerank, m.get("reranked"))):
                for p in pts or []:
                    rows.append((label, p["knob"], p))
                    if "fp32_centroids" in p:
                        rows.append((label + " (fp32 centroids)", p["knob"], p["fp32_centroids"]))
            for label, knob, p in rows:
                name = (m.get("factory") or f"HNSW32 (first {m['n']:,})") + label
                knob = ("nprobe " if kind != "hnsw" else "efSearch ") + str(knob)
                lines.append(f"| {name} | {knob} | {p['plain']['ms']:.3f} | {p['plain']['recall@10']:.3f} | "
                             f"{p['plain']['recall@50']:.3f} | {p['composed']['ms']:.3f} | "
                             f"{p['composed']['recall@10']:.3f} | {p['composed']['recall@50']:.3f} |")
        lines.append("")
    return "\n".join(lines)


@click.command()
@click.option("--sizes", default="1000000", show_default=True, help="Gallery sizes, comma-separated.")
@click.option("--dim", default=512, show_default=True)
@click.option("--clusters", default=4096, show_default=True, help="Mixture components.")
@click.option("--kinds", default="flat,ivf,sq8,pq,pqfs,hnsw", show_default=True,
              help="flat (exact), ivf, sq8, pq (--pq-m bytes), pqfs (4-bit fast-scan PQ, d/4 bytes), hnsw.")
@click.option("--queries", "n_latency", default=100, show_default=True, help="Queries of each type (timed one by one).")
@click.option("-k", "k", default=50, show_default=True)
@click.option("--nprobes", default="4,8,16,32,64", show_default=True)
@click.option("--ef-searches", default="64,256,512", show_default=True)
@click.option("--hnsw-n", default=200_000, show_default=True, help="HNSW is built on this many of the vectors.")
@click.option("--pq-m", default=64, show_default=True, help="PQ code bytes.")
@click.option("--mmap/--no-mmap", default=True, show_default=True, help="Search IVF indexes read with IO_FLAG_MMAP.")
@click.option("--workdir", default="/tmp/zscir_bench", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--md", "md_path", type=click.Path(dir_okay=False))
@click.option("--train-per-list", default=32, show_default=True,
              help="k-means training points per IVF list (zscir index uses 64; 32 keeps this run short).")
@click.option("--seed", default=0, show_default=True)
@click.option("--fp32-centroids-too", is_flag=True,
              help="Also time each IVF index with fp32 coarse centroids (as assigned), query by query in turn with "
                   "the fp16 ones zscir index searches with (needs --mmap).")
@click.option("--reuse-index", is_flag=True,
              help="Search the IVF indexes an earlier run saved in --workdir instead of building them (build_s: null).")
def main(sizes, dim, clusters, kinds, n_latency, k, nprobes, ef_searches, hnsw_n, pq_m, mmap, train_per_list,
         workdir, json_path, md_path, seed, fp32_centroids_too, reuse_index):
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    env = {"cpu": cpu, "cores": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
           "torch_threads": torch.get_num_threads(), "avx512_fp16": kernels.has_native_fp16(),
           "load_average_at_start": os.getloadavg(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(env))
    results = []
    for n in (int(s) for s in sizes.split(",")):
        results.append(bench(n, dim, clusters, set(kinds.split(",")), n_latency, n_latency, k, workdir, seed,
                             [int(p) for p in nprobes.split(",")], [int(e) for e in ef_searches.split(",")],
                             min(hnsw_n, n), pq_m, mmap, train_per_list, reuse_index,
                             fp32_centroids_too))
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            with open(json_path, "w") as f:
                json.dump({"env": env, "k": k, "results": results}, f, indent=1)
        if md_path:
            Path(md_path).write_text(markdown(results))
    env["load_average_at_end"] = os.getloadavg()
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"env": env, "k": k, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
