"""Updating a feature store: make it hold exactly the features of the images asked for.

An update plans under the store's lock (hash the images, keep rows whose key still
matches, drop the rest), encodes what is missing into new shards, then consolidates.
The manifest is rewritten (atomically) after each finished shard, so a killed update
keeps every shard it finished and the next update encodes only what is still missing.
Ctrl-C (SIGINT) first writes the batches already encoded as one more shard, so nothing
finished is lost; SIGINT is held back while a shard and the manifest are being written.

This module knows nothing of processes: spreading an update over several
(:mod:`zscir.features.distributed`) is the caller's choice, built on :func:`planned_update`,
:func:`adopt_shards` and :func:`finish_update`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from zscir.errors import ZscirError
from zscir.features.encode import encode_sources
from zscir.features.hash_cache import legacy_stat_keys, read_hashes, write_hashes
from zscir.features.interrupt import sigint_deferred
from zscir.features.maintenance import collect_garbage, compact, consolidate_pooled, drop_damaged
from zscir.features.manifest import StoreFiles, empty_manifest, stderr
from zscir.features.options import EncodeOptions
from zscir.features.shards import shard_files, write_shard
from zscir.features.sources import as_sources, default_workers


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
        return (f"{self.total} images: {self.encoded} encoded, {self.reused} reused, {self.deleted} dropped, "
                f"{len(self.corrupt)} corrupt skipped ({self.images_per_s:.1f} images/s)")


def update(files: StoreFiles, backbone, items: Iterable[Any], options: EncodeOptions,
           known_hashes: dict[str, str] | None = None, consolidate: bool = True) -> UpdateReport:
    """One process's update (see :meth:`zscir.features.FeatureStore.update`)."""
    with planned_update(files, backbone, items, options, known_hashes) as (manifest, todo, report):
        try:
            _encode_into(files, manifest, backbone, todo, report, options)
        except KeyboardInterrupt:
            stderr(f"interrupted: the {report.encoded} image(s) encoded in this run are saved in {files.root} "
                   f"({report.reused + report.encoded} in all); rerun the same command to encode the rest")
            raise
        if consolidate:
            finish_update(files, manifest)
    return report


@contextlib.contextmanager
def planned_update(files: StoreFiles, backbone, items, options: EncodeOptions, known_hashes=None):
    """Under the update lock: yield (manifest, sources still to encode, report) with every row that is
    no longer wanted already dropped; the caller encodes ``todo`` (or has it encoded) and commits."""
    t0 = time.perf_counter()
    force, precision, prune = options.force, options.precision, options.prune
    if files.exists() and not force:
        files.check_backbone(backbone, precision)  # before hashing anything
    known = {} if force else {**legacy_stat_keys(files), **read_hashes(files),
                              **(known_hashes or {})}
    sources, unusable = as_sources(items, workers=max(1, options.workers or default_workers()),
                                   progress=options.progress, known_hashes=known)
    report = UpdateReport(total=len(sources) + len(unusable), corrupt=list(unusable),
                          hashed=sum(1 for s in sources if s.stat and s.stat not in known))
    with files.locked(), files.missing_is_damage():
        if force:
            manifest = _reset(files, backbone, precision)
        else:
            files.init_meta(backbone, precision)
            manifest = files.read_manifest()
        if drop_damaged(files, manifest) or manifest.get("consolidated") is None:
            with sigint_deferred():
                files.commit(manifest, consolidated=False)
        collect_garbage(files, manifest)
        write_hashes(files, sources, known if not prune else {})

        live = files.live_rows(manifest)
        wanted = {s.id: s for s in sources}
        kept: set[str] = set()
        for s, r, image_id, key in live:
            shard = manifest["shards"][s]
            if image_id not in wanted and not prune:
                continue
            src = wanted.get(image_id)
            same = src is not None and (src.key == key or (src.stat is not None and src.stat == key))
            if same and (shard["tokens"] or not options.with_tokens):
                kept.add(image_id)
            else:
                shard["dead"].append(r)
                report.deleted += 1
        report.reused = len(kept)
        if report.deleted:
            with sigint_deferred():
                compact(files, manifest)
                files.commit(manifest, consolidated=False)
        yield manifest, [s for s in sources if s.id not in kept], report
    report.seconds = time.perf_counter() - t0


