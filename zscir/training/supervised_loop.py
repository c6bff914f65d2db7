"""The epoch loop every supervised head shares (the CLIP heads and the BLIP-2 heads), resumable after a kill.

Epoch ``e`` visits the triplets in :func:`zscir.training.pretrain.epoch_order` of (seed, e), cut into
whole batches; each triplet's text variant (two wordings where a benchmark has them) is drawn from
(seed, e, 1). After each epoch the log gets one line and the whole state (weights, optimizer, progress,
RNG) is saved; a resumed run trims the log to the saved step and redoes the steps after it, so it ends
with the uninterrupted run's weights. A head supplies only ``step_loss(rows, variants)``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from zscir.errors import ZscirError
from zscir.training.pretrain import epoch_order
from zscir.training.state import Progress, has_train_state, load_train_state, save_train_state, trim_log
from zscir.utils.atomic import atomic_write_json
from zscir.utils.testpoint import testpoint


def steps_per_epoch(num_triplets: int, batch_size: int) -> int:
    steps = num_triplets // batch_size
    if steps == 0:
        raise ZscirError(f"only {num_triplets} triplets: fewer than one batch of --batch-size {batch_size}")
    return steps


def start_run(run_dir: Path, model, optimizer, record: dict, resume: bool, log=print) -> Progress:
    """The progress to start from: the saved state's when resuming, else a fresh run directory."""
    progress = Progress()
    if resume and has_train_state(run_dir):
        progress = load_train_state(run_dir, model, optimizer, rank=0)
        log(f"resuming {run_dir} at epoch {progress.epoch}, step {progress.step_in_epoch}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", record)
    if resume:
        trim_log(run_dir / "log.jsonl", progress.global_step)  # the steps after the last checkpoint are redone
    return progress


def run_epochs(cfg, model, optimizer, progress: Progress, num_triplets: int, run_dir: Path, record: dict,
               step_loss: Callable[[np.ndarray, np.ndarray], "torch.Tensor"],
               log_extra: Callable[[list[float]], dict] = lambda losses: {}, progress_bar: bool = True) -> Progress:
    """Train ``model`` from ``progress`` to ``cfg.epochs`` (or ``cfg.max_steps``); save after every epoch.

    ``step_loss(rows, variants)``: the loss of the batch of triplet ``rows`` (``variants[rows]`` picks
    their text variants). ``log_extra(epoch_losses)``: more fields for the epoch's log line.
    """
    per_epoch = steps_per_epoch(num_triplets, cfg.batch_size)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    bar = tqdm(total=total_steps, initial=progress.global_step, disable=not progress_bar, unit="step",
               desc=f"train {cfg.head}", file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    model.train()
    with open(run_dir / "log.jsonl", "a") as log_file:
        while progress.epoch < cfg.epochs and progress.global_step < total_steps:
            order = epoch_order(num_triplets, cfg.seed, progress.epoch)[: per_epoch * cfg.batch_size]
            order = order.reshape(per_epoch, cfg.batch_size)
            variants = np.random.default_rng([cfg.seed, progress.epoch, 1]).integers(0, 2, size=num_triplets)
            epoch_loss = []
            while progress.step_in_epoch < per_epoch and progress.global_step < total_steps:
                loss = step_loss(order[progress.step_in_epoch], variants)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not math.isfinite(loss.item()):
                    raise ZscirError(f"loss became {loss.item()} at step {progress.global_step}: lower --lr")
                progress.step_in_epoch += 1
                progress.global_step += 1
                epoch_loss.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                testpoint("supervised.step")  # tests: a kill after a step, before its save (zscir.utils.testpoint)
            entry = {"epoch": progress.epoch, "step": progress.global_step, "loss": float(np.mean(epoch_loss or [0])),
                     **log_extra(epoch_loss), "seconds": round(time.perf_counter() - t_start, 2)}
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            if progress.step_in_epoch == per_epoch:
                progress.epoch += 1
                progress.step_in_epoch = 0
            save_train_state(run_dir, model, optimizer, progress, record, [torch.get_rng_state()])
    bar.close()
    model.eval()
    return progress
