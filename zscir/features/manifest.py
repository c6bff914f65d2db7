"""The on-disk format of a feature store: its files, ``meta.json``, ``manifest.json`` and the lock.

Layout of a store directory::

    meta.json               what the features are: format version, backbone identity,
                            preprocessing, embedding width, dtype (written once)
    manifest.json           what the store holds: the shards in order, the rows deleted
                            from each (tombstones), and the consolidated pooled file
    shards/<name>.rows.json      ids and keys of a shard (written last: marks it complete)
    shards/<name>.pooled.npy     fp16 [n, D] projected pooled features, not normalised
    shards/<name>.tokens.npy     fp16 [n, 1+P, W] final-block tokens (CLS + patches), optional
    pooled.g<gen>.npy, ids.g<gen>.json   all live pooled rows in one file, for one memmap
    hashes.json             a cache: file stat key -> content key (:mod:`zscir.features.hash_cache`)

The manifest records the sha256 of every shard and consolidated file and of ``meta.json``
(``meta_sha256``: an edited description is damage, which ``--force`` repairs), and the stat
(size, mtime, ctime) each file had when it was recorded (``stat``): an update re-hashes only
files whose stat moved on (:func:`zscir.features.maintenance.drop_damaged`). Stores written
before a record existed are trusted as found when the manifest is next written. A damaged file
(truncated, unparsable) is reported on one line with what fixes it (``repair_hint``),
never a traceback. Every file is written to a temporary name and renamed.
:class:`StoreFiles` reads and writes these files; reading the features, updating them and
maintenance are built on it (:mod:`~zscir.features.reading`, :mod:`~zscir.features.updating`,
:mod:`~zscir.features.maintenance`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zscir.errors import ZscirError
from zscir.features.shards import open_array, read_rows, shard_files
from zscir.utils.atomic import atomic_write_json
from zscir.utils.locks import file_lock

FORMAT = "zscir-features"
FORMAT_VERSION = 1


class StoreDamaged(ZscirError):
    """A file of a feature store cannot be read as what zscir wrote; the message says what fixes it."""


def backbone_fingerprint(backbone, precision: str = "fp32") -> dict[str, Any]:
    """What makes two features comparable: the model's identity and the preprocessing, and the
    encoding precision when it is not fp32 (fp32 stores predate the field and carry none)."""
    fp = {"backbone": dict(backbone.identity), "preprocess": backbone.preprocess_name}
    return fp if precision == "fp32" else {**fp, "precision": precision}


def row_width(backbone) -> int:
    """Width of one image's pooled row: the backbone's ``feature_width`` (BLIP-2: Q x D query features,
    :mod:`zscir.backbone.blip2`), else its ``embed_dim`` (stand-ins with the older interface)."""
    return int(getattr(backbone, "feature_width", backbone.embed_dim))


def describe(fp: dict[str, Any]) -> str:
    bb = fp["backbone"]
    return f"{bb.get('model')}@{bb.get('pretrained')} (preprocess {fp['preprocess']})"


def stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def empty_manifest() -> dict[str, Any]:
    return {"generation": 0, "next_shard": 0, "shards": [], "consolidated": None}


def stat_record(path: Path) -> list[int]:
    """What changes when a file is written, replaced or touched: [size, mtime_ns, ctime_ns]."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def named_files(manifest: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Every file the manifest names: path relative to the store -> (part, recorded sha256 or None)."""
    named = {}
    for shard in manifest["shards"]:
        digests = shard.get("sha256") or {}
        for part in ("rows", "pooled") + (("tokens",) if shard["tokens"] else ()):
            named[f"shards/{shard_files(Path(), shard['name'])[part].name}"] = (part, digests.get(part))
    cons = manifest.get("consolidated")
    if cons is not None:
        for part in ("ids", "pooled"):
            named[cons[part]] = (part, (cons.get("sha256") or {}).get(part))
    return named


