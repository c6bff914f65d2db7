"""The training loop the world's captioner and editor share: a step and time budget, resumable after a kill.

Every ``save_every`` steps (and at the end) the run directory gets ``state.pt`` -- weights,
optimizer, step, training seconds so far and the loss history -- written atomically and
loaded with ``weights_only=True``; a run started again on the same directory with the same
config continues from the saved step (a different config is refused). Batches are drawn
from (seed, step), so a resumed run sees the batches the uninterrupted one would have.

The learning rate warms up linearly, then follows a cosine to zero over the budget:
progress is ``max(step / steps, seconds / budget seconds)``, so a run stopped by the clock
ends its schedule as one stopped by the step count does. On a busy machine the clock
gives fewer steps; the record says how many were taken and the machine's load.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.testpoint import testpoint

STATE = "state.pt"


@dataclass(frozen=True)
class Budget:
    steps: int
    seconds: float
    lr: float
    warmup_steps: int = 50
    weight_decay: float = 0.01
    save_every: int = 100


@dataclass(frozen=True)
class RunConfig:
    """What every world model's training run sets: its seed, budget, batch and threads (a model's config adds
    its sizes)."""

    seed: int = 0
    steps: int = 20000          # an upper bound: the time budget usually stops first
    seconds: float = 780.0      # training seconds (data preparation and the held-out evaluation come on top)
    batch_size: int = 24
    lr: float = 3e-3
    warmup_steps: int = 50
    save_every: int = 100
    threads: int = 2

    def budget(self) -> Budget:
        return Budget(self.steps, self.seconds, self.lr, self.warmup_steps, save_every=self.save_every)


def lr_at(step: int, seconds: float, budget: Budget) -> float:
    if step < budget.warmup_steps:
        return budget.lr * (step + 1) / budget.warmup_steps
    progress = max((step - budget.warmup_steps) / max(1, budget.steps - budget.warmup_steps), seconds / budget.seconds)
    return budget.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _save(path: Path, model, optimizer, step: int, seconds: float, history: list, config: str) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "seconds": seconds, "history": history, "config": config}, tmp)


def train_loop(model, loss_at: Callable[[int], "torch.Tensor"], budget: Budget, run_dir: str | os.PathLike,
               config: dict, log: Callable[[str], None] = print) -> dict:
    """Minimise ``loss_at(step)`` within ``budget``; resume from ``run_dir`` when it holds a matching state.

    Returns the record of the run: steps taken, stop reason, seconds, loads, loss history summary.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE
    config_text = json.dumps(config, sort_keys=True)
    atomic_write_json(run_dir / "config.json", config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=budget.lr, betas=(0.9, 0.98))
    step, seconds, history, resumed_at = 0, 0.0, [], None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config") != config_text:
            raise ZscirError(f"{state_path} was saved by a run with another config: use another --run-dir or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, history = int(state["step"]), float(state["seconds"]), list(state["history"])
        resumed_at = step
        log(f"resuming at step {step} ({seconds:.0f} s trained)")
    load_start = os.getloadavg()
    model.train()
    stop = "steps"
    while step < budget.steps:
        if seconds >= budget.seconds:
            stop = "seconds"
            break
        started = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, seconds, budget)
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        seconds += time.monotonic() - started
        history.append(round(loss.item(), 4))
        if step % 50 == 0:
            log(f"step {step}: loss {sum(history[-50:]) / len(history[-50:]):.4f} ({seconds:.0f} s)")
        if step % budget.save_every == 0:
            _save(state_path, model, optimizer, step, seconds, history, config_text)
        testpoint("world_models.step")
    _save(state_path, model, optimizer, step, seconds, history, config_text)
    model.eval()
    tail = history[-20:] or [float("nan")]
    head = history[:20] or [float("nan")]
    return {"steps": step, "stopped_by": stop, "train_seconds": round(seconds), "resumed_at": resumed_at,
            "cpu_seconds_this_process": round(cpu_seconds()), "threads": torch.get_num_threads(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "first_loss": round(sum(head) / len(head), 4), "final_loss": round(sum(tail) / len(tail), 4),
            "loss_every_50": [round(sum(history[i:i + 50]) / len(history[i:i + 50]), 4)
                              for i in range(0, len(history), 50)]}
