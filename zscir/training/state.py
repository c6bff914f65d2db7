"""Resumable training state: weights, optimizer, progress and RNG, saved atomically.

``train_state.safetensors`` + ``train_state.json`` (via :mod:`zscir.checkpoint`)
hold the network weights, every optimizer tensor, the position in the data
(epoch, step within the epoch) and the torch RNG state, so that a run killed
at any point and resumed ends with the same weights as an uninterrupted one.
The RNG state of every process is stored (dropout masks differ across ranks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_write_text


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


# --------------------------------------------------------------- the run directory, checked before any work

RUN_FILES = ("config.json", "log.jsonl", "train_state.safetensors", "train_state.json", "model.safetensors",
             "model.json")


# the settings a resumed run may change: how long it trains and how often it saves; any other refuses --resume
MAY_CHANGE_ON_RESUME = ("epochs", "max_steps", "save_every_steps")


def settings_changes(recorded: dict, current: dict, options: dict[str, str] | None = None,
                     may_change: tuple[str, ...] = MAY_CHANGE_ON_RESUME) -> list[str]:
    """``"--batch-size 8 -> 16"`` for each setting in ``current`` that ``recorded`` holds with another value.

    Settings ``recorded`` lacks (a run saved before zscir recorded them) and those of ``may_change``
    are not compared; ``options`` maps a setting to its option name (default ``--setting-name``).
    """
    options = options or {}
    return [f"{options.get(key, '--' + key.replace('_', '-'))} {recorded[key]} -> {value}"
            for key, value in current.items()
            if key in recorded and key not in may_change and recorded[key] != value]


def check_run_dir(out, resume: bool, overwrite: bool, kind: str, expect: dict[str, Any],
                  view: Callable[[dict], dict] = lambda recorded: recorded, settings: dict[str, Any] | None = None,
                  options: dict[str, str] | None = None) -> str:
    """Decide what to do with the run directory ``out`` before any work; return "new", "resume" or "overwrite".

    A directory holding a zscir run (``config.json`` with a ``kind`` section, "pretrain" or
    "supervised") needs ``--resume`` or ``--overwrite`` (zscir's run files are removed, nothing
    else). A resume must agree with the run: ``view(recorded section)`` with ``expect``, and the
    recorded section with ``settings`` (the run's training settings, but for
    :data:`MAY_CHANGE_ON_RESUME`); else one line names each differing option, old -> new. A
    non-empty folder without a run, or a file, is refused whatever the flags. (On resume the
    training loop trims ``log.jsonl`` to the steps its saved state covers: :func:`trim_log`.)
    """
    run = Path(out)
    if resume and overwrite:
        raise ZscirError("--resume and --overwrite exclude each other: continue the run or replace it")
    if run.exists() and not run.is_dir():
        raise ZscirError(f"--out {out}: is a file, expected a run directory")
    if not run.is_dir() or not any(run.iterdir()):
        return "new"
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ZscirError(f"--out {out}: the folder is not empty and holds no zscir run (no config.json): "
                         f"choose another --out")
    try:
        recorded = json.loads(config_path.read_text())[kind]
    except (ValueError, KeyError, TypeError):
        raise ZscirError(f"{config_path}: not the config of a zscir {kind} run: choose another --out") from None
    if overwrite:
        for name in RUN_FILES:
            (run / name).unlink(missing_ok=True)
        return "overwrite"
    if not resume:
        raise ZscirError(f"--out {out} already holds a {kind} run: pass --resume to continue it "
                         f"or --overwrite to replace it")
    viewed = view(recorded)
    changes = settings_changes({k: viewed.get(k) for k in expect}, expect, options, may_change=())
    changes += settings_changes(recorded, {k: v for k, v in (settings or {}).items() if k not in expect}, options)
    if changes:
        may = ", ".join((options or {}).get(k, "--" + k.replace("_", "-")) for k in MAY_CHANGE_ON_RESUME
                        if k in (settings or {}))
        raise ZscirError(f"--resume: {out} was trained with other settings ({'; '.join(changes)}): resume with the "
                         f"run's own, or start a new run in another --out" + (f" (only {may} may change on resume)"
                                                                               if may else ""))
    return "resume"


def trim_log(log: Path, last_step: int) -> None:
    """Keep the log lines of steps <= ``last_step`` (a resumed run redoes and relogs the others)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines(keepends=True):
        try:
            if line.endswith("\n") and json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    atomic_write_text(log, "".join(kept))
