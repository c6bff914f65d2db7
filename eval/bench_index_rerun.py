"""What a rerun of `zscir index` costs: unchanged, touched, moved, forced (content keys + hash cache).

    python eval/bench_index_rerun.py            # 2000 generated 48x48 PNGs, the shapes world's CLIP
    python eval/bench_index_rerun.py --n 500

Five builds of the same gallery in one run: the first (everything encoded), a rerun with
nothing changed (a stat per file), a rerun after touching every file (each re-read to hash it,
nothing encoded), a rerun after moving the folder (the same), and ``--force`` (everything
encoded again). Prints seconds, images encoded and files hashed for each, and the ratio
first build / each rerun.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, ImageDraw


def make_gallery(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        im = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(2):
            x, y = (int(v) for v in rng.integers(0, 36, 2))
            d.ellipse([x, y, x + 12, y + 12], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        im.save(folder / f"img{i:05d}.png")


@click.command()
@click.option("--n", default=2000, show_default=True, help="Gallery size.")
@click.option("--threads", default=2, show_default=True)
def main(n, threads):
    from zscir.index.gallery import build_index
    from zscir.world.shipped import shapes_backbone

    torch.set_num_threads(threads)
    bb = shapes_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, out = tmp / "images", tmp / "index"
        make_gallery(images, n)
        rows = []

        def build(label, folder, force=False):
            t0 = time.perf_counter()
            s = build_index(out, bb, images=folder, progress=False, force=force)
            rows.append((label, time.perf_counter() - t0, s["features"]["encoded"], s["features"]["hashed"]))

        build("first build", images)
        build("rerun, unchanged", images)
        for p in images.iterdir():
            os.utime(p)
        build("rerun, every file touched", images)
        moved = tmp / "moved" / "images"
        moved.parent.mkdir()
        shutil.move(images, moved)
        build("rerun, folder moved", moved)
        build("--force", moved, force=True)
    first = rows[0][1]
    print(f"{n} images, shapes-world CLIP, {threads} threads")
    print("| run | seconds | encoded | hashed | first / this |\n|---|---|---|---|---|")
    for label, sec, enc, hashed in rows:
        print(f"| {label} | {sec:.2f} | {enc} | {hashed} | {first / sec:.0f}x |")


if __name__ == "__main__":
    main()
