"""Immutable feature shards on disk, and a lazy row view across them.

A shard is three files written once and never modified:
``<name>.rows.json`` (ids and keys), ``<name>.pooled.npy`` (fp16 [n, D]) and,
optionally, ``<name>.tokens.npy`` (fp16 [n, T, W]). Each is written to a
temporary file and renamed, so a shard file is either complete or absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.hashing import sha256_file

DTYPE = np.float16


def shard_files(root: Path, name: str) -> dict[str, Path]:
    return {"rows": root / f"{name}.rows.json", "pooled": root / f"{name}.pooled.npy",
            "tokens": root / f"{name}.tokens.npy"}


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` (as fp16) atomically; return the sha256 of the file written."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=DTYPE))
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
    return digest


def write_shard(root: Path, name: str, ids: Sequence[str], keys: Sequence[str],
                pooled: np.ndarray, tokens: np.ndarray | None) -> dict[str, str]:
    """Write a shard's arrays first and its rows file last: the rows file marks it complete.

    Returns the sha256 of each file written (recorded in the manifest, checked by ``verify``).
    """
    files = shard_files(root, name)
    digests = {"pooled": save_npy(files["pooled"], pooled)}
    if tokens is not None:
        digests["tokens"] = save_npy(files["tokens"], tokens)
    atomic_write_json(files["rows"], {"ids": list(ids), "keys": list(keys)}, indent=None)
    digests["rows"] = sha256_file(files["rows"])
    return digests


def read_rows(root: Path, name: str) -> tuple[list[str], list[str]]:
    with open(shard_files(root, name)["rows"], encoding="utf-8") as f:
        rows = json.load(f)
    return rows["ids"], rows["keys"]


def open_array(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class RowView:
    """Rows gathered lazily from several memory-mapped arrays, in a given order.

    ``view[i]``, ``view[a:b]`` and ``view[index_array]`` read only the requested
    rows (token features are far too large to copy into one file:
    ViT-L/14 tokens for 100k images are ~50 GB). ``np.asarray(view)`` reads
    everything. Pickling keeps only file paths, so a DataLoader worker started
    with ``spawn`` reopens the maps instead of receiving a copy of the data.
    """

    def __init__(self, paths: Sequence[Path], shard_of_row: np.ndarray, row_in_shard: np.ndarray):
        self.paths = [Path(p) for p in paths]
        self.shard_of_row = np.asarray(shard_of_row, dtype=np.int64)
        self.row_in_shard = np.asarray(row_in_shard, dtype=np.int64)
        self._arrays: list[np.ndarray] | None = None

    @property
    def arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [open_array(p) for p in self.paths]
        return self._arrays

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.paths:
            return (0,)
        return (len(self.shard_of_row), *self.arrays[0].shape[1:])

    @property
    def dtype(self):
        return np.dtype(DTYPE)

    def __len__(self) -> int:
        return len(self.shard_of_row)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return np.asarray(self.arrays[self.shard_of_row[index]][self.row_in_shard[index]])
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=DTYPE)
        shards = self.shard_of_row[rows]
        for s in np.unique(shards):
            where = np.nonzero(shards == s)[0]
            src = self.row_in_shard[rows[where]]
            order = np.argsort(src, kind="stable")  # ascending reads are kinder to the page cache
            out[where[order]] = self.arrays[s][src[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self):
        return {"paths": self.paths, "shard_of_row": self.shard_of_row, "row_in_shard": self.row_in_shard}

    def __setstate__(self, state):
        self.__init__(state["paths"], state["shard_of_row"], state["row_in_shard"])

    def __repr__(self) -> str:
        return f"RowView(shape={self.shape}, shards={len(self.paths)})"
