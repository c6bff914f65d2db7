"""Reading a feature store: ids, keys and features of its live rows, in store order.

Readers take no lock: an update only ever writes new files and then unlinks the old
ones, so a reader that finds a file gone between two reads starts again (three tries)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from zscir.errors import ZscirError
from zscir.features.manifest import StoreFiles
from zscir.features.shards import DTYPE, RowView, shard_files


class Features(NamedTuple):
    ids: list[str]
    pooled: np.ndarray            # fp16 [N, D]: a read-only memmap when all rows are loaded in store order
    tokens: RowView | None        # fp16 [N, 1+P, W] rows read lazily, or None when not cached


def load(files: StoreFiles, ids: Sequence[str] | None = None, tokens: bool | None = None) -> Features:
    """All live rows in store order, or the rows of ``ids`` in that order (see FeatureStore.load)."""
    meta = files.meta
    for attempt in range(3):  # an update may replace the files between our reads; retry then
        try:
            return _load(files, meta, ids, tokens)
        except FileNotFoundError as e:
            if attempt == 2:
                raise files.damaged(Path(e.filename or files.root), "missing") from None
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _load(files: StoreFiles, meta, ids, tokens) -> Features:
    manifest = files.read_manifest()
    shards = manifest["shards"]
    cons = manifest.get("consolidated")
    live = None
    if cons is not None:
        all_ids = files.read_json(files.root / cons["ids"])
        pooled = files.open_array(files.root / cons["pooled"], len(all_ids) if isinstance(all_ids, list) else None)
    else:  # an update was interrupted before consolidating: gather from the shards (in memory)
        live = files.live_rows(manifest)
        all_ids = [i for _, _, i, _ in live]
        pooled = gather_pooled(files, shards, live, meta["embed_dim"])

    token_view = None
    have_tokens = all(s["tokens"] for s in shards if s["rows"] > len(s["dead"]))
    if tokens or (tokens is None and have_tokens and shards):
        if not have_tokens:
            raise ZscirError(f"feature store {str(files.root)!r} has no token features for some images; "
                             "update it with tokens enabled")
        live = live if live is not None else files.live_rows(manifest)
        token_view = RowView([shard_files(files.shard_dir, s["name"])["tokens"] for s in shards],
                             np.array([s for s, _, _, _ in live], dtype=np.int64),
                             np.array([r for _, r, _, _ in live], dtype=np.int64))

    if ids is None:
        return Features(all_ids, pooled, token_view)
    where = positions(files, ids, all_ids)
    sub_tokens = None
    if token_view is not None:
        sub_tokens = RowView(token_view.paths, token_view.shard_of_row[where], token_view.row_in_shard[where])
    return Features(list(ids), np.asarray(pooled[where]), sub_tokens)


def positions(files: StoreFiles, ids: Sequence[str], all_ids: Sequence[str] | None = None) -> np.ndarray:
    """Row numbers of ``ids`` in store order; an id that is not stored is an error."""
    all_ids = load(files, tokens=False).ids if all_ids is None else all_ids
    where = {i: n for n, i in enumerate(all_ids)}
    missing = [i for i in ids if i not in where]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ZscirError(f"feature store {str(files.root)!r} has no features for image id(s) "
                         f"{', '.join(repr(m) for m in missing[:3])}{more}; update it first")
    return np.array([where[i] for i in ids], dtype=np.int64)


def stored_keys(files: StoreFiles, ids: Sequence[str] | None = None) -> list[str]:
    """The content key stored with each of ``ids`` (default: every live row, in store order)."""
    with files.missing_is_damage():
        live = files.live_rows(files.read_manifest())
    key_of = {i: k for _, _, i, k in live}
    return [key_of[i] for i in (ids if ids is not None else [i for _, _, i, _ in live])]


def live_count(files: StoreFiles) -> int:
    manifest = files.read_manifest()
    return sum(s["rows"] - len(s["dead"]) for s in manifest["shards"])


def gather_pooled(files: StoreFiles, shards, live, dim: int) -> np.ndarray:
    """The pooled rows of ``live`` (from :meth:`StoreFiles.live_rows`) copied out of their shards."""
    out = np.empty((len(live), dim), dtype=DTYPE)
    arrays = [files.open_array(shard_files(files.shard_dir, s["name"])["pooled"], s["rows"]) for s in shards]
    s_of = np.array([s for s, _, _, _ in live], dtype=np.int64)
    r_of = np.array([r for _, r, _, _ in live], dtype=np.int64)
    for s in np.unique(s_of):
        where = np.nonzero(s_of == s)[0]
        out[where] = arrays[s][r_of[where]]
    return out
