"""A directory of cached image features: versioned, incremental, resumable, memory-mapped.

Layout of a store directory::

    meta.json               what the features are: format version, backbone identity,
                            preprocessing, embedding width, dtype (written once)
    manifest.json           what the store holds: the shards in order, the rows deleted
                            from each (tombstones), and the consolidated pooled file
    shards/<name>.rows.json      ids and keys of a shard (written last: marks it complete)
    shards/<name>.pooled.npy     fp16 [n, D] projected pooled features, not normalised
    shards/<name>.tokens.npy     fp16 [n, 1+P, W] final-block tokens (CLS + patches), optional
    pooled.g<gen>.npy, ids.g<gen>.json   all live pooled rows in one file, for one memmap
    hashes.json             a cache: file stat key -> content key, so unchanged files are not re-read

The manifest records the sha256 of every shard and consolidated file;
:meth:`FeatureStore.verify` checks them. A damaged file (truncated, unparsable)
is reported on one line with what fixes it (``repair_hint``), never a traceback.

Every file is written to a temporary name and renamed; the manifest is rewritten
(atomically) after each finished shard, so a killed update keeps every shard it
finished and the next update encodes only what is still missing. Ctrl-C (SIGINT)
first writes the batches already encoded as one more shard, so nothing finished
is lost; SIGINT is held back while a shard and the manifest are being written. An update
holds an exclusive lock on the directory; readers need none (shards are never
modified in place, only replaced and then unlinked).

The store is keyed by backbone identity and preprocessing (one store per pair,
see :meth:`FeatureStore.for_backbone`) and, per image, by the key of
:mod:`zscir.features.sources` (the content hash of the image file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from zscir.errors import ZscirError
from zscir.features.shards import DTYPE, RowView, open_array, read_rows, save_npy, shard_files, write_shard
from zscir.features.sources import as_sources, default_workers
from zscir.utils.atomic import atomic_write_json
from zscir.utils.hashing import sha256_file
from zscir.utils.locks import file_lock

FORMAT = "zscir-features"
FORMAT_VERSION = 1
COMPACT_DEAD_FRACTION = 0.5  # rewrite a shard once more than half of its rows are deleted
HASHES_FILE = "hashes.json"
HASHES_FORMAT = "zscir-hashes"


class StoreDamaged(ZscirError):
    """A file of a feature store cannot be read as what zscir wrote; the message says what fixes it."""


@contextlib.contextmanager
def sigint_deferred():
    """Hold back Ctrl-C while a group of files is written; deliver it afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


class Features(NamedTuple):
    ids: list[str]
    pooled: np.ndarray            # fp16 [N, D]: a read-only memmap when all rows are loaded in store order
    tokens: RowView | None        # fp16 [N, 1+P, W] rows read lazily, or None when not cached


@dataclass
class UpdateReport:
    total: int = 0                # images requested
    reused: int = 0               # already in the store with the same key
    encoded: int = 0              # newly encoded
    deleted: int = 0              # rows dropped: image gone, changed, or lacking requested tokens
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) skipped
    seconds: float = 0.0
    images_per_s: float = 0.0
    hashed: int = 0               # files read to compute their content hash (new, moved or touched)
    by_process: list[int] = field(default_factory=list)  # images each process encoded (several processes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrupt"] = [{"id": i, "reason": r} for i, r in self.corrupt]
        d["num_corrupt"] = len(self.corrupt)
        return d

    def summary(self) -> str:
        s = (f"{self.total} images: {self.encoded} encoded, {self.reused} reused, {self.deleted} dropped, "
             f"{len(self.corrupt)} corrupt skipped ({self.images_per_s:.1f} images/s)")
        return s


def backbone_fingerprint(backbone, precision: str = "fp32") -> dict[str, Any]:
    """What makes two features comparable: the model's identity and the preprocessing, and the
    encoding precision when it is not fp32 (fp32 stores predate the field and carry none)."""
    fp = {"backbone": dict(backbone.identity), "preprocess": backbone.preprocess_name}
    return fp if precision == "fp32" else {**fp, "precision": precision}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def _stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


