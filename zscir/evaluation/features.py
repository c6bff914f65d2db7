"""Gallery and reference features for an evaluation, through the shared feature store.

Each gallery gets its own store directory (the store keeps exactly the images
it is given), named after the gallery and a hash of its (id, file) list, under
a subdirectory per backbone identity + preprocessing. So a second evaluation,
with another mapping network on the same backbone, re-encodes nothing: gallery
images are reused by file identity, reference images likewise.

Reference features come from the gallery's pooled features when the query
encoder needs no tokens and every reference is in the gallery (the usual case);
otherwise from a store of the references, with tokens when needed.
Corrupt images are skipped and counted: a corrupt gallery image is left out of
the ranking, a query with a corrupt reference gets an empty one. Both change the
metrics, so the runner refuses such a split unless the user accepts it
(:func:`unreadable_images`; ``zscir eval --allow-missing-images``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import zscir.backbone as backbone_layer   # its names load torch on first use (PEP 562)
from zscir.benchmarks.base import EvalSplit
from zscir.features import FeatureStore, RowView
from zscir.utils.paths import cache_dir


def default_cache_root() -> Path:
    return cache_dir() / "features" / "eval"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def image_set_key(label: str, split: EvalSplit, ids: list[str]) -> str:
    """A store name for these images: readable label + hash of the ordered (id, absolute file) list."""
    h = hashlib.sha256()
    for image_id in ids:   # os.path, not pathlib: this runs over 123k CIRCO files on every evaluation
        h.update(f"{image_id}\t{os.path.abspath(split.images[image_id])}\n".encode())
    return f"{_slug(label)}-{h.hexdigest()[:12]}"


@dataclass
class CacheReport:
    encoded: int = 0
    reused: int = 0
    corrupt: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0

    def add(self, report) -> None:
        self.encoded += report.encoded
        self.reused += report.reused
        self.corrupt += [{"id": i, "reason": r} for i, r in report.corrupt]
        self.seconds += report.seconds
        if report.encoded:
            self.images_per_s = report.images_per_s


@dataclass
class GalleryFeatures:
    positions: np.ndarray        # gallery index of each row (corrupt images left out), increasing
    pooled: np.ndarray           # fp16 [n, D] projected, not normalised
    ids: list[str]

    def normalized(self, device="cpu"):
        import torch  # deferred: heavy, and `zscir eval --help` needs none of it

        x = torch.from_numpy(np.asarray(self.pooled, dtype=np.float32)).to(device)
        return torch.nn.functional.normalize(x, dim=-1)


@dataclass
class ReferenceFeatures:
    row_of: dict[str, int]       # reference id -> row (ids with a corrupt image are absent)
    pooled: np.ndarray           # fp16 [n, D]
    tokens: RowView | None

    def get(self, ids: list[str]):
        """The references' :class:`~zscir.backbone.ImageFeatures` (fp32), in the order of ``ids``."""
        import torch  # deferred: heavy, and `zscir eval --help` needs none of it

        rows = np.array([self.row_of[i] for i in ids], dtype=np.int64)
        pooled = torch.from_numpy(np.asarray(self.pooled[rows], dtype=np.float32))
        tokens = None
        if self.tokens is not None:
            tokens = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.float32))
        return backbone_layer.ImageFeatures(pooled, tokens)


def _store(cache_root: Path, key: str, backbone) -> FeatureStore:
    return FeatureStore.for_backbone(Path(cache_root) / key, backbone)


def gallery_features(backbone, split: EvalSplit, cache_root: Path, report: CacheReport, batch_size: int = 64,
                     progress: bool = True) -> GalleryFeatures:
    """Pooled features of ``split``'s gallery, encoded only where the store lacks them."""
    key = image_set_key(split.gallery_name, split, split.gallery)
    store = _store(cache_root, key, backbone)
    upd = store.update(backbone, [(g, split.images[g]) for g in split.gallery], with_tokens=False,
                       batch_size=batch_size, progress=progress)
    report.add(upd)
    corrupt = {i for i, _ in upd.corrupt}
    ok = [g for g in split.gallery if g not in corrupt]
    feats = store.load(ids=ok, tokens=False)
    positions = np.array([split.gallery_index[g] for g in ok], dtype=np.int64)
    return GalleryFeatures(positions, feats.pooled, ok)


def reference_features(backbone, split: EvalSplit, gallery: GalleryFeatures, with_tokens: bool, cache_root: Path,
                       report: CacheReport, batch_size: int = 64, progress: bool = True) -> ReferenceFeatures:
    refs = list(dict.fromkeys(q.reference for q in split.queries))
    in_gallery = {g: r for r, g in enumerate(gallery.ids)}
    if not with_tokens and all(r in in_gallery for r in refs):
        return ReferenceFeatures(in_gallery, gallery.pooled, None)
    key = image_set_key(f"{split.gallery_name}-references", split, refs)
    store = _store(cache_root, key, backbone)
    upd = store.update(backbone, [(r, split.images[r]) for r in refs], with_tokens=with_tokens,
                       batch_size=batch_size, progress=progress)
    report.add(upd)
    corrupt = {i for i, _ in upd.corrupt}
    ok = [r for r in refs if r not in corrupt]
    feats = store.load(ids=ok, tokens=with_tokens)
    return ReferenceFeatures({r: i for i, r in enumerate(ok)}, feats.pooled, feats.tokens)


def unreadable_images(split: EvalSplit, report: CacheReport) -> str | None:
    """One line on ``split``'s unreadable images (count and first file), or None when every image was read."""
    if not report.corrupt:
        return None
    count = len({c["id"] for c in report.corrupt})
    first = report.corrupt[0]
    reason = " ".join(str(first["reason"]).split())
    return (f"{split.name}: {count} image{'s' if count > 1 else ''} could not be read "
            f"(first: {split.images.get(first['id'], first['id'])}: {reason})")
