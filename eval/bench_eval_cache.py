"""An evaluation with a cached gallery versus the first one that encodes it.

Run 1 evaluates one query model with an empty feature cache (the gallery and
references are encoded); run 2 evaluates *another* model on the same backbone
and gallery, which must re-encode nothing. Both are whole `evaluate` calls
(loading, features, queries, ranking, writing results), timed end to end.

    python eval/bench_eval_cache.py                       # synthetic CIRCO-layout gallery, tiny random CLIP
    python eval/bench_eval_cache.py --images 5000         # a bigger gallery
    python eval/bench_eval_cache.py --shapes              # the shapes world with its shipped CLIP

Prints both wall times, the images encoded by each, and the ratio (target: >= 10x).
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


@click.command()
@click.option("--images", "n_images", type=int, default=3000, show_default=True, help="Synthetic gallery size.")
@click.option("--queries", "n_queries", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Synthetic image side in pixels.")
@click.option("--shapes", is_flag=True, help="Use the shapes world and its shipped CLIP instead.")
@click.option("--models", default="image,sum", show_default=True, help="First-run model, second-run model.")
def main(n_images, n_queries, size, shapes, models):
    from zscir.evaluation.run import EvalRequest

    torch.set_num_threads(2)
    first_model, second_model = models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if shapes:
            base = dict(benchmark="shapes", splits=["val"])
        else:
            root = synthetic_world(tmp / "world", n_images, n_queries, size)
            base = dict(benchmark="circo", root=root, splits=["val"], clip="zscir-tiny-test",
                        pretrained=tiny_weights(tmp / "tiny.safetensors"))
        runs = []
        for n, model in enumerate((first_model, second_model)):
            req = EvalRequest(**base, models=[model], cache_root=tmp / "cache", out_dir=tmp / f"run{n}",
                              progress=False)
            seconds, results = timed_eval(req)
            runs.append((model, seconds, *encoded(results), results))
    gallery = runs[0][4]["models"][0]["splits"][runs[0][4]["splits"][0]]["gallery"]
    print(f"gallery: {gallery} images, {runs[0][4]['models'][0]['backbone']}")
    for label, (model, seconds, enc, reused, _) in zip(("first (empty cache)", "second (cached)"), runs):
        print(f"{label:20s} model={model:6s} {seconds:7.2f} s   encoded {enc:6d}  reused {reused:6d}")
    ratio = runs[0][1] / runs[1][1]
    print(f"speed-up of the cached run: {ratio:.1f}x  (target >= 10x: {'PASS' if ratio >= 10 else 'FAIL'})")


if __name__ == "__main__":
    main()