class FeatureStore:
    """Cached image features for one backbone + preprocessing, in directory ``root``."""

    def __init__(self, root: str | Path, repair_hint: str | None = None):
        self.root = Path(root)
        # what a damaged file's error tells the user to do (an index says "zscir index --force")
        self.repair_hint = repair_hint or f"delete {str(self.root)!r} and rerun to encode the images again"

    def _damaged(self, path: Path, detail: Any) -> StoreDamaged:
        detail = str(detail).splitlines()[0][:160] if str(detail) else type(detail).__name__
        return StoreDamaged(f"feature store file {str(path)!r} is damaged ({detail}): {self.repair_hint}")

    def _read_json(self, path: Path) -> Any:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self._damaged(path, e) from None

    @classmethod
    def for_backbone(cls, cache_root: str | Path, backbone) -> "FeatureStore":
        """The store for ``backbone`` under ``cache_root``: one subdirectory per identity + preprocessing."""
        fp = backbone_fingerprint(backbone)
        digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
        name = _slug(f"{fp['backbone'].get('model', 'model')}-{fp['preprocess']}") + f"-{digest}"
        return cls(Path(cache_root) / name)

    # ---------------------------------------------------------------- paths and small files
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

    @property
    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise ZscirError(f"no feature store at {str(self.root)!r} (expected {self.meta_path.name}); "
                             "build it first")
        meta = self._read_json(self.meta_path)
        if not isinstance(meta, dict) or not {"backbone", "preprocess", "embed_dim"} <= set(meta):
            raise self._damaged(self.meta_path, "not a zscir feature store description")
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ZscirError(f"feature store {str(self.root)!r} has format {meta.get('format')!r} version "
                             f"{meta.get('format_version')!r}; this zscir reads {FORMAT!r} version {FORMAT_VERSION}")
        return meta

    def _read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return self._empty_manifest()
        manifest = self._read_json(self.manifest_path)
        if not (isinstance(manifest, dict) and isinstance(manifest.get("shards"), list)
                and isinstance(manifest.get("generation"), int) and isinstance(manifest.get("next_shard"), int)
                and all(isinstance(x, dict) and {"name", "rows", "dead", "tokens"} <= set(x)
                        for x in manifest["shards"])):
            raise self._damaged(self.manifest_path, "not a zscir feature manifest")
        return manifest

    @staticmethod
    def _empty_manifest() -> dict[str, Any]:
        return {"generation": 0, "next_shard": 0, "shards": [], "consolidated": None}

    def _read_rows(self, shard: dict[str, Any]) -> tuple[list[str], list[str]]:
        path = shard_files(self.shard_dir, shard["name"])["rows"]
        try:
            ids, keys = read_rows(self.shard_dir, shard["name"])
        except FileNotFoundError:
            raise  # readers retry (an update may have replaced it); see _missing_is_damage
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise self._damaged(path, e) from None
        if len(ids) != shard["rows"] or len(keys) != shard["rows"]:
            raise self._damaged(path, f"{len(ids)} rows, the manifest says {shard['rows']}")
        return ids, keys

    def _open_array(self, path: Path, rows: int | None = None) -> np.ndarray:
        try:
            array = open_array(path)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError) as e:  # a truncated .npy cannot be mapped
            raise self._damaged(path, e) from None
        if rows is not None and array.shape[0] != rows:
            raise self._damaged(path, f"{array.shape[0]} rows, expected {rows}")
        return array

    def _read_hashes(self) -> dict[str, str]:
        """The stat key -> content key cache; a damaged cache is only a cache: start again."""
        try:
            data = json.loads((self.root / HASHES_FILE).read_text(encoding="utf-8"))
            if data.get("format") == HASHES_FORMAT and isinstance(data.get("hashes"), dict):
                return data["hashes"]
        except (OSError, ValueError, AttributeError):
            pass
        return {}

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["generation"] += 1
        atomic_write_json(self.manifest_path, manifest, indent=1)

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
                f"feature store {str(self.root)!r} holds features of {_describe(have)}, "
                f"but the model uses {_describe(want)}; rebuild it or use another directory")

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        wait = f"waiting for another update of {self.root} to finish ..."
        with file_lock(self.root / ".lock", on_wait=lambda: _stderr(wait)):
            yield

    # ---------------------------------------------------------------- reading
    def _live_rows(self, manifest: dict[str, Any]) -> list[tuple[int, int, str, str]]:
        """(shard position, row, id, key) of every live row, in store order."""
        rows = []
        for s, shard in enumerate(manifest["shards"]):
            ids, keys = self._read_rows(shard)
            dead = set(shard["dead"])
            rows.extend((s, r, i, k) for r, (i, k) in enumerate(zip(ids, keys)) if r not in dead)
        return rows

    def ids(self) -> list[str]:
        return self.load(tokens=False).ids

    def keys(self, ids: Sequence[str] | None = None) -> list[str]:
        """The content key stored with each of ``ids`` (default: every live row, in store order)."""
        with self._missing_is_damage():
            live = self._live_rows(self._read_manifest())
        key_of = {i: k for _, _, i, k in live}
        return [key_of[i] for i in (ids if ids is not None else [i for _, _, i, _ in live])]

    def __len__(self) -> int:
        manifest = self._read_manifest()
        return sum(s["rows"] - len(s["dead"]) for s in manifest["shards"])

    def load(self, ids: Sequence[str] | None = None, tokens: bool | None = None) -> Features:
        """Read the features: all live rows in store order, or the rows of ``ids`` in that order.

        ``tokens``: None = return tokens when every row has them, else None;
        True = require them (error if any row lacks tokens); False = skip them.
        """
        meta = self.meta
        for attempt in range(3):  # an update may replace the files between our reads; retry then
            try:
                return self._load(meta, ids, tokens)
            except FileNotFoundError as e:
                if attempt == 2:
                    raise self._damaged(Path(e.filename or self.root), "missing") from None
                time.sleep(0.1)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _missing_is_damage(self):
        """Under the update lock nothing is replaced behind our back: a missing file is damage."""
        try:
            yield
        except FileNotFoundError as e:
            raise self._damaged(Path(e.filename or self.root), "missing") from None

    def _load(self, meta, ids, tokens) -> Features:
        manifest = self._read_manifest()
        shards = manifest["shards"]
        cons = manifest.get("consolidated")
        live = None
        if cons is not None:
            all_ids = self._read_json(self.root / cons["ids"])
            pooled = self._open_array(self.root / cons["pooled"], len(all_ids) if isinstance(all_ids, list) else None)
        else:  # an update was interrupted before consolidating: gather from the shards (in memory)
            live = self._live_rows(manifest)
            all_ids = [i for _, _, i, _ in live]
            pooled = self._gather_pooled(shards, live, meta["embed_dim"])

        token_view = None
        have_tokens = all(s["tokens"] for s in shards if s["rows"] > len(s["dead"]))
        if tokens or (tokens is None and have_tokens and shards):
            if not have_tokens:
                raise ZscirError(f"feature store {str(self.root)!r} has no token features for some images; "
                                 "update it with tokens enabled")
            live = live if live is not None else self._live_rows(manifest)
            token_view = RowView([shard_files(self.shard_dir, s["name"])["tokens"] for s in shards],
                                 np.array([s for s, _, _, _ in live], dtype=np.int64),
                                 np.array([r for _, r, _, _ in live], dtype=np.int64))

        if ids is None:
            return Features(all_ids, pooled, token_view)
        positions = self.positions(ids, all_ids)
        sub_tokens = None
        if token_view is not None:
            sub_tokens = RowView(token_view.paths, token_view.shard_of_row[positions],
                                 token_view.row_in_shard[positions])
        return Features(list(ids), np.asarray(pooled[positions]), sub_tokens)

    def positions(self, ids: Sequence[str], all_ids: Sequence[str] | None = None) -> np.ndarray:
        """Row numbers of ``ids`` in store order; an id that is not stored is an error."""
        all_ids = self.load(tokens=False).ids if all_ids is None else all_ids
        where = {i: n for n, i in enumerate(all_ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ZscirError(f"feature store {str(self.root)!r} has no features for image id(s) "
                             f"{', '.join(repr(m) for m in missing[:3])}{more}; update it first")
        return np.array([where[i] for i in ids], dtype=np.int64)

    def _gather_pooled(self, shards, live, dim: int) -> np.ndarray:
        out = np.empty((len(live), dim), dtype=DTYPE)
        arrays = [self._open_array(shard_files(self.shard_dir, s["name"])["pooled"], s["rows"]) for s in shards]
        s_of = np.array([s for s, _, _, _ in live], dtype=np.int64)
        r_of = np.array([r for _, r, _, _ in live], dtype=np.int64)
        for s in np.unique(s_of):
            where = np.nonzero(s_of == s)[0]
            out[where] = arrays[s][r_of[where]]
        return out

    # ---------------------------------------------------------------- writing
    def update(self, backbone, items: Iterable[Any], with_tokens: bool = False, batch_size: int = 64,
               shard_size: int = 2048, flush_seconds: float = 120.0, workers: int | None = None,
               progress: bool = True, prune: bool = True, force: bool = False, precision: str = "fp32",
               draft: bool = False, ranks=None, known_hashes: dict[str, str] | None = None,
               consolidate: bool = True) -> UpdateReport:
        """Make the store hold ``items``' features: encode new or changed images, drop the rest.

        ``prune=False`` keeps the rows of images not in ``items`` (a store shared by
        several image sets); by default the store holds exactly ``items``.
        ``force=True`` forgets what the store holds (even a damaged manifest) and encodes everything.
        Finished shards survive a kill; rerunning continues where it stopped.
        Corrupt images are skipped and listed in the report.
        ``workers``: decoding processes (None: one per core); ``precision``: fp32, or bf16/fp16
        autocast (recorded in meta.json: a store holds one precision); ``draft``: JPEG draft decoding.
        ``ranks`` (:class:`zscir.features.distributed.Ranks` of 2+ processes): every process calls
        this, each encodes its share into its own store, the main process merges them.
        """
        if ranks is not None and ranks.world > 1:
            from zscir.features.distributed import distributed_update

            return distributed_update(self, backbone, items, ranks, with_tokens=with_tokens, batch_size=batch_size,
                                      shard_size=shard_size, flush_seconds=flush_seconds, workers=workers,
                                      progress=progress, prune=prune, force=force, precision=precision,
                                      draft=draft)
        with self.planned_update(backbone, items, with_tokens, workers, progress, prune, force, precision,
                                 known_hashes) as (manifest, todo, report):
            try:
                self._encode_into(manifest, backbone, todo, report, with_tokens, batch_size, shard_size,
                                  flush_seconds, workers, progress, precision, draft)
            except KeyboardInterrupt:
                _stderr(f"interrupted: the {report.encoded} image(s) encoded in this run are saved in {self.root} "
                        f"({report.reused + report.encoded} in all); rerun the same command to encode the rest")
                raise
            if consolidate:
                self.finish_update(manifest)
        return report

    @contextlib.contextmanager
    def planned_update(self, backbone, items, with_tokens=False, workers=None, progress=True, prune=True,
                       force=False, precision="fp32", known_hashes=None):
        """Under the update lock: yield (manifest, sources still to encode, report) with every row that is
        no longer wanted already dropped; the caller encodes ``todo`` (or has it encoded) and commits."""
        t0 = time.perf_counter()
        if self.exists() and not force:
            self.check_backbone(backbone, precision)  # before hashing anything
        known = {} if force else {**self._legacy_stat_keys(), **self._read_hashes(), **(known_hashes or {})}
        sources, unusable = as_sources(items, workers=max(1, workers or default_workers()), progress=progress,
                                       known_hashes=known)
        report = UpdateReport(total=len(sources) + len(unusable), corrupt=list(unusable),
                              hashed=sum(1 for s in sources if s.stat and s.stat not in known))
        with self._locked(), self._missing_is_damage():
            if force:
                manifest = self._reset(backbone, precision)
            else:
                self._init_meta(backbone, precision)
                manifest = self._read_manifest()
            if self._drop_damaged(manifest) or manifest.get("consolidated") is None:
                with sigint_deferred():
                    self._commit(manifest, consolidated=False)
            self._collect_garbage(manifest)
            self._write_hashes(sources, known if not prune else {})

            live = self._live_rows(manifest)
            wanted = {s.id: s for s in sources}
            kept: set[str] = set()
            for s, r, image_id, key in live:
                shard = manifest["shards"][s]
                if image_id not in wanted and not prune:
                    continue
                src = wanted.get(image_id)
                same = src is not None and (src.key == key or (src.stat is not None and src.stat == key))
                if same and (shard["tokens"] or not with_tokens):
                    kept.add(image_id)
                else:
                    shard["dead"].append(r)
                    report.deleted += 1
            report.reused = len(kept)
            if report.deleted:
                with sigint_deferred():
                    self._compact(manifest)
                    self._commit(manifest, consolidated=False)
            yield manifest, [s for s in sources if s.id not in kept], report
        report.seconds = time.perf_counter() - t0

    def finish_update(self, manifest) -> None:
        """Write the consolidated pooled file (when the shards changed) and drop what nothing refers to."""
        if manifest.get("consolidated") is None:
            with sigint_deferred():
                self._consolidate(manifest)

    def adopt_shards(self, manifest, other: "FeatureStore") -> int:
        """Append ``other``'s live shards to ``manifest`` (hard links, no copy: its files stay whole
        until ``other`` is deleted) and commit; return the rows adopted. Same backbone and precision only."""
        if not other.exists():
            return 0
        def what(meta):
            return meta["backbone"], meta["preprocess"], meta.get("precision", "fp32"), meta["embed_dim"]

        if what(other.meta) != what(self.meta):
            raise ZscirError(f"feature store {str(other.root)!r} was written with another backbone, preprocessing "
                             f"or precision than {str(self.root)!r}; delete it and rerun")
        theirs = other._read_manifest()
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        rows = 0
        with sigint_deferred():
            for shard in theirs["shards"]:
                if shard["rows"] == len(shard["dead"]):
                    continue
                name = self._new_shard_name(manifest)
                src, dst = shard_files(other.shard_dir, shard["name"]), shard_files(self.shard_dir, name)
                for part in ("pooled", "tokens", "rows"):  # the rows file last: it marks a shard complete
                    if part == "tokens" and not shard["tokens"]:
                        continue
                    dst[part].unlink(missing_ok=True)
                    try:
                        os.link(src[part], dst[part])
                    except OSError:
                        shutil.copyfile(src[part], dst[part])
                manifest["shards"].append({**shard, "name": name, "dead": list(shard["dead"])})
                rows += shard["rows"] - len(shard["dead"])
            self._commit(manifest, consolidated=False)
        return rows

    def _reset(self, backbone, precision: str = "fp32") -> dict[str, Any]:
        """For ``force``: a fresh description and an empty manifest (garbage collection then drops the rest)."""
        try:
            meta = self.meta if self.exists() else None
        except ZscirError:
            meta = None  # damaged: rewritten below
        if meta is not None and meta.get("precision", "fp32") == precision:
            self.check_backbone(backbone, precision)
        else:
            if meta is not None:
                self.check_backbone(backbone, meta.get("precision", "fp32"))  # only the precision changes
            self.meta_path.unlink(missing_ok=True)
            self._init_meta(backbone, precision)
        try:
            generation = self._read_manifest()["generation"]
        except ZscirError:
            generation = 0
        manifest = {**self._empty_manifest(), "generation": generation}
        with sigint_deferred():
            self._write_manifest(manifest)
        return manifest

    def _legacy_stat_keys(self) -> dict[str, str]:
        """Rows of stores written before content keys are keyed by stat key: an unchanged file keeps
        its row without being read (``{stat: stat}``; a moved or touched one is hashed and re-encoded once)."""
        try:
            with self._missing_is_damage():
                live = self._live_rows(self._read_manifest()) if self.exists() else []
        except ZscirError:
            return {}  # damage is reported under the lock, with what fixes it
        return {k: k for _, _, _, k in live if k.startswith("file:")}

    def _write_hashes(self, sources, keep: dict[str, str]) -> None:
        """Remember each file's content key by its stat key (for the next update), when that changed."""
        hashes = dict(keep)
        hashes.update({s.stat: s.key for s in sources if s.stat and s.key.startswith("sha256:")})
        if hashes != self._read_hashes():
            atomic_write_json(self.root / HASHES_FILE, {"format": HASHES_FORMAT, "hashes": hashes}, indent=None)

    # ---------------------------------------------------------------- checking
    def verify(self) -> tuple[int, list[str]]:
        """Check every file the manifest names against its recorded sha256 and shape.

        Returns (files checked, problems); each problem is one line naming the file.
        Stores written before checksums were recorded are checked for readability and shape.
        """
        checked, problems = 0, []

        def check_digest(path: Path, want: str | None) -> bool:
            nonlocal checked
            checked += 1
            if not path.is_file():
                problems.append(f"{path}: missing")
                return False
            if want is not None and sha256_file(path) != want:
                problems.append(f"{path}: content differs from the manifest (sha256)")
                return False
            return True

        try:
            checked += 1
            meta = self.meta
            checked += 1
            manifest = self._read_manifest()
        except ZscirError as e:
            return checked, [str(e)]
        for shard in manifest["shards"]:
            files = shard_files(self.shard_dir, shard["name"])
            digests = shard.get("sha256") or {}
            parts = ["rows", "pooled"] + (["tokens"] if shard["tokens"] else [])
            for part in parts:
                if not check_digest(files[part], digests.get(part)):
                    continue
                try:
                    if part == "rows":
                        self._read_rows(shard)
                    else:
                        array = self._open_array(files[part], shard["rows"])
                        if part == "pooled" and array.shape[1:] != (meta["embed_dim"],):
                            problems.append(f"{files[part]}: shape {array.shape}, expected [n, {meta['embed_dim']}]")
                except (ZscirError, FileNotFoundError) as e:
                    problems.append(str(e))
        cons = manifest.get("consolidated")
        if cons is not None:
            digests = cons.get("sha256") or {}
            ok = all([check_digest(self.root / cons[p], digests.get(p)) for p in ("ids", "pooled")])
            if ok and not problems:
                try:
                    ids = self._read_json(self.root / cons["ids"])
                    live = [i for _, _, i, _ in self._live_rows(manifest)]
                    if ids != live:
                        problems.append(f"{self.root / cons['ids']}: ids differ from the shards'")
                    self._open_array(self.root / cons["pooled"], len(live))
                except (ZscirError, FileNotFoundError) as e:
                    problems.append(str(e))
        return checked, problems

    def _init_meta(self, backbone, precision: str = "fp32") -> None:
        if self.exists():
            self.check_backbone(backbone, precision)
            return
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **backbone_fingerprint(backbone),
                "backbone_str": getattr(backbone, "identity_str", None),
                "embed_dim": int(backbone.embed_dim), "dtype": "float16", "precision": precision,
                "pooled": "projected image embedding, not normalised",
                "tokens": "final transformer block outputs (CLS + patches) before ln_post",
                "image_key": "sha256:<content hash> (file:<abs path>:<size>:<mtime_ns> in older stores)"}
        atomic_write_json(self.meta_path, meta)

    def _commit(self, manifest: dict[str, Any], consolidated: bool) -> None:
        if not consolidated:
            manifest["consolidated"] = None  # the consolidated file no longer matches the shards
        self._write_manifest(manifest)

    def _new_shard_name(self, manifest) -> str:
        name = f"shard-{manifest['next_shard']:06d}"
        manifest["next_shard"] += 1
        return name

    def _encode_into(self, manifest, backbone, todo, report, with_tokens, batch_size, shard_size,
                     flush_seconds, workers, progress, precision="fp32", draft=False) -> None:
        if not todo:
            return
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        buf_ids: list[str] = []
        buf_keys: list[str] = []
        buf_pooled: list[np.ndarray] = []
        buf_tokens: list[np.ndarray] = []
        last_flush = time.perf_counter()
        t_start = time.perf_counter()

        def flush() -> None:
            nonlocal buf_ids, buf_keys, buf_pooled, buf_tokens, last_flush
            if not buf_ids:
                return
            with sigint_deferred():  # a shard and the manifest naming it are written as one step
                name = self._new_shard_name(manifest)
                digests = write_shard(self.shard_dir, name, buf_ids, buf_keys, np.concatenate(buf_pooled),
                                      np.concatenate(buf_tokens) if with_tokens else None)
                manifest["shards"].append({"name": name, "rows": len(buf_ids), "tokens": with_tokens, "dead": [],
                                           "sha256": digests, "bytes": self._sizes(name, digests)})
                self._commit(manifest, consolidated=False)
            buf_ids, buf_keys, buf_pooled, buf_tokens = [], [], [], []
            last_flush = time.perf_counter()

        bar = tqdm(total=len(todo), unit="img", desc="encoding images", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        announced = False
        skipped_here = 0
        try:
            from zscir.features.encode import encode_sources  # torch: only when something is encoded

            for batch in encode_sources(backbone, todo, batch_size, with_tokens, workers, precision, draft):
                report.corrupt.extend(batch.corrupt)
                skipped_here += len(batch.corrupt)
                bar.update(len(batch.ids) + len(batch.corrupt))
                if batch.corrupt:
                    bar.set_postfix(corrupt=len(report.corrupt))
                if not batch.ids:
                    continue
                if with_tokens and not announced and progress:
                    per_image = batch.tokens[0].nbytes
                    _stderr(f"token features: {tuple(batch.tokens.shape[1:])} fp16 per image, "
                            f"~{per_image * len(todo) / 1e9:.2f} GB for {len(todo)} images "
                            "(update without tokens for a globals-only cache)")
                    announced = True
                buf_ids += batch.ids
                buf_keys += batch.keys
                buf_pooled.append(batch.pooled)
                if with_tokens:
                    buf_tokens.append(batch.tokens)
                report.encoded += len(batch.ids)
                if len(buf_ids) >= shard_size or time.perf_counter() - last_flush >= flush_seconds:
                    flush()
            flush()
        except KeyboardInterrupt:
            flush()  # Ctrl-C: the batches already encoded become one more shard, then stop
            raise
        finally:
            bar.close()
        elapsed = time.perf_counter() - t_start
        report.images_per_s = (report.encoded + skipped_here) / max(elapsed, 1e-9)

    def _compact(self, manifest) -> None:
        """Drop fully deleted shards; rewrite those that are mostly deleted."""
        kept = []
        for shard in manifest["shards"]:
            live_rows = shard["rows"] - len(shard["dead"])
            if live_rows == 0:
                continue
            if len(shard["dead"]) > COMPACT_DEAD_FRACTION * shard["rows"]:
                shard = self._rewrite_shard(manifest, shard)
            kept.append(shard)
        manifest["shards"] = kept

    def _rewrite_shard(self, manifest, shard) -> dict[str, Any]:
        files = shard_files(self.shard_dir, shard["name"])
        ids, keys = self._read_rows(shard)
        dead = set(shard["dead"])
        rows = np.array([r for r in range(shard["rows"]) if r not in dead], dtype=np.int64)
        name = self._new_shard_name(manifest)
        digests = write_shard(self.shard_dir, name, [ids[r] for r in rows], [keys[r] for r in rows],
                              self._open_array(files["pooled"], shard["rows"])[rows],
                              self._open_array(files["tokens"], shard["rows"])[rows] if shard["tokens"] else None)
        return {"name": name, "rows": len(rows), "tokens": shard["tokens"], "dead": [], "sha256": digests,
                "bytes": self._sizes(name, digests)}

    def _sizes(self, name: str, digests: dict[str, str]) -> dict[str, int]:
        files = shard_files(self.shard_dir, name)
        return {part: files[part].stat().st_size for part in digests}

    def _drop_damaged(self, manifest: dict[str, Any]) -> int:
        """Drop shards whose files are missing, of the wrong size or unreadable; return the rows dropped.

        Their images are simply encoded again by this update: a damaged shard costs time, never
        a wrong feature. Sizes are a stat per file; :meth:`verify` compares full checksums.
        """
        kept, dropped = [], 0
        for shard in manifest["shards"]:
            files = shard_files(self.shard_dir, shard["name"])
            parts = ["rows", "pooled"] + (["tokens"] if shard["tokens"] else [])
            sizes = shard.get("bytes") or {}
            problem = None
            for part in parts:
                if not files[part].is_file():
                    problem = f"{files[part].name} is missing"
                elif part in sizes and files[part].stat().st_size != sizes[part]:
                    problem = f"{files[part].name} has {files[part].stat().st_size} bytes, not {sizes[part]}"
                if problem:
                    break
            if problem is None:
                try:
                    self._read_rows(shard)
                    for part in parts[1:]:
                        self._open_array(files[part], shard["rows"])
                except StoreDamaged as e:
                    problem = str(e).split(" is damaged (", 1)[-1].rsplit("): ", 1)[0]
                except (ZscirError, FileNotFoundError) as e:
                    problem = str(e)
            if problem:
                _stderr(f"feature shard {shard['name']} of {self.root} is damaged ({problem}): "
                        f"its {shard['rows'] - len(shard['dead'])} image(s) are encoded again")
                dropped += shard["rows"] - len(shard["dead"])
            else:
                kept.append(shard)
        cons = manifest.get("consolidated")
        if cons is not None:
            sizes = cons.get("bytes") or {}
            for part in ("ids", "pooled"):
                path = self.root / cons[part]
                if not path.is_file() or (part in sizes and path.stat().st_size != sizes[part]):
                    manifest["consolidated"] = None  # derived: rebuilt from the shards below
                    break
        if dropped or len(kept) != len(manifest["shards"]):
            manifest["shards"] = kept
            manifest["consolidated"] = None
        return dropped

    def _consolidate(self, manifest) -> None:
        """Write all live pooled rows into one file so that readers get a single memmap."""
        live = self._live_rows(manifest)
        pooled = self._gather_pooled(manifest["shards"], live, self.meta["embed_dim"])
        gen = manifest["generation"] + 1
        names = {"pooled": f"pooled.g{gen:06d}.npy", "ids": f"ids.g{gen:06d}.json"}
        digests = {"pooled": save_npy(self.root / names["pooled"], pooled)}
        atomic_write_json(self.root / names["ids"], [i for _, _, i, _ in live], indent=None)
        digests["ids"] = sha256_file(self.root / names["ids"])
        manifest["consolidated"] = {**names, "sha256": digests,
                                    "bytes": {p: (self.root / names[p]).stat().st_size for p in ("pooled", "ids")}}
        self._commit(manifest, consolidated=True)
        self._collect_garbage(manifest)

    def _collect_garbage(self, manifest) -> None:
        """Remove files no manifest entry refers to: leftovers of replaced data or of a kill."""
        referenced = set()
        for shard in manifest["shards"]:
            referenced.update(p.name for p in shard_files(self.shard_dir, shard["name"]).values())
        if self.shard_dir.is_dir():
            for p in self.shard_dir.iterdir():
                if p.name not in referenced:
                    p.unlink(missing_ok=True)
        cons = manifest.get("consolidated") or {}
        for p in self.root.iterdir():
            if re.fullmatch(r"(pooled|ids)\.g\d+\.(npy|json)", p.name) and p.name not in cons.values():
                p.unlink(missing_ok=True)
            elif p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)


def _describe(fp: dict[str, Any]) -> str:
    bb = fp["backbone"]
    return f"{bb.get('model')}@{bb.get('pretrained')} (preprocess {fp['preprocess']})"
