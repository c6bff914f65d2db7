"""A gallery index on disk: the feature store, a faiss index over it, and what it was built with.

    INDEX/
      index.json            format version, backbone identity + source, preprocessing, count,
                            index kind and parameters, recall@k against exact search,
                            the current generation's file names (written last)
      faiss.g<gen>.index    the faiss index; row i is ids[i]
      ids.g<gen>.json       {"ids": [...], "paths": [...]} in faiss row order
      features/             the shared feature store (zscir.features): fp16 shards + ids + metadata

Rebuilding is incremental: the store encodes only new or changed images and
drops deleted ones, then the faiss index is rebuilt from the stored features
(for exact search, a copy; for IVF, the trained centroids are kept while the
gallery size stays in the same range). New files get a new generation name and
``index.json`` is replaced last, so a reader or a killed build never sees a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np

from zscir.errors import ZscirError
from zscir.features import FeatureStore, backbone_fingerprint, images_in_folder
from zscir.index import search_index
from zscir.utils.atomic import atomic_path, atomic_write_json

FORMAT = "zscir-index"
FORMAT_VERSION = 1


def normalized(pooled: np.ndarray) -> np.ndarray:
    x = np.asarray(pooled, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _describe(meta: dict) -> str:
    bb = meta["backbone"]
    return f"{bb.get('model')}@{bb.get('pretrained')} (preprocess {meta['preprocess']})"


@dataclass
class GalleryIndex:
    """An opened index directory."""

    root: Path
    meta: dict[str, Any]
    index: faiss.Index
    ids: list[str]
    paths: list[str | None]

    @classmethod
    def open(cls, root: str | os.PathLike) -> "GalleryIndex":
        root = Path(root)
        meta_path = root / "index.json"
        if not meta_path.is_file():
            raise ZscirError(f"no zscir index at {str(root)!r} (expected {meta_path}); "
                             "build one with `zscir index --images DIR --out INDEX`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ZscirError(f"index metadata {meta_path} is unreadable: {e}") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ZscirError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                             f"this zscir reads {FORMAT!r} version {FORMAT_VERSION}: rebuild the index")
        try:
            index = faiss.read_index(str(root / meta["files"]["faiss"]))
            rows = json.loads((root / meta["files"]["ids"]).read_text())
        except (OSError, RuntimeError, json.JSONDecodeError) as e:
            raise ZscirError(f"index {root} is damaged ({str(e).splitlines()[0][:200]}): rebuild it") from None
        search_index.apply_params(index, meta["kind"], meta["params"])
        return cls(root, meta, index, rows["ids"], rows["paths"])

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
            raise ZscirError(f"index {str(self.root)!r} was built with {_describe(self.meta)} but {what} uses "
                             f"{_describe(want)}: rebuild it with `zscir index --out {self.root} ...` "
                             "and the same --model/--clip")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], rows [B, k]); rows are -1 where fewer than k results exist."""
        k = max(1, min(int(k), len(self)))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def build_index(out: str | os.PathLike, backbone, images: str | os.PathLike | None = None,
                items: Iterable[Any] | None = None, kind: str = "auto", batch_size: int = 64,
                workers: int | None = None, progress: bool = True, exact_max: int = search_index.EXACT_MAX,
                log: Callable[[str], None] | None = None, model: str | None = None) -> dict[str, Any]:
    """Index a folder of ``images`` (ids = paths relative to it) or explicit ``items``; return a summary.

    ``items`` are what the feature store accepts: (id, path) pairs, paths, or ImageItems.
    ``model``, when given, is recorded as the index's default query model (a checkpoint path).
    """
    out = Path(out)
    if (images is None) == (items is None):
        raise ZscirError("give either an image folder (--images) or a list of items to index")
    if images is not None:
        pairs = images_in_folder(images)
        if not pairs:
            raise ZscirError(f"no images (.jpg, .png, .webp, ...) found under {str(images)!r} (option --images)")
        items = pairs
    items = list(items)
    with _build_lock(out):  # two first-use builds of the same index: one builds, the other then finds it
        return _build_locked(out, backbone, images, items, kind, batch_size, workers, progress, exact_max, log, model)


