"""What checking an index's files on open costs: open time with and without the check, as a ratio.

Builds a 100k x 512 exact index from random unit vectors (fp16, as `zscir index` writes it; the
feature store is not needed to open an index) with realistic ids, paths and content keys, then
times ``GalleryIndex.open`` with the check (sizes, the ids file's sha256, crc32 per 64 MiB block of
the vectors) and with ``check_on_open`` replaced by a no-op. Warm page cache; median of the runs.

    python eval/bench_index_open.py [--n 100000] [--d 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import zscir.index.gallery as gallery
from zscir.index import search_index
from zscir.index.index_files import FORMAT, FORMAT_VERSION, record_files
from zscir.utils.atomic import atomic_write_json


def write_index(root: Path, n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    built, _ = search_index.build(rng.standard_normal((n, d), dtype=np.float32), kind="flat")
    files = {"ids": "ids.g000001.json", "vectors": "vectors.g000001.npy"}
    np.save(root / files["vectors"], built.vectors)
    ids = [f"photos/2024/{i // 1000:03d}/IMG_{i:07d}.jpg" for i in range(n)]
    atomic_write_json(root / files["ids"], {"ids": ids, "paths": [f"/data/{i}" for i in ids],
                                           "keys": [f"sha256:{i:064x}" for i in range(n)], "realpaths": [None] * n},
                      indent=None)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": 1, "files": files,
            **record_files(root, files), "backbone": {"model": "bench"}, "preprocess": "targetpad",
            "count": n, "kind": built.kind, "params": built.params, "recall": {"k": 50, "value": 1.0}}
    atomic_write_json(root / "index.json", meta)


def time_open(root: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        gallery.GalleryIndex.open(root)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zscir-bench-open-") as tmp:
        root = Path(tmp)
        write_index(root, args.n, args.d)
        gallery.GalleryIndex.open(root)  # warm the page cache
        checked = time_open(root, args.runs)
        real = gallery.check_on_open
        gallery.check_on_open = lambda root, meta: None
        try:
            unchecked = time_open(root, args.runs)
        finally:
            gallery.check_on_open = real
        sizes = {p.name: p.stat().st_size for p in root.iterdir()}
    print(json.dumps({"n": args.n, "d": args.d, "files_bytes": sizes, "open_checked_s": round(checked, 4),
                      "open_unchecked_s": round(unchecked, 4), "ratio": round(checked / unchecked, 2)}, indent=2))


if __name__ == "__main__":
    main()
