"""Checkpoints as safetensors weights plus a JSON sidecar.

``run/model.safetensors`` holds tensors only (no pickle); ``run/model.json``
holds the config needed to rebuild the module, the backbone identity, and the
sha256 of the weights file so that a weights/sidecar pair from two different
saves is detected. Both files are written atomically, weights first: a crash
leaves either the old pair or the new pair.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.hashing import sha256_file

FORMAT_VERSION = 1


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Accept ``x``, ``x.safetensors`` or ``x.json``; return (weights, sidecar)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save ``state_dict`` and ``meta`` (JSON-serialisable); return the weights path."""
    weights, sidecar = _paths(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
    record = {"format": "zscir-checkpoint", "format_version": FORMAT_VERSION, **meta,
              "weights_sha256": sha256_file(weights)}
    atomic_write_json(sidecar, record)
    return weights


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint saved by :func:`save_checkpoint`; return (state_dict, meta)."""
    weights, sidecar = _paths(path)
    for f in (weights, sidecar):
        if not f.is_file():
            raise ZscirError(f"checkpoint file not found: {f} (a checkpoint is a .safetensors file with a .json sidecar)")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as e:
        raise ZscirError(f"checkpoint sidecar {sidecar} is not valid JSON: {e}") from None
    if meta.get("format") != "zscir-checkpoint":
        raise ZscirError(f"{sidecar} is not a zscir checkpoint sidecar (field 'format' should be 'zscir-checkpoint')")
    if verify and meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise ZscirError(f"{weights} does not match its sidecar {sidecar} (sha256 differs): the pair comes from two different saves")
    return load_file(str(weights)), meta
