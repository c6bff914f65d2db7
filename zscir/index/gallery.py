"""A gallery index on disk: the feature store, a faiss index over it, and what it was built with.

    INDEX/
      index.json            format version, backbone identity + source, preprocessing, count,
                            index kind and parameters, recall@k against exact search,
                            the current generation's file names, their sha256, sizes and
                            per-block crc32 (written last)
      faiss.g<gen>.index    the faiss index of an approximate kind; row i is ids[i] (memory-mapped at load)
      vectors.g<gen>.npy    the normalised fp16 vectors in row order: exact search and re-ranking read them
                            (memory-mapped at load)
      ids.g<gen>.json       {"ids": [...], "paths": [...], "keys": [...]} in faiss row order
                            (keys: each image's content hash, to recognise a query's own image)
      features/             the shared feature store (zscir.features): fp16 shards + ids + metadata
      captions.g<gen>.json, caption-vectors.g<gen>.npy
                            with `zscir index --captioner`: each row's captions and the caption column
                            (zscir.index.caption_column; its text features resumable in caption-features/)

Opening checks every file against index.json's records before anything is read from it:
sizes, the ids file's sha256 and the large files' per-block crc32 (the rule and its cost:
:mod:`zscir.index.index_files`); a damaged index is one line naming the file.
:func:`verify_index` checks every file, the feature store's included, by full sha256.
Building and rerunning: :mod:`zscir.index.building` (``build_index``, re-exported here).
Ids are bytes-safe (file names that are not UTF-8 get ``\\xNN`` escapes, see
:func:`zscir.data.keys.safe_name`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from zscir.errors import ZscirError
from zscir.features import FeatureStore, backbone_fingerprint
from zscir.index import search_index
from zscir.index.building import build_index  # noqa: F401 (re-exported: the one public entry point)
from zscir.index.index_files import (FORMAT, FORMAT_VERSION, check_on_open, describe, read_json_file,
                                     repair_hint)
from zscir.index.rows import StringColumn
from zscir.utils.hashing import sha256_file


def normalized(pooled: np.ndarray) -> np.ndarray:
    x = np.asarray(pooled, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class GalleryIndex:
    """An opened index directory."""

    root: Path
    meta: dict[str, Any]
    index: faiss.Index
    ids: Sequence[str]                    # compact columns (zscir.index.rows.StringColumn), row order
    paths: Sequence[str | None]
    keys: Sequence[str | None] | None = None  # content key of each row (None in indexes built before keys)
    realpaths: Sequence[str | None] | None = None  # each path resolved at build time (None: same as path / unknown)
    searcher: Any = None                  # what answers queries (search_index.searcher_for)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "GalleryIndex":
        root = Path(root)
        meta_path = root / "index.json"
        if not meta_path.is_file():
            raise ZscirError(f"no zscir index at {str(root)!r} (expected {meta_path}); "
                             "build one with `zscir index --images DIR --out INDEX`")
        try:
            meta = read_json_file(meta_path)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise ZscirError(f"index metadata {str(meta_path)!r} is damaged ({str(e).splitlines()[0][:120]}): "
                             f"{repair_hint(root)} (the features are kept: a plain rerun of "
                             "`zscir index` rebuilds it without re-encoding)") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ZscirError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                             f"this zscir reads {FORMAT!r} version {FORMAT_VERSION}: rebuild the index")
        hint = repair_hint(root, meta.get("images_root"))
        try:
            files = meta["files"]
            damage = check_on_open(root, meta)
            if damage is not None:
                raise ZscirError(f"index file {str(root / damage[0])!r} is damaged ({damage[1]}): run "
                                 f"`zscir index --verify --out {root}` to list every damaged file; a rerun of "
                                 f"`zscir index` on it rebuilds its derived files from the features, or {hint}")
            vectors = np.load(root / files["vectors"], mmap_mode="r") if "vectors" in files else None
            if "faiss" in files:  # inverted lists memory-mapped: only the lists a query visits are read
                index = faiss.read_index(str(root / files["faiss"]),
                                         faiss.IO_FLAG_MMAP if meta["kind"] in search_index.IVF_KINDS else 0)
                search_index.apply_params(index, meta["kind"], meta["params"])
            else:
                index = search_index.ExactIndex(vectors)
            rows = read_json_file(root / files["ids"])
            n = len(rows["ids"])
            ids, paths = StringColumn(rows.pop("ids")), StringColumn(rows.pop("paths"))
            keys = StringColumn(rows.pop("keys", None) or [None] * n)
            realpaths = StringColumn(rows.pop("realpaths", None) or [None] * n)
            del rows
            if not (len(ids) == len(paths) == len(keys) == index.ntotal == meta["count"]) or (
                    vectors is not None and vectors.shape != (index.ntotal, index.d)):
                raise ValueError(f"{len(ids)} ids, {index.ntotal} vectors, index.json says {meta['count']}")
            searcher = search_index.searcher_for(index, meta["kind"], vectors, meta["params"])
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ZscirError(f"index {str(root)!r} is damaged ({detail}): rerun `zscir index` on it to rebuild "
                             f"its derived files from the features, or {hint}") from None
        return cls(root, meta, index, ids, paths, keys, realpaths, searcher)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"backbone": self.meta["backbone"], "preprocess": self.meta["preprocess"]}

    def check_backbone(self, backbone, what: str = "the model") -> None:
        self.check_fingerprint(backbone_fingerprint(backbone), what)

    def check_fingerprint(self, want: dict[str, Any], what: str = "the model") -> None:
        """Raise unless features from ``want`` (backbone identity + preprocessing) are comparable with ours."""
        if want != self.fingerprint:
            raise ZscirError(f"index {str(self.root)!r} was built with {describe(self.meta)} but {what} uses "
                             f"{describe(want)}: rebuild it with `zscir index --out {self.root} ...` "
                             "and the same --model/--clip")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], rows [B, k]); rows are -1 where fewer than k results exist."""
        k = max(1, min(int(k), len(self)))
        return (self.searcher or self.index).search(np.ascontiguousarray(queries, dtype=np.float32), k)


