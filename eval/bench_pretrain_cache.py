"""Pretraining throughput with the feature cache versus recomputing image features every step.

Same backbone, same data, same mapping network; only where the image features
come from differs:
  cached:    global features + tokens read from the fp16 feature store
  recompute: one visual pass per image per step (what the official code does)

    python eval/bench_pretrain_cache.py                      # shapes world + its shipped CLIP
    python eval/bench_pretrain_cache.py --images DIR --captions FILE --clip ViT-B-32 --pretrained openai

Prints samples/s of both and their ratio (median over the measured steps, after warm-up).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import click
import torch


def measure(mode, images, captions, captioner, backbone, cache_root, steps, batch_size, method, warmup):
    from zscir.training.pretrain import PretrainConfig, train
    from zscir.training.pretrain_data import build_pretraining_set

    data, _ = build_pretraining_set(images, captions, captioner, backbone, cache_root, feature_cache=mode,
                                    need_tokens=method == "fti", log=lambda *_: None)
    with tempfile.TemporaryDirectory() as run:
        cfg = PretrainConfig(out=run, method=method, epochs=10**6, batch_size=batch_size, max_steps=warmup + steps,
                             save_every_steps=0, lr=1e-4)
        train(cfg, backbone, data, progress_bar=False)
        rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()][warmup:]
    return statistics.median(r["samples_per_s"] for r in rows), statistics.median(r["data_wait_s"] for r in rows)


@click.command()
@click.option("--images", default=None)
@click.option("--captions", default=None)
@click.option("--captioner", default="blip")
@click.option("--clip", "clip_name", default=None)
@click.option("--pretrained", default=None)
@click.option("--method", type=click.Choice(["fti", "single"]), default="fti")
@click.option("--steps", type=int, default=10)
@click.option("--warmup", type=int, default=2)
@click.option("--batch-size", type=int, default=64)
def main(images, captions, captioner, clip_name, pretrained, method, steps, warmup, batch_size):
    from zscir.backbone import load_backbone

    torch.set_num_threads(2)
    if clip_name is None:
        from zscir.world.shipped import shapes_backbone

        backbone = shapes_backbone()
    else:
        backbone = load_backbone(clip_name, pretrained)
    if images is None:
        from zscir.world.build import default_world

        world = default_world()
        images, captioner = str(world / "unlabeled" / "images"), f"shapes-world:{world}"
    with tempfile.TemporaryDirectory() as cache:
        cached, cached_wait = measure("full", images, captions, captioner, backbone, cache, steps, batch_size, method, warmup)
        recompute, recompute_wait = measure("off", images, captions, captioner, backbone, cache, steps, batch_size, method, warmup)
    print(f"backbone {backbone.identity_str}, method {method}, batch {batch_size}, {steps} steps after {warmup} warm-up")
    print(f"cached features:     {cached:8.1f} samples/s (feature read {cached_wait * 1000:.1f} ms/step)")
    print(f"recomputed features: {recompute:8.1f} samples/s (image load + visual pass {recompute_wait * 1000:.1f} ms/step)")
    print(f"speed-up from the cache: {cached / recompute:.2f}x")


if __name__ == "__main__":
    main()
