"""A directory of cached image features: versioned, incremental, resumable, memory-mapped.

:class:`FeatureStore` is the one object callers hold; its work is cut by role:

- :mod:`zscir.features.manifest`: the format (layout, ``meta.json``, ``manifest.json``, the lock);
- :mod:`zscir.features.reading`: ids, keys and features of the live rows;
- :mod:`zscir.features.updating`: encode new or changed images, drop the rest, resumably;
- :mod:`zscir.features.maintenance`: verify, drop damaged shards, compact, consolidate, collect garbage;
- :mod:`zscir.features.hash_cache`: file stat key -> content key, so unchanged files are not re-read.

The store is keyed by backbone identity and preprocessing (one store per pair, see
:meth:`FeatureStore.for_backbone`) and, per image, by the content key of
:mod:`zscir.data.keys`. It runs in the calling process: an update spread over several
processes is :func:`zscir.features.distributed.update_store`'s choice, made above the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

import zscir.features.maintenance as maintenance
import zscir.features.reading as reading
import zscir.features.updating as updating
from zscir.features.hash_cache import read_hashes
from zscir.features.manifest import FORMAT, FORMAT_VERSION, StoreDamaged, StoreFiles, backbone_fingerprint
from zscir.features.options import EncodeOptions
from zscir.features.reading import Features
from zscir.features.updating import UpdateReport

__all__ = ["FeatureStore", "Features", "UpdateReport", "StoreDamaged", "EncodeOptions", "backbone_fingerprint",
           "FORMAT", "FORMAT_VERSION"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


class FeatureStore(StoreFiles):
    """Cached image features for one backbone + preprocessing, in directory ``root``."""

    @classmethod
    def for_backbone(cls, cache_root: str | Path, backbone) -> "FeatureStore":
        """The store for ``backbone`` under ``cache_root``: one subdirectory per identity + preprocessing."""
        fp = backbone_fingerprint(backbone)
        digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
        name = _slug(f"{fp['backbone'].get('model', 'model')}-{fp['preprocess']}") + f"-{digest}"
        return cls(Path(cache_root) / name)

    # ---------------------------------------------------------------- reading
    def ids(self) -> list[str]:
        return self.load(tokens=False).ids

    def keys(self, ids: Sequence[str] | None = None) -> list[str]:
        """The content key stored with each of ``ids`` (default: every live row, in store order)."""
        return reading.stored_keys(self, ids)

    def __len__(self) -> int:
        return reading.live_count(self)

    def load(self, ids: Sequence[str] | None = None, tokens: bool | None = None) -> Features:
        """Read the features: all live rows in store order, or the rows of ``ids`` in that order.

        ``tokens``: None = return tokens when every row has them, else None;
        True = require them (error if any row lacks tokens); False = skip them.
        """
        return reading.load(self, ids, tokens)

    def positions(self, ids: Sequence[str], all_ids: Sequence[str] | None = None) -> np.ndarray:
        """Row numbers of ``ids`` in store order; an id that is not stored is an error."""
        return reading.positions(self, ids, all_ids)

    # ---------------------------------------------------------------- updating
    def update(self, backbone, items: Iterable[Any], options: EncodeOptions | None = None, *,
               known_hashes: dict[str, str] | None = None, consolidate: bool = True, **overrides) -> UpdateReport:
        """Make the store hold ``items``' features: encode new or changed images, drop the rest.

        ``options`` (:class:`EncodeOptions`, its fields also accepted as keywords) say how:
        ``prune=False`` keeps the rows of images not in ``items`` (a store shared by several
        image sets); ``force=True`` forgets what the store holds (even a damaged manifest).
        Finished shards survive a kill; rerunning continues where it stopped.
        Corrupt images are skipped and listed in the report. ``known_hashes`` (stat key ->
        content key) spares reading files; ``consolidate=False`` leaves the pooled rows in shards.
        """
        return updating.update(self, backbone, items, EncodeOptions.of(options, **overrides), known_hashes,
                               consolidate)

    def planned_update(self, backbone, items, options: EncodeOptions, known_hashes=None
                       ) -> contextlib.AbstractContextManager:
        """See :func:`zscir.features.updating.planned_update`."""
        return updating.planned_update(self, backbone, items, options, known_hashes)

    def finish_update(self, manifest) -> None:
        updating.finish_update(self, manifest)

    def adopt_shards(self, manifest, other: StoreFiles) -> int:
        """See :func:`zscir.features.updating.adopt_shards`."""
        return updating.adopt_shards(self, manifest, other)

    def known_hashes(self) -> dict[str, str]:
        """The hash cache: stat key -> content key of the files seen by earlier updates."""
        return read_hashes(self)

    # ---------------------------------------------------------------- checking
    def verify(self) -> tuple[int, list[str]]:
        """Check every file the manifest names against its recorded sha256 and shape.

        Returns (files checked, problems); each problem is one line naming the file.
        """
        return maintenance.verify(self)
