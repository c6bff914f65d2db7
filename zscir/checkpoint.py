"""Checkpoints as safetensors weights plus a JSON sidecar.

``run/model.safetensors`` holds tensors only (no pickle); ``run/model.json``
holds the config needed to rebuild the module, the backbone identity, and the
sha256 of the weights file so that a weights/sidecar pair from two different
saves is detected. Both files are written atomically, weights first. The
weights file also carries the record in its safetensors header, with a
``save_id`` unique to each save: a crash between the two renames leaves the new
weights beside the old sidecar (different ``save_id``), and loading then takes
the record from the weights and writes the sidecar again. The same ``save_id``
with another sha256 is damage, and an error.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.finite import require_finite
from zscir.utils.hashing import sha256_file

FORMAT_VERSION = 1
EMBEDDED_KEY = "zscir"  # the record's copy in the weights file's safetensors header


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
    record = {"format": "zscir-checkpoint", "format_version": FORMAT_VERSION, **meta, "save_id": uuid.uuid4().hex}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={EMBEDDED_KEY: json.dumps(record)})
    atomic_write_json(sidecar, {**record, "weights_sha256": sha256_file(weights)})
    return weights


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint saved by :func:`save_checkpoint`; return (state_dict, meta).

    ``verify``: check the weights' sha256 against the sidecar (once per file version and process).
    """
    weights, sidecar = _paths(path)
    for f in (weights, sidecar):
        if not f.is_file():
            raise ZscirError(f"checkpoint file not found: {f} (a checkpoint is a .safetensors file with a .json sidecar)")
    try:
        meta = json.loads(sidecar.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZscirError(f"checkpoint sidecar {sidecar} is not valid JSON ({e}): restore it or save the "
                         f"checkpoint again") from None
    if not isinstance(meta, dict) or meta.get("format") != "zscir-checkpoint":
        raise ZscirError(f"{sidecar} is not a zscir checkpoint sidecar (field 'format' should be 'zscir-checkpoint')")
    if verify and meta.get("weights_sha256"):
        meta = _verify(weights, sidecar, meta)
    return require_finite(read_safetensors(weights), weights), meta


_verified: set[tuple[str, int, int, str]] = set()


def _embedded_record(weights: Path) -> dict | None:
    """The record a save wrote into the weights file's header, or None (older files, damaged headers)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get(EMBEDDED_KEY)
        return json.loads(text) if text else None
    except (SafetensorError, OSError, ValueError):
        return None


def _verify(weights: Path, sidecar: Path, meta: dict) -> dict:
    """Check the weights against the sidecar's sha256; return the record that describes them."""
    expected = meta["weights_sha256"]
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key in _verified:
        return meta
    actual = sha256_file(weights)
    if actual != expected:
        embedded = _embedded_record(weights)
        if embedded is None or embedded.get("save_id") in (None, meta.get("save_id")):
            raise ZscirError(f"{weights} does not match its sidecar {sidecar} (sha256 differs): the file is damaged "
                             f"or the pair comes from two different saves; save the checkpoint again or restore "
                             f"both files")
        # a save was cut between its two renames: the weights are whole (renamed atomically), the sidecar is stale
        meta = {**embedded, "weights_sha256": actual}
        atomic_write_json(sidecar, meta)
        key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, actual)
    _verified.add(key)
    return meta


# --------------------------------------------------------------- weights files from elsewhere (--pretrained)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"  # a raw pickle (protocol >= 2) or torch's zip format


def read_safetensors(path: str | os.PathLike, option: str = "") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged or foreign file is a one-line :class:`ZscirError`."""
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        if path.stat().st_size == 0:
            reason = "the file is empty"
        elif _looks_like_pickle(path):
            reason = "the file holds pickle bytes, not safetensors (zscir does not unpickle .safetensors files)"
        else:
            reason = f"damaged, truncated or of another format ({e})"
        raise ZscirError(f"{where}: not a readable safetensors file: {reason}; download or save it again") from None


def check_weights_file(path: str | os.PathLike, option: str = "--pretrained") -> None:
    """Check that a local weights file can be read safely, before a model is built from it.

    ``.safetensors`` files must parse (header and data sizes); pickle formats (``.pt``,
    ``.bin`` ...) must load with ``torch.load(weights_only=True)``, which constructs no
    arbitrary objects: a pickle that needs more than tensors and plain containers is refused.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ZscirError(f"{option} {path}: the weights file is empty; download or save it again")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):  # parses the header, checks the data size: no tensor is read
                return
        except SafetensorError:
            read_safetensors(path, option)  # raises the one-line error
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses them
            warnings.simplefilter("ignore")
            # torch's zip format is memory-mapped (nothing copied); a legacy pickle is read once more
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        reason = (f"the pickle needs objects other than tensors, which zscir does not construct ({blocked})"
                  if blocked else f"not a pickle that torch.load(weights_only=True) reads ({detail})")
        raise ZscirError(f"{option} {path}: {reason}; convert the weights to .safetensors or pass another file") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZscirError(f"{option} {path}: not a readable weights file ({first}); expected .safetensors or a "
                         f"torch state dict (.pt/.bin)") from None
