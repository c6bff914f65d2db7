"""`zscir world train-backbone --precision`: training steps per second in bf16 vs fp32, and the loss each reaches.

    python eval/bench_train_backbone_precision.py                  # the default config's model, batch and loss
    python eval/bench_train_backbone_precision.py --steps 3 --rounds 1 --loss-steps 4 --num-scenes 512   # a smoke run
    python eval/bench_train_backbone_precision.py --json > bench.json

1. speed: the world CLIP's training step as ``train_backbone`` runs it (batch assembly from the
   pre-rendered uint8 images, both towers, CLIP's loss, backward, AdamW, with the text tower
   trainable as after ``text_lock_steps``), ``--warmup`` untimed steps then ``--steps`` timed
   ones per precision per round; the precisions alternate within each of ``--rounds`` rounds
   (fp32 first in odd rounds, bf16 first in even ones), so that the machine's drift falls on
   both; ratio = bf16 steps/s / fp32 steps/s of the same round; the median over rounds is the
   answer, with every round's pair beside it;
2. loss: ``train_backbone`` itself, ``--loss-steps`` steps of each precision from the same
   seed, scenes and batches (its own warmup and cosine over those steps, text tower locked
   for the default config's share of them): the loss of the first and last 20 steps, and the
   largest gap between the two histories;
3. budget: the steps bf16 runs in the time fp32 runs the shipped recipe's 1,700 (1,700 x ratio),
   which is what ``--steps`` of a bf16 run in the same budget can be.

The CPU must have native bf16 (AVX512-BF16 or AMX-BF16): elsewhere it is refused, as
``train-backbone --precision bf16`` is. Records the CPU's name, torch threads and the load
average before and after: a loaded machine's numbers are not the CPU's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.utils.cpu import cpu_flags, cpu_name
from zscir.world import train_backbone as tb
from zscir.world.train_precision import TRAIN_PRECISIONS, check_train_precision

SHIPPED_STEPS = tb.TrainConfig().steps


def fresh_model(cfg: tb.TrainConfig):
    """The model, seed and logit scale ``train_backbone`` starts from, all parameters trainable."""
    import open_clip

    from zscir.backbone import load_backbone

    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model)
    model = backbone.model.train().requires_grad_(True)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if (open_clip.get_model_config(cfg.model) or {}).get("vision_cfg", {}).get("pos_embed_type") == "sin_cos_2d":
        model.visual.positional_embedding.requires_grad_(False)
    return backbone, model


def timed_rounds(cfg: tb.TrainConfig, steps: int, warmup: int, rounds: int, log) -> list[dict]:
    from open_clip.loss import ClipLoss

    backbone, _ = fresh_model(cfg)
    scenes = tb.training_scenes(cfg.num_scenes, cfg.seed, cfg.twin_fraction, cfg.twin_kinds)
    images, tokens = tb.prepare_data(scenes, cfg.seed, backbone.image_size, cfg.model, cfg.captions_per_scene,
                                     backbone.context_length, cfg.render_workers, negative_kinds=cfg.text_negatives)
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)
    order = tb.batch_order(replace(cfg, steps=rounds * 2 * (warmup + steps)))
    variants = np.random.default_rng([cfg.seed, 0x50494B]).integers(cfg.captions_per_scene, size=order.shape)
    runs = {}
    for precision in TRAIN_PRECISIONS:
        _, model = fresh_model(cfg)
        optimizer = torch.optim.AdamW(tb.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        runs[precision] = (model, optimizer)
    loss_fn, at, results = ClipLoss(), 0, []
    for r in range(rounds):
        row = {"round": r + 1, "order": list(TRAIN_PRECISIONS if r % 2 == 0 else TRAIN_PRECISIONS[::-1])}
        for precision in row["order"]:
            model, optimizer = runs[precision]
            for i in range(warmup + steps):
                if i == warmup:
                    start = time.perf_counter()
                x, t, negatives = tb.batch_inputs(images, tokens, order[at], variants[at], mean, std, cfg)
                tb.optimizer_step(model, optimizer, tb.batch_loss(model, x, t, negatives, loss_fn, precision))
                at += 1
            row[f"{precision}_steps_per_s"] = round(steps / (time.perf_counter() - start), 4)
        row["ratio"] = round(row["bf16_steps_per_s"] / row["fp32_steps_per_s"], 3)
        log(f"round {r + 1}: fp32 {row['fp32_steps_per_s']:.3f} steps/s, bf16 {row['bf16_steps_per_s']:.3f} steps/s, "
            f"ratio {row['ratio']:.3f}")
        results.append(row)
    return results


def loss_runs(cfg: tb.TrainConfig, loss_steps: int, log) -> dict:
    lock = round(cfg.text_lock_steps * loss_steps / cfg.steps)  # the default config's share of locked steps
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in TRAIN_PRECISIONS:
            run = replace(cfg, steps=loss_steps, text_lock_steps=lock, warmup_steps=min(cfg.warmup_steps, loss_steps),
                          save_every=loss_steps, precision=precision)
            start = time.time()
            record = tb.train_backbone(run, Path(tmp) / f"{precision}.safetensors", Path(tmp) / precision,
                                       log=lambda m: None, progress=False)
            history = torch.load(Path(tmp) / precision / "state.pt", weights_only=True)["history"]
            out[precision] = {"first_loss": round(float(np.mean(history[:20])), 4), "final_loss": round(record["final_loss"], 4),
                              "history": history, "seconds": round(time.time() - start, 1)}
            log(f"{precision}: loss {out[precision]['first_loss']} (first 20 steps) -> {out[precision]['final_loss']} "
                f"(last 20) after {loss_steps} steps")
    out["largest_gap"] = round(max(abs(a - b) for a, b in zip(out["fp32"]["history"], out["bf16"]["history"])), 4)
    out["text_lock_steps"] = lock
    return out


@click.command()
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Timed steps per precision per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps before each timing.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds (fp32/bf16 order alternates).")
@click.option("--loss-steps", type=click.IntRange(min=0), default=200, show_default=True,
              help="train_backbone steps of each precision for the loss comparison (0: skip).")
@click.option("--num-scenes", type=click.IntRange(min=2), default=8192, show_default=True, help="Pre-rendered scenes (both parts).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Pairs per step [the default config's, 256].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only (the log goes to stderr).")
def main(steps, warmup, rounds, loss_steps, num_scenes, batch_size, as_json):
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    try:
        check_train_precision("bf16", "cpu")
        cfg = tb.TrainConfig(num_scenes=num_scenes, **({"batch_size": batch_size} if batch_size else {}))
    except ZscirError as e:
        sys.exit(f"error: {e}")
    torch.set_num_threads(cfg.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    log(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_start}")
    rounds_out = timed_rounds(cfg, steps, warmup, rounds, log)
    ratio = statistics.median(r["ratio"] for r in rounds_out)
    losses = loss_runs(cfg, loss_steps, log) if loss_steps else None
    result = {"cpu": cpu_name(), "native_bf16_flags": sorted(f for f in cpu_flags() if f.endswith("bf16")),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "config": {k: v for k, v in asdict(cfg).items() if k in ("model", "seed", "batch_size", "num_scenes",
                                                                        "captions_per_scene", "lr", "threads")},
              "steps": steps, "warmup": warmup, "rounds": rounds_out, "ratio_median": round(ratio, 3),
              "bf16_steps_in_the_time_of_fp32_shipped": round(SHIPPED_STEPS * ratio), "loss_steps": loss_steps,
              "loss": losses, "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    log(f"bf16 / fp32 steps per second (median of {rounds} rounds): {ratio:.3f}; bf16 runs "
        f"{result['bf16_steps_in_the_time_of_fp32_shipped']} steps in the time fp32 runs {SHIPPED_STEPS}")
    if losses:
        log(f"loss after {loss_steps} steps: fp32 {losses['fp32']['final_loss']}, bf16 {losses['bf16']['final_loss']} "
            f"(largest per-step gap {losses['largest_gap']})")
    log(f"load average {load_start} -> {result['load_average_end']}")


if __name__ == "__main__":
    main()
