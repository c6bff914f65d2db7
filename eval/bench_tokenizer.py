"""Tokenization: open_clip's tokenizer versus zscir's word-cached one (same ids), alone and in FTI pretraining.

    python eval/bench_tokenizer.py            # the default world's captions and its shipped CLIP

1. ms per caption over the world's unlabeled captions (the cached run is the second pass, as in epoch 2+);
2. FTI pretraining samples/s with each tokenizer, in one process on the same data (open_clip, cached,
   open_clip again, to show the drift of the machine), and the loss of each run, which must be equal.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch


def pretraining_rate(backbone, data, steps: int) -> tuple[float, float]:
    from zscir.training.pretrain import PretrainConfig, train

    with tempfile.TemporaryDirectory() as run:
        train(PretrainConfig(out=run, method="fti", batch_size=128, max_steps=steps + 2, save_every_steps=0, lr=1e-3),
              backbone, data, progress_bar=False)
        rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()][2:]
    return statistics.median(r["samples_per_s"] for r in rows), rows[-1]["loss"]


@click.command()
@click.option("--steps", type=int, default=12, show_default=True, help="Measured pretraining steps per run.")
def main(steps):
    from zscir.backbone.tokenize import WordCachedTokenizer
    from zscir.training.pretrain_data import build_pretraining_set
    from zscir.utils.paths import cache_dir
    from zscir.world.build import default_world
    from zscir.world.shipped import shapes_backbone

    torch.set_num_threads(2)
    backbone, world = shapes_backbone(), default_world()
    captions = [json.loads(line)["caption"] for line in (world / "unlabeled" / "captions.jsonl").read_text().splitlines()]
    fast = WordCachedTokenizer(backbone.tokenizer)
    start = time.perf_counter()
    reference = backbone.tokenizer(captions, context_length=backbone.context_length)
    full_ms = (time.perf_counter() - start) * 1e3 / len(captions)
    fast(captions, backbone.context_length)
    start = time.perf_counter()
    ours = fast(captions, backbone.context_length)
    cached_ms = (time.perf_counter() - start) * 1e3 / len(captions)
    assert torch.equal(ours, reference), "word-cached ids differ from open_clip's"
    print(f"{len(captions)} world captions: open_clip {full_ms:.3f} ms/caption, word-cached {cached_ms:.4f} ms/caption "
          f"({full_ms / cached_ms:.1f}x), identical ids")

    data, _ = build_pretraining_set(str(world / "unlabeled" / "images"), None, f"shapes-world:{world}", backbone,
                                    cache_dir() / "features", feature_cache="full", need_tokens=True,
                                    log=lambda *_: None)
    for name, tokenizer in [("open_clip", None), ("word-cached", fast), ("open_clip again", None)]:
        backbone._fast_tokenizer = tokenizer  # the switch Backbone.tokenize reads; private, for this comparison only
        rate, loss = pretraining_rate(backbone, data, steps)
        print(f"FTI pretraining, {name:16s} {rate:6.1f} samples/s (median of {steps} steps), loss {loss:.6f}")


if __name__ == "__main__":
    main()