@contextlib.contextmanager
def _build_lock(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(out, backbone, images, items, kind, batch_size, workers, progress, exact_max, log, model):
    path_of = {str(i[0]): str(Path(i[1]).absolute()) for i in items if isinstance(i, tuple)}
    existing = _read_meta(out)
    if existing is not None and {"backbone": existing["backbone"], "preprocess": existing["preprocess"]} \
            != backbone_fingerprint(backbone):
        raise ZscirError(f"index {str(out)!r} was built with {_describe(existing)}, not "
                         f"{_describe(backbone_fingerprint(backbone))}: use another --out")

    t0 = time.perf_counter()
    store = FeatureStore(out / "features")
    report = store.update(backbone, items, batch_size=batch_size, workers=workers, progress=progress)
    if report.corrupt and log:
        log(f"skipped {len(report.corrupt)} unreadable image(s), e.g. {report.corrupt[0][0]}: {report.corrupt[0][1]}")
    ids, pooled, _ = store.load(tokens=False)

    wanted_kind = search_index.choose_kind(len(ids), exact_max) if kind == "auto" else kind
    unchanged = (existing is not None and not report.encoded and not report.deleted
                 and existing.get("requested_kind") == kind and existing.get("count") == len(ids)
                 and existing.get("exact_max") == exact_max)
    if unchanged:
        meta = existing
        if model is not None and meta.get("model") != model:
            meta["model"] = model
            atomic_write_json(out / "index.json", meta)
    else:
        previous = _previous_index(out, existing, wanted_kind)
        t_index = time.perf_counter()
        built, recall = search_index.build(normalized(pooled), kind, previous, exact_max)
        meta = _write_generation(out, existing, backbone, built, recall, ids,
                                 [path_of.get(i) for i in ids], images, kind, exact_max,
                                 index_seconds=time.perf_counter() - t_index,
                                 model=model if model is not None else (existing or {}).get("model"))
    return {"index": str(out), "count": meta["count"], "kind": meta["kind"], "params": meta["params"],
            "recall": meta["recall"], "rebuilt": not unchanged, "features": report.to_dict(),
            "seconds": time.perf_counter() - t0}


def _read_meta(out: Path) -> dict[str, Any] | None:
    path = out / "index.json"
    if not path.is_file():
        if out.exists() and any(out.iterdir()) and not (out / "features").is_dir():
            raise ZscirError(f"--out {str(out)!r} exists and is not a zscir index; choose an empty or new directory")
        return None
    return json.loads(path.read_text())


def _previous_index(out: Path, existing: dict | None, kind: str) -> faiss.Index | None:
    if existing is None or existing.get("kind") != kind or kind != "ivf":
        return None
    try:
        return faiss.read_index(str(out / existing["files"]["faiss"]))
    except RuntimeError:
        return None


def _write_generation(out: Path, existing, backbone, built, recall, ids, paths, images, kind, exact_max,
                      index_seconds: float, model: str | None) -> dict[str, Any]:
    gen = (existing or {}).get("generation", 0) + 1
    files = {"faiss": f"faiss.g{gen:06d}.index", "ids": f"ids.g{gen:06d}.json"}
    with atomic_path(out / files["faiss"]) as tmp:
        faiss.write_index(built.index, str(tmp))
    atomic_write_json(out / files["ids"], {"ids": list(ids), "paths": list(paths)}, indent=None)
    k = min(search_index.RECALL_K, len(ids))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": gen, "files": files,
            **backbone_fingerprint(backbone), "backbone_source": getattr(backbone, "source", None),
            "images_root": str(Path(images).absolute()) if images is not None else None,
            "count": len(ids), "requested_kind": kind, "exact_max": exact_max, "kind": built.kind,
            "params": built.params,
            "recall": {"k": k, "value": recall,
                       "against": "exact inner-product search" if built.kind in search_index.APPROXIMATE
                       else "exact (this index is exact)",
                       "queries": search_index.RECALL_QUERIES if built.kind in search_index.APPROXIMATE else 0},
            "model": model, "index_seconds": round(index_seconds, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "index.json", meta)
    for p in out.iterdir():  # older generations: no reader opens them any more once index.json moved on
        m = re.fullmatch(r"(faiss|ids)\.g(\d+)\.(index|json)", p.name)
        if m and p.name not in files.values():
            p.unlink(missing_ok=True)
    return meta
