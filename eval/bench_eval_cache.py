"""An evaluation with a cached gallery versus the first one that encodes it.

Run 1 evaluates a query model with an empty feature cache (the gallery is
encoded); run 2 repeats it on the cached gallery; run 3 evaluates *another*
model on the same backbone and gallery, which must re-encode nothing either.
Each is a whole `evaluate` call (loading the backbone and annotations, features,
queries, ranking, writing results), timed end to end.

    python eval/bench_eval_cache.py                 # the shapes world (val) with its shipped CLIP
    python eval/bench_eval_cache.py --synthetic     # a synthetic CIRCO-layout gallery, tiny random CLIP

Three runs: (1) empty cache, (2) the same evaluation again, (3) another model
on the cached gallery. Prints wall times, images encoded by each, and the
ratio run 1 / run 2 (target: >= 10x) and run 1 / run 3.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image


def synthetic_world(root: Path, n_images: int, n_queries: int, size: int, seed: int = 0) -> Path:
    """A CIRCO-layout dataset of random images (the layout the shapes world uses)."""
    rng = np.random.default_rng(seed)
    img_dir = root / "COCO2017_unlabeled" / "unlabeled2017"
    img_dir.mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "annotations").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for i in range(n_images):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(img_dir / f"{i:07d}.png")
        images.append({"id": i, "file_name": f"{i:07d}.png"})
    (root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    queries = []
    for q in range(n_queries):
        ref, *gt = (int(x) for x in rng.choice(n_images, 4, replace=False))
        queries.append({"id": q, "reference_img_id": ref, "target_img_id": gt[0], "gt_img_ids": gt,
                        "relative_caption": "is red and has two of them", "shared_concept": "a thing"})
    (root / "annotations" / "val.json").write_text(json.dumps(queries))
    return root


def tiny_weights(path: Path) -> str:
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone("zscir-tiny-test", None)
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    return str(path)


def timed_eval(request) -> tuple[float, dict]:
    from zscir.evaluation.run import evaluate

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(request)
    return time.perf_counter() - t0, results


def encoded(results: dict) -> tuple[int, int]:
    e = r = 0
    for m in results["models"]:
        for s in m["splits"].values():
            e += s["feature_cache"]["encoded"]
            r += s["feature_cache"]["reused"]
    return e, r


def shipped_clip_available() -> bool:
    from zscir.world.shipped import shapes_clip_weights

    return shapes_clip_weights().is_file()


@click.command()
@click.option("--synthetic", is_flag=True,
              help="A synthetic CIRCO-layout gallery and a tiny random CLIP instead of the shapes world "
                   "(the default when the shipped shapes CLIP is missing).")
@click.option("--images", "n_images", type=int, default=3000, show_default=True, help="Synthetic gallery size.")
@click.option("--queries", "n_queries", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Synthetic image side in pixels.")
@click.option("--models", default="image,sum", show_default=True,
              help="The model of runs 1 and 2, and the other model of run 3.")
def main(synthetic, n_images, n_queries, size, models):
    from zscir.evaluation.run import EvalRequest

    torch.set_num_threads(2)
    model, other = models.split(",")
    synthetic = synthetic or not shipped_clip_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if synthetic:
            root = synthetic_world(tmp / "world", n_images, n_queries, size)
            base = dict(benchmark="circo", root=root, splits=["val"], clip="zscir-tiny-test",
                        pretrained=tiny_weights(tmp / "tiny.safetensors"))
        else:
            base = dict(benchmark="shapes", splits=["val"])   # the default world and its shipped CLIP
        runs = []
        for n, (label, name) in enumerate((("1: empty cache", model), ("2: cached, same model", model),
                                           ("3: cached, other model", other))):
            req = EvalRequest(**base, models=[name], cache_root=tmp / "cache", out_dir=tmp / f"run{n}",
                              progress=False)
            seconds, results = timed_eval(req)
            runs.append((label, name, seconds, *encoded(results), results))
    first = runs[0][5]["models"][0]
    split_name, split = next(iter(first["splits"].items()))
    print(f"{split_name}: gallery of {split['gallery']} images, {split['queries']} queries, "
          f"backbone {first['backbone']}")
    for label, name, seconds, enc, reused, _ in runs:
        print(f"run {label:24s} model={name:6s} {seconds:7.2f} s   encoded {enc:6d}  reused {reused:6d}")
    ratio = runs[0][2] / runs[1][2]
    print(f"speed-up of the second evaluation (cached gallery): {ratio:.1f}x  "
          f"(target >= 10x: {'PASS' if ratio >= 10 else 'FAIL'})")
    print(f"run 1 / run 3 (another model on the cached gallery, its own query encoding included): "
          f"{runs[0][2] / runs[2][2]:.1f}x")


if __name__ == "__main__":
    main()
