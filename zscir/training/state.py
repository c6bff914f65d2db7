"""Resumable training state: weights, optimizer, progress and RNG, saved atomically.

``train_state.safetensors`` + ``train_state.json`` (via :mod:`zscir.checkpoint`)
hold the network weights, every optimizer tensor, the position in the data
(epoch, step within the epoch) and the torch RNG state, so that a run killed
at any point and resumed ends with the same weights as an uninterrupted one.
The RNG state of every process is stored (dropout masks differ across ranks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from zscir.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class Progress:
    epoch: int = 0            # current epoch (0-based)
    step_in_epoch: int = 0    # batches of this epoch already done
    global_step: int = 0


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(run_dir: Path, network: torch.nn.Module, optimizer, progress: Progress, config: dict,
                     rng_states: list[torch.Tensor]) -> None:
    """Write the whole state in one atomic checkpoint (``rng_states``: one per process, by rank)."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    weights = {f"model.{k}": v for k, v in network.state_dict().items()}
    rngs = {f"rng.{rank}": state for rank, state in enumerate(rng_states)}
    save_checkpoint(run_dir / "train_state", {**weights, **opt_tensors, **rngs},
                    {"kind": "train-state", "progress": asdict(progress), "optimizer": opt_meta, "config": config})


def load_train_state(run_dir: Path, network: torch.nn.Module, optimizer, rank: int) -> Progress:
    """Restore weights, optimizer and this process's RNG; return where to continue."""
    tensors, meta = load_checkpoint(run_dir / "train_state")
    network.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(
        {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"]))
    if f"rng.{rank}" in tensors:
        torch.set_rng_state(tensors[f"rng.{rank}"])
    return Progress(**meta["progress"])


def has_train_state(run_dir: Path) -> bool:
    return (run_dir / "train_state.json").is_file()