def finish_update(files: StoreFiles, manifest) -> None:
    """Write the consolidated pooled file (when the shards changed) and drop what nothing refers to."""
    if manifest.get("consolidated") is None:
        with sigint_deferred():
            consolidate_pooled(files, manifest)


def adopt_shards(files: StoreFiles, manifest, other: StoreFiles) -> int:
    """Append ``other``'s live shards to ``manifest`` (hard links, no copy: its files stay whole
    until ``other`` is deleted) and commit; return the rows adopted. Same backbone and precision only."""
    if not other.exists():
        return 0

    def what(meta):
        return meta["backbone"], meta["preprocess"], meta.get("precision", "fp32"), meta["embed_dim"]

    if what(other.meta) != what(files.meta):
        raise ZscirError(f"feature store {str(other.root)!r} was written with another backbone, preprocessing "
                         f"or precision than {str(files.root)!r}; delete it and rerun")
    theirs = other.read_manifest()
    files.shard_dir.mkdir(parents=True, exist_ok=True)
    rows = 0
    with sigint_deferred():
        for shard in theirs["shards"]:
            if shard["rows"] == len(shard["dead"]):
                continue
            name = files.new_shard_name(manifest)
            src, dst = shard_files(other.shard_dir, shard["name"]), shard_files(files.shard_dir, name)
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
        files.commit(manifest, consolidated=False)
    return rows


def _reset(files: StoreFiles, backbone, precision: str = "fp32") -> dict[str, Any]:
    """For ``force``: a fresh description and an empty manifest (garbage collection then drops the rest)."""
    try:
        meta = files.meta if files.exists() else None
    except ZscirError:
        meta = None  # damaged: rewritten below
    if meta is not None and meta.get("precision", "fp32") == precision:
        files.check_backbone(backbone, precision)
    else:
        if meta is not None:
            files.check_backbone(backbone, meta.get("precision", "fp32"))  # only the precision changes
        files.meta_path.unlink(missing_ok=True)
        files.init_meta(backbone, precision)
    try:
        generation = files.read_manifest()["generation"]
    except ZscirError:
        generation = 0
    manifest = {**empty_manifest(), "generation": generation}
    with sigint_deferred():
        files.write_manifest(manifest)
    return manifest


def _encode_into(files: StoreFiles, manifest, backbone, todo, report, options: EncodeOptions) -> None:
    if not todo:
        return
    with_tokens = options.with_tokens
    files.shard_dir.mkdir(parents=True, exist_ok=True)
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
            name = files.new_shard_name(manifest)
            digests = write_shard(files.shard_dir, name, buf_ids, buf_keys, np.concatenate(buf_pooled),
                                  np.concatenate(buf_tokens) if with_tokens else None)
            manifest["shards"].append({"name": name, "rows": len(buf_ids), "tokens": with_tokens, "dead": [],
                                       "sha256": digests, "bytes": files.sizes(name, digests)})
            files.commit(manifest, consolidated=False)
        buf_ids, buf_keys, buf_pooled, buf_tokens = [], [], [], []
        last_flush = time.perf_counter()

    bar = tqdm(total=len(todo), unit="img", desc="encoding images", disable=not options.progress,
               dynamic_ncols=True, file=sys.stderr)
    announced = False
    skipped_here = 0
    try:
        for batch in encode_sources(backbone, todo, options):
            report.corrupt.extend(batch.corrupt)
            skipped_here += len(batch.corrupt)
            bar.update(len(batch.ids) + len(batch.corrupt))
            if batch.corrupt:
                bar.set_postfix(corrupt=len(report.corrupt))
            if not batch.ids:
                continue
            if with_tokens and not announced and options.progress:
                per_image = batch.tokens[0].nbytes
                stderr(f"token features: {tuple(batch.tokens.shape[1:])} fp16 per image, "
                       f"~{per_image * len(todo) / 1e9:.2f} GB for {len(todo)} images "
                       "(update without tokens for a globals-only cache)")
                announced = True
            buf_ids += batch.ids
            buf_keys += batch.keys
            buf_pooled.append(batch.pooled)
            if with_tokens:
                buf_tokens.append(batch.tokens)
            report.encoded += len(batch.ids)
            if len(buf_ids) >= options.shard_size or time.perf_counter() - last_flush >= options.flush_seconds:
                flush()
        flush()
    except KeyboardInterrupt:
        flush()  # Ctrl-C: the batches already encoded become one more shard, then stop
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start
    report.images_per_s = (report.encoded + skipped_here) / max(elapsed, 1e-9)