class StoreFiles:
    """The files of the store in directory ``root``: paths, validated reads, atomic writes, the lock."""

    def __init__(self, root: str | Path, repair_hint: str | None = None):
        self.root = Path(root)
        # what a damaged file's error tells the user to do (an index says "zscir index --force")
        self.repair_hint = repair_hint or f"delete {str(self.root)!r} and rerun to encode the images again"

    def damaged(self, path: Path, detail: Any) -> StoreDamaged:
        detail = str(detail).splitlines()[0][:160] if str(detail) else type(detail).__name__
        return StoreDamaged(f"feature store file {str(path)!r} is damaged ({detail}): {self.repair_hint}")

    def read_json(self, path: Path) -> Any:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self.damaged(path, e) from None

    # ---------------------------------------------------------------- paths
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    # ---------------------------------------------------------------- meta.json
    @property
    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise ZscirError(f"no feature store at {str(self.root)!r} (expected {self.meta_path.name}); "
                             "build it first")
        meta = self.read_json(self.meta_path)
        recorded = self._recorded_meta_sha256()
        if recorded is not None and hashlib.sha256(self.meta_path.read_bytes()).hexdigest() != recorded:
            raise self.damaged(self.meta_path, "content differs from the manifest's meta_sha256: it was edited")
        if not isinstance(meta, dict) or not {"backbone", "preprocess", "embed_dim"} <= set(meta):
            raise self.damaged(self.meta_path, "not a zscir feature store description")
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ZscirError(f"feature store {str(self.root)!r} has format {meta.get('format')!r} version "
                             f"{meta.get('format_version')!r}; this zscir reads {FORMAT!r} version {FORMAT_VERSION}")
        return meta

    def _recorded_meta_sha256(self) -> str | None:
        """meta.json's sha256 as the manifest records it (None: no manifest yet, or an older one; a
        damaged manifest is reported by whoever reads it)."""
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        return manifest.get("meta_sha256") if isinstance(manifest, dict) else None

    def check_backbone(self, backbone, precision: str = "fp32") -> None:
        """Raise if this store's features came from another backbone, preprocessing or precision."""
        meta = self.meta
        have = {"backbone": meta["backbone"], "preprocess": meta["preprocess"]}
        want = backbone_fingerprint(backbone)
        if have == want and meta.get("precision", "fp32") != precision:
            raise ZscirError(
                f"feature store {str(self.root)!r} holds {meta.get('precision', 'fp32')} features, but this run "
                f"encodes in {precision} (--precision): features of two precisions are never mixed; use "
                f"--precision {meta.get('precision', 'fp32')}, another directory, or --force to re-encode all")
        if have != want:
            raise ZscirError(
                f"feature store {str(self.root)!r} holds features of {describe(have)}, "
                f"but the model uses {describe(want)}; rebuild it or use another directory")

    def init_meta(self, backbone, precision: str = "fp32") -> None:
        if self.exists():
            self.check_backbone(backbone, precision)
            return
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **backbone_fingerprint(backbone),
                "backbone_str": getattr(backbone, "identity_str", None),
                "embed_dim": row_width(backbone), "dtype": "float16", "precision": precision,
                "pooled": "projected image embedding, not normalised",
                "tokens": "final transformer block outputs (CLS + patches) before ln_post",
                "image_key": "sha256:<content hash> (file:<abs path>:<size>:<mtime_ns> in older stores)"}
        atomic_write_json(self.meta_path, meta)

    # ---------------------------------------------------------------- manifest.json
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return empty_manifest()
        manifest = self.read_json(self.manifest_path)
        if not (isinstance(manifest, dict) and isinstance(manifest.get("shards"), list)
                and isinstance(manifest.get("generation"), int) and isinstance(manifest.get("next_shard"), int)
                and all(isinstance(x, dict) and {"name", "rows", "dead", "tokens"} <= set(x)
                        for x in manifest["shards"])):
            raise self.damaged(self.manifest_path, "not a zscir feature manifest")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` (generation + 1), recording meta.json's sha256 and the stat of each named file
        that has no record yet (files this update wrote; those of older stores as found)."""
        manifest["generation"] += 1
        if "meta_sha256" not in manifest and self.meta_path.is_file():
            manifest["meta_sha256"] = hashlib.sha256(self.meta_path.read_bytes()).hexdigest()
        old = manifest.get("stat") or {}
        stats = {}
        for rel in named_files(manifest):
            if rel in old:
                stats[rel] = old[rel]
            elif (self.root / rel).is_file():
                stats[rel] = stat_record(self.root / rel)
        manifest["stat"] = stats
        atomic_write_json(self.manifest_path, manifest, indent=1)

    def commit(self, manifest: dict[str, Any], consolidated: bool) -> None:
        if not consolidated:
            manifest["consolidated"] = None  # the consolidated file no longer matches the shards
        self.write_manifest(manifest)

    def new_shard_name(self, manifest) -> str:
        name = f"shard-{manifest['next_shard']:06d}"
        manifest["next_shard"] += 1
        return name

    # ---------------------------------------------------------------- shards
    def read_rows(self, shard: dict[str, Any]) -> tuple[list[str], list[str]]:
        path = shard_files(self.shard_dir, shard["name"])["rows"]
        try:
            ids, keys = read_rows(self.shard_dir, shard["name"])
        except FileNotFoundError:
            raise  # readers retry (an update may have replaced it); see missing_is_damage
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise self.damaged(path, e) from None
        if len(ids) != shard["rows"] or len(keys) != shard["rows"]:
            raise self.damaged(path, f"{len(ids)} rows, the manifest says {shard['rows']}")
        return ids, keys

    def open_array(self, path: Path, rows: int | None = None) -> np.ndarray:
        try:
            array = open_array(path)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError) as e:  # a truncated .npy cannot be mapped
            raise self.damaged(path, e) from None
        if rows is not None and array.shape[0] != rows:
            raise self.damaged(path, f"{array.shape[0]} rows, expected {rows}")
        return array

    def sizes(self, name: str, digests: dict[str, str]) -> dict[str, int]:
        files = shard_files(self.shard_dir, name)
        return {part: files[part].stat().st_size for part in digests}

    def live_rows(self, manifest: dict[str, Any]) -> list[tuple[int, int, str, str]]:
        """(shard position, row, id, key) of every live row, in store order."""
        rows = []
        for s, shard in enumerate(manifest["shards"]):
            ids, keys = self.read_rows(shard)
            dead = set(shard["dead"])
            rows.extend((s, r, i, k) for r, (i, k) in enumerate(zip(ids, keys)) if r not in dead)
        return rows

    # ---------------------------------------------------------------- concurrency
    @contextlib.contextmanager
    def locked(self):
        """The update lock (exclusive); readers need none: shards are only replaced, then unlinked."""
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".lock", on_wait=lambda: stderr(f"waiting for another update of {self.root} to finish ...")):
            yield

    @contextlib.contextmanager
    def missing_is_damage(self):
        """Under the update lock nothing is replaced behind our back: a missing file is damage."""
        try:
            yield
        except FileNotFoundError as e:
            raise self.damaged(Path(e.filename or self.root), "missing") from None
