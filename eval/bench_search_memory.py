"""Memory per image of an opened index's row data (ids, paths, content keys and their lookups), old vs new.

    python eval/bench_search_memory.py --n 1000000

Old: Python lists of ids/paths/keys plus dicts id -> row, realpath -> row, key -> rows (what
GalleryIndex/Retriever held before) and realpath() per image at load. New: zscir.index.rows
StringColumn + Lookup (paths resolved at build time). Measured as the growth of the
process's resident memory, beside the fp16 vector minimum (2 * d bytes per image).
"""

from __future__ import annotations

import gc
import json
import os
import time

import click

from zscir.index.rows import Lookup, StringColumn


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


@click.command()
@click.option("--n", default=1_000_000, show_default=True)
@click.option("--dim", default=512, show_default=True)
@click.option("--realpath-sample", default=20_000, show_default=True, help="Images whose realpath() is timed.")
def main(n, dim, realpath_sample):
    def rows():
        ids = [f"shard{i // 10000:05d}/img_{i:09d}.jpg" for i in range(n)]
        paths = [f"/data/gallery/{i}" for i in ids]
        keys = [f"{(i * 2654435761) % (1 << 64):016x}" * 4 for i in range(n)]  # 64 hex chars like a sha256
        return ids, paths, keys

    gc.collect()
    base = rss()
    ids, paths, keys = rows()
    row_of_id = {i: r for r, i in enumerate(ids)}
    row_of_path = {p: r for r, p in enumerate(paths)}
    rows_of_key = {}
    for r, k in enumerate(keys):
        rows_of_key.setdefault(k, []).append(r)
    old = rss() - base
    del ids, paths, keys, row_of_id, row_of_path, rows_of_key
    gc.collect()
    base = rss()
    ids, paths, keys = rows()
    cols = StringColumn(ids), StringColumn(paths), StringColumn(keys)
    del ids, paths, keys
    gc.collect()
    looks = Lookup(cols[1]), Lookup(cols[2]), Lookup(cols[0])
    new = rss() - base
    tmp = [f"/tmp/{i}" for i in range(realpath_sample)]
    t = time.perf_counter()
    for p in tmp:
        os.path.realpath(p)
    realpath_per_million_s = (time.perf_counter() - t) / realpath_sample * 1e6
    out = {"n": n, "fp16_vector_bytes_per_image": 2 * dim,
           "old_row_bytes_per_image": old / n, "new_row_bytes_per_image": new / n,
           "new_columns_nbytes_per_image": sum(c.nbytes for c in cols) / n,
           "new_lookups_nbytes_per_image": sum(x.nbytes for x in looks) / n,
           "old_total_over_fp16_min": (old / n + 2 * dim * 2) / (2 * dim),  # + the second fp16/fp32 copy it held
           "new_total_over_fp16_min": (new / n + 2 * dim) / (2 * dim),
           "realpath_s_per_million_images_at_load_old": realpath_per_million_s}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
