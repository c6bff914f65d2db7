"""BLIP-2 gallery encoding end to end (the feature store, as `zscir index` and `zscir eval` fill it) vs the
pure forward, as a ratio in one run (the CLIP counterpart: eval/bench_index_encode.py).

    python eval/bench_blip2_encode.py --model blip2:Salesforce/blip2-itm-vit-g --n 200
    python eval/bench_blip2_encode.py --tiny --n 64 --json-out /tmp/blip2.json    # a tiny random BLIP-2: runs only

The gallery: ``--n`` JPEGs of random shapes (sizes around 640x480). In one run, same batch and device:

- forward: ``Blip2Backbone.encode_image`` (vision encoder, Q-Former over the query tokens, projection) on the
  images decoded and preprocessed beforehand, measured before and after the store (their mean is the bound);
- store: ``FeatureStore.update`` into a fresh directory, end to end (listing, hashing, decoding in worker
  processes, forward, fp16 shards of Q x D rows, consolidation);
- ratio = store images/s / forward images/s (median over ``--rounds``).

``--tiny`` builds a random BLIP-2 as the tests do (tests/test_backbone_blip2.py): the ratio of such a model
says nothing about a real one (its forward is far cheaper than decoding); it checks that the script runs.
Prints JSON (``--json-out`` writes it too), with the CPU's name (zscir.utils.cpu).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout: this repository's zscir

from zscir.backbone.loading import load_backbone  # noqa: E402
from zscir.features import FeatureStore  # noqa: E402
from zscir.utils.cpu import cpu_name  # noqa: E402


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        size = (int(rng.integers(600, 681)), int(rng.integers(450, 511)))
        im = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = int(rng.integers(0, size[0] - 80)), int(rng.integers(0, size[1] - 80))
            draw.ellipse((x, y, x + int(rng.integers(20, 80)), y + int(rng.integers(20, 80))),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        paths.append(folder / f"img{i:04d}.jpg")
        im.save(paths[-1], quality=90)
    return paths


def tiny_model(folder: Path) -> str:
    """A tiny random BLIP-2 saved to ``folder`` by the tests' builder; its spec."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_backbone_blip2 import make_tiny_blip2

    return f"blip2:{make_tiny_blip2(folder)}"


def forward_rate(bb, tensors: torch.Tensor, batch: int) -> float:
    with torch.inference_mode():
        bb.encode_image(tensors[:batch])   # warm-up
        t = time.perf_counter()
        for s in range(0, len(tensors), batch):
            bb.encode_image(tensors[s:s + batch])
    return len(tensors) / (time.perf_counter() - t)


def store_rate(bb, paths: list[Path], batch: int, workers: int | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore.for_backbone(tmp, bb)
        t = time.perf_counter()
        report = store.update(bb, [(p.name, p) for p in paths], batch_size=batch, workers=workers, progress=False)
        seconds = time.perf_counter() - t
    if report.encoded != len(paths):
        raise SystemExit(f"the store encoded {report.encoded} of {len(paths)} images: {report.summary()}")
    return len(paths) / seconds


@click.command()
@click.option("--model", default=None, help="blip2:<Hugging Face id or folder> (in the cache: runs offline).")
@click.option("--tiny", is_flag=True, help="A tiny random BLIP-2 instead of --model (checks the script runs).")
@click.option("--n", default=200, show_default=True, help="Number of JPEGs.")
@click.option("--batch", default=32, show_default=True)
@click.option("--rounds", default=2, show_default=True, help="Forward/store rounds (median ratio).")
@click.option("--workers", type=int, default=None, help="Decoding processes of the store (default: its own).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(model, tiny, n, batch, rounds, workers, device, json_out):
    if bool(model) == tiny:
        raise click.UsageError("pass exactly one of --model blip2:... and --tiny")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = tiny_model(tmp / "tiny-blip2") if tiny else model
        bb = load_backbone(spec, device=device)
        paths = make_images(tmp / "images", n)
        tensors = torch.stack([bb.preprocess(Image.open(p)) for p in paths]).to(bb.device)
        rows = []
        for _ in range(rounds):
            before = forward_rate(bb, tensors, batch)
            store = store_rate(bb, paths, batch, workers)
            after = forward_rate(bb, tensors, batch)
            forward = (before + after) / 2
            rows.append({"forward_images_per_s": round(forward, 2), "store_images_per_s": round(store, 2),
                         "ratio": round(store / forward, 3)})
    report = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "device": str(bb.device),
              "model": spec if not tiny else "tiny random BLIP-2 (tests/test_backbone_blip2.py)",
              "identity": bb.identity, "query_tokens": bb.num_query_tokens, "embed_dim": bb.embed_dim,
              "image_size": bb.image_size, "images": n, "batch": batch, "rounds": rows,
              "ratio_median": statistics.median(r["ratio"] for r in rows)}
    print(json.dumps(report, indent=2))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
