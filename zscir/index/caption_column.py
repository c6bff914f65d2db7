"""The caption column of an index: each gallery image's captions and one text feature of them.

``zscir index --captioner SPEC`` captions the indexed images through :func:`zscir.data.caption_cache.caption_images`
(the one generation cache: a rerun captions only new images, a kill loses only the batch in flight) and encodes
the captions' text features with the index's backbone into ``INDEX/caption-features/``: append-only shards,
one ``.npz`` (texts + raw fp32 features) per batch, each written atomically, so a kill loses only the batch in
flight and a rerun encodes only captions no shard holds. A row of the column is, as CVSI's gallery column
(:meth:`zscir.models.training_free.cvsi.CVSIQuery.gallery_column`), the normalised mean of the normalised text
features of the image's captions; an image without a caption has a zero row and is counted in the record.

Each generation of the index writes two files (recorded and checksummed like the others,
:mod:`zscir.index.index_files`): ``captions.g<gen>.json`` (the captioner's identity and each row's captions)
and ``caption-vectors.g<gen>.npy`` (the fp32 column, row order).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zscir.data.caption_cache import caption_images
from zscir.errors import ZscirError
from zscir.index.index_files import read_json_file
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.testpoint import testpoint

FEATURES_DIR = "caption-features"
TEXT_BATCH = 64
PARTS = ("captions", "caption_vectors")   # the index.json parts of the column


@dataclass
class CaptionColumn:
    captions: list[list[str] | None]   # per index row
    vectors: np.ndarray                # [N, D] fp32, normalised rows (zero rows for images without a caption)
    record: dict                       # index.json "columns" -> "caption"


class TextFeatures:
    """caption text -> its raw fp32 text feature (of one backbone), from the append-only shards of ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as shard:
                    texts, feats = json.loads(str(shard["texts"])), shard["features"]
            except (OSError, ValueError, KeyError) as e:
                raise ZscirError(f"caption feature shard {path} is damaged ({str(e)[:80]}): delete it, a rerun of "
                                 "`zscir index --captioner ...` encodes its captions again") from None
            self.rows.update(zip(texts, feats.astype(np.float32)))

    def encode_missing(self, backbone, texts: Sequence[str], batch_size: int | None = None) -> int:
        """Encode the texts no shard holds, one durable shard per batch; returns how many were encoded."""
        batch_size = batch_size or TEXT_BATCH
        todo = list(dict.fromkeys(t for t in texts if t not in self.rows))
        self.folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            with torch.no_grad():
                feats = backbone.encode_text(batch).float().cpu().numpy()
            name = hashlib.sha256(json.dumps(batch).encode("utf-8")).hexdigest()[:24]
            with atomic_path(self.folder / f"{name}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, texts=np.array(json.dumps(batch)), features=feats)
                    f.flush()
                    os.fsync(f.fileno())
            testpoint("index.caption_features")  # tests: a kill between two durable shards
            self.rows.update(zip(batch, feats))
        return len(todo)


def column_row(features: np.ndarray) -> np.ndarray:
    """CVSI's gallery caption feature: normalise(mean(normalise(each caption's feature)))."""
    x = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=-1)
    return F.normalize(x.mean(dim=0), dim=-1).numpy()


def build_caption_column(out: Path, backbone, ids: Sequence[str], source, captioner, cache_path=None,
                         batch_size: int = 16, progress: bool = True, log=None) -> tuple[CaptionColumn, dict]:
    """Caption ``source`` (its ids are the index's), encode new caption texts, and the column in ``ids`` order.

    Returns the column and a summary (captioned now / from the cache, texts encoded now)."""
    result = caption_images(source, captioner, cache_path, batch_size=batch_size, progress=progress)
    captions = [result.outputs.get(i) for i in ids]
    store = TextFeatures(out / FEATURES_DIR)
    encoded = store.encode_missing(backbone, [t for caps in captions if caps for t in caps])
    dim = next(iter(store.rows.values())).shape[0] if store.rows else backbone_text_dim(backbone)
    vectors = np.zeros((len(ids), dim), dtype=np.float32)
    for row, caps in enumerate(captions):
        if caps:
            vectors[row] = column_row(np.stack([store.rows[t] for t in caps]))
    missing = [i for i, caps in zip(ids, captions) if not caps]
    if missing and log:
        log(f"{len(missing)} indexed image(s) have no caption (e.g. {missing[0]}): their caption rows are zero")
    record = {"captioner": result.identity, "about": captioner.describe(),
              "cache": str(result.cache_path) if result.cache_path else None,
              "rule": "normalise(mean of the normalised text features of the image's captions)",
              "without_caption": len(missing)}
    summary = {"captioned_now": result.captioned, "from_cache": result.from_cache, "texts_encoded_now": encoded,
               "without_caption": len(missing), "captioner": result.identity}
    return CaptionColumn(captions, vectors, record), summary


def backbone_text_dim(backbone) -> int:
    with torch.no_grad():
        return int(backbone.encode_text(["a"]).shape[-1])


def write_column_files(out: Path, gen: int, column: CaptionColumn) -> dict[str, str]:
    """Write the column's two files of generation ``gen``; their index.json parts -> file names."""
    files = {"captions": f"captions.g{gen:06d}.json", "caption_vectors": f"caption-vectors.g{gen:06d}.npy"}
    atomic_write_json(out / files["captions"], {"captioner": column.record["captioner"], "captions": column.captions},
                      indent=None)
    with atomic_path(out / files["caption_vectors"]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(column.vectors, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
    return files


def read_column(out: Path, meta: dict) -> CaptionColumn | None:
    """The column an index.json records (None when it has none)."""
    files = meta.get("files", {})
    if not set(PARTS) <= set(files):
        return None
    rows = read_json_file(out / files["captions"])
    vectors = np.load(out / files["caption_vectors"])
    return CaptionColumn(rows["captions"], vectors, meta.get("columns", {}).get("caption", {}))


def same_column(existing: dict, out: Path, column: CaptionColumn) -> bool:
    """Whether ``existing`` (index.json) records exactly this column (same captioner, same captions per row)."""
    have = read_column(out, existing) if set(PARTS) <= set(existing.get("files", {})) else None
    return (have is not None and have.record.get("captioner") == column.record["captioner"]
            and have.captions == column.captions and have.vectors.shape == column.vectors.shape
            and np.array_equal(have.vectors, column.vectors))