def verify_index(root: str | os.PathLike) -> dict[str, Any]:
    """Check every file of an index against what index.json and the feature manifest record.

    Returns {"index", "files_checked", "problems": [one line each], "ok", "hint", "notes"}; an index
    whose feature store holds an unfinished update is whole (the index is an earlier generation, the
    store's new shards are whole too): a note says so, not a problem. Never raises
    for damage (only when ``root`` is not an index at all).
    """
    root = Path(root)
    if not (root / "index.json").exists() and not (root / "features").is_dir():
        raise ZscirError(f"no zscir index at {str(root)!r} (option --out): nothing to verify")
    problems: list[str] = []
    notes: list[str] = []   # not damage: what a rerun would change
    checked = 1
    meta = None
    try:
        meta = read_json_file(root / "index.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "files" not in meta:
            raise ValueError("not a zscir index description")
    except (OSError, ValueError) as e:
        problems.append(f"{root / 'index.json'}: damaged ({str(e).splitlines()[0][:120]})")
        meta = None
    store = FeatureStore(root / "features", repair_hint=repair_hint(root, (meta or {}).get("images_root")))
    n_store, store_problems = store.verify()
    checked += n_store
    problems += store_problems
    if meta is not None:
        digests = meta.get("sha256") or {}
        for part in meta["files"]:
            checked += 1
            path = root / str(meta["files"].get(part))
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif part in digests and sha256_file(path) != digests[part]:
                problems.append(f"{path}: content differs from index.json (sha256)")
        if not problems:
            try:
                GalleryIndex.open(root)
                if read_json_file(root / meta["files"]["ids"])["ids"] != store.ids():
                    # the index is a whole earlier generation; the store moved on (an interrupted update)
                    notes.append(f"{root / 'features'} holds images the index does not list yet (an update "
                                 f"was interrupted): rerun `zscir index --images "
                                 f"{meta.get('images_root') or 'DIR'} --out {root}` to finish it")
            except ZscirError as e:
                problems.append(str(e))
    images = (meta or {}).get("images_root")
    hint = None
    if problems:
        hint = (repair_hint(root, images) if store_problems else
                f"rerun `zscir index --images {images or 'DIR'} --out {root}` to rebuild the derived files "
                "from the features (nothing is re-encoded)")
    return {"index": str(root), "files_checked": checked, "problems": problems, "ok": not problems, "hint": hint,
            "notes": notes}
