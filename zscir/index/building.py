"""Building and updating an index directory (layout: :mod:`zscir.index.gallery`).

Maintenance: the faiss index, the ids file and index.json are *derived* from the
features; a rerun that finds one of them missing or damaged (checksum) rebuilds it
from the features without re-encoding. ``force=True`` re-encodes everything.

Rebuilding is incremental: the store encodes only new or changed images and
drops deleted ones, then the faiss index is rebuilt from the stored features
(for exact search, a copy; for IVF, the trained centroids are kept while the
gallery size stays in the same range). New files get a new generation name and
``index.json`` is replaced last, so a reader or a killed build never sees a mix.
Each generation's files are recorded in index.json with their sha256, size and
per-block crc32 (:mod:`zscir.index.index_files`), checked when the index is opened.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss

from zscir.data.keys import fs_name, safe_name
from zscir.data.sources import FolderSource, open_image_source
from zscir.errors import ZscirError
from zscir.features import EncodeOptions, FeatureStore, backbone_fingerprint
from zscir.features.distributed import fail, update_store
from zscir.features.interrupt import sigint_deferred
from zscir.features.shards import save_npy
from zscir.index import search_index
from zscir.index.caption_column import PARTS as CAPTION_PARTS
from zscir.index.caption_column import (CaptionColumn, build_caption_column, read_column, same_column,
                                        write_column_files)
from zscir.index.index_files import (FORMAT, FORMAT_VERSION, GENERATION_FILE, describe, read_json_file,
                                     record_files, repair_hint)
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.hashing import sha256_file
from zscir.utils.locks import file_lock


def build_index(out: str | os.PathLike, backbone, images: str | os.PathLike | None = None,
                items: Iterable[Any] | None = None, kind: str = "auto", batch_size: int = 64,
                workers: int | None = None, progress: bool = True, exact_max: int = search_index.EXACT_MAX,
                log: Callable[[str], None] | None = None, model: str | None = None,
                force: bool = False, precision: str = "fp32", draft: bool = True, shard_size: int = 2048,
                ranks=None, max_index_memory: int | None = None, captioner=None, caption_source=None,
                caption_cache: str | os.PathLike | None = None, caption_batch_size: int = 16) -> dict[str, Any]:
    """Index a folder of ``images`` (ids = paths relative to it) or explicit ``items``; return a summary.

    ``items`` are what the feature store accepts: (id, path) pairs, paths, or ImageItems.
    ``model``, when given, is recorded as the index's default query model (a checkpoint path).
    ``force`` re-encodes every image and rebuilds every file (also of a damaged index).
    ``max_index_memory`` (bytes): what an approximate index may take in memory (zscir.index.autotune).
    Images that cannot be used (dangling symlinks, unreadable or undecodable files) are
    skipped and counted in ``summary["skipped"]``.
    ``workers``: decoding processes; ``precision``: fp32 or bf16/fp16 autocast (an index holds
    one precision); ``draft``: decode JPEGs at the smallest DCT scale covering the model input;
    ``shard_size``: images per feature shard (what a killed run keeps).
    ``ranks`` (:func:`zscir.features.distributed.current_ranks`, 2+ processes): every process
    calls this; each encodes a share of the images, the main process merges the features and
    builds the index (the others return ``{"rank", "features"}`` once their share is merged).
    ``captioner`` (a :class:`zscir.generation.base.Captioner`): also caption the images of ``caption_source``
    (an image source with the index's ids; default: ``images``) through the generation cache ``caption_cache``
    and store the captions' text features as the index's caption column (:mod:`zscir.index.caption_column`).
    """
    out = Path(out)
    check_out(out)  # before any lock file is written beside it
    if (images is None) == (items is None):
        raise ZscirError("give either an image folder (--images) or a list of items to index")
    if images is not None:
        pairs = FolderSource(images).files()  # the one --images lister (zscir.data.sources)
        if not pairs:
            raise ZscirError(f"no images (.jpg, .png, .webp, ...) found under {safe_name(str(images))!r} "
                             "(option --images)")
        items = pairs
    items = list(items)
    encode = EncodeOptions(batch_size=batch_size, workers=workers, progress=progress, force=force,
                           precision=precision, draft=draft, shard_size=shard_size)
    if ranks is not None and not ranks.is_main:  # a helper process: encode its share, the main one does the rest
        store = FeatureStore(out / "features", repair_hint=repair_hint(out, images))
        report = update_store(store, backbone, items, replace(encode, progress=False), ranks)
        return {"index": str(out), "rank": ranks.rank, "features": report.to_dict()}
    captions = None
    if captioner is not None:
        if caption_source is None and images is None:
            raise ZscirError("--captioner: give the image source to caption (caption_source) with explicit items")
        captions = CaptionRequest(captioner, caption_source or open_image_source(str(images)), caption_cache,
                                  caption_batch_size, progress)
    with _build_lock(out):  # two first-use builds of the same index: one builds, the other then finds it
        return _build_locked(out, backbone, images, items, kind, exact_max, log, model, encode, ranks,
                             max_index_memory, captions)


@dataclass(frozen=True)
class CaptionRequest:
    captioner: Any
    source: Any
    cache: Any
    batch_size: int
    progress: bool


def check_out(out: Path) -> None:
    """Refuse an ``out`` that exists and is not an index (a file, or a folder of something else)."""
    if out.exists() and not out.is_dir():
        raise ZscirError(f"--out {safe_name(str(out))!r} is a file, not an index directory: choose a new or "
                         "empty directory")
    if out.is_dir() and not (out / "index.json").exists() and not (out / "features").is_dir() \
            and any(out.iterdir()):
        raise ZscirError(f"--out {safe_name(str(out))!r} exists and is not a zscir index; choose an empty or "
                         "new directory")


@contextlib.contextmanager
def _build_lock(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        yield


def _say(log, msg: str) -> None:
    if log:
        log(msg)


def _check_existing(out, backbone, precision, force, log):
    """index.json of ``out`` (None for a new or damaged one); refuses another backbone or precision."""
    existing, damage = _read_meta(out)
    if damage:
        _say(log, f"{out / 'index.json'} is damaged ({damage}); rebuilding it from the features")
    if existing is not None and {"backbone": existing["backbone"], "preprocess": existing["preprocess"]} \
            != backbone_fingerprint(backbone):
        raise ZscirError(f"index {str(out)!r} was built with {describe(existing)}, not "
                         f"{describe(backbone_fingerprint(backbone))}: use another --out")
    have = (existing or {}).get("precision", "fp32")
    if existing is not None and have != precision and not force:
        raise ZscirError(f"index {str(out)!r} holds {have} features, not {precision} (--precision): features "
                         f"of two precisions are never mixed; use --precision {have}, another --out, or --force "
                         f"to re-encode every image in {precision}")
    return existing


def _build_locked(out, backbone, images, items, kind, exact_max, log, model, encode: EncodeOptions, ranks,
                  max_index_memory=None, captions: CaptionRequest | None = None):
    path_of = {safe_name(str(i[0])): safe_name(str(Path(i[1]).absolute())) for i in items if isinstance(i, tuple)}
    images_root = safe_name(str(Path(images).absolute())) if images is not None else None
    force, precision = encode.force, encode.precision
    try:
        existing = _check_existing(out, backbone, precision, force, log)
    except BaseException as e:
        if ranks is not None and ranks.world > 1:  # the other processes wait for the plan: tell them
            fail(ranks, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise

    t0 = time.perf_counter()
    store = FeatureStore(out / "features", repair_hint=repair_hint(out, images_root))
    report = update_store(store, backbone, items, encode, ranks)
    if report.corrupt:
        counts = _count_reasons(report.corrupt)
        _say(log, f"skipped {len(report.corrupt)} image(s) ({', '.join(f'{n} {r}' for r, n in counts.items())}), "
                  f"e.g. {report.corrupt[0][0]}: {report.corrupt[0][1]}")
    ids, pooled, _ = store.load(tokens=False)
    keys = store.keys(ids)
    paths = [path_of.get(i) for i in ids]
    escaped = sum(1 for i in ids if fs_name(i) != i)
    if escaped:
        _say(log, f"{escaped} file name(s) are not valid UTF-8: their ids write each such byte as \\xNN")

    wanted_kind = (search_index.choose_kind(len(ids), exact_max, pooled.shape[1], max_index_memory)
                   if kind == "auto" else kind)
    column, caption_summary = _caption_column(out, backbone, ids, existing, captions, log)
    stale = _stale_derived_files(out, existing, ids, paths) if existing is not None else "no index.json"
    if stale and existing is not None:
        _say(log, f"rebuilding the search index of {out}: {stale}")
    unchanged = (not force and not stale and not report.encoded and not report.deleted
                 and existing.get("precision", "fp32") == precision
                 and existing.get("requested_kind") == kind and existing.get("count") == len(ids)
                 and existing.get("exact_max") == exact_max
                 and existing.get("max_index_memory") == max_index_memory)
    if unchanged and column is not None and not same_column(existing, out, column):
        meta = _write_column(out, existing, column)
    elif unchanged:
        meta = existing
        recorded = "bytes" in meta and "blocks" in meta  # older indexes: their records are added now
        if (model is not None and meta.get("model") != model) or not recorded:
            meta["model"] = model if model is not None else meta.get("model")
            meta.update(record_files(out, meta["files"]))
            atomic_write_json(out / "index.json", meta)
    else:
        previous = None if force else _previous_index(out, existing, wanted_kind)
        t_index = time.perf_counter()
        built, recall = search_index.build(pooled, kind, previous, exact_max, max_memory=max_index_memory)
        if "fallback_reason" in built.params:
            _say(log, f"--kind {kind}: {built.params['fallback_reason']}")
        with sigint_deferred():
            meta = _write_generation(out, existing, backbone, built, recall, ids, paths, keys, images_root, kind,
                                     exact_max, precision, index_seconds=time.perf_counter() - t_index,
                                     max_index_memory=max_index_memory,
                                     model=model if model is not None else (existing or {}).get("model"),
                                     column=column)
    return {"index": str(out), "count": meta["count"], "kind": meta["kind"], "params": meta["params"],
            "recall": meta["recall"], "rebuilt": not unchanged, "features": report.to_dict(),
            "skipped": {"count": len(report.corrupt), "by_reason": _count_reasons(report.corrupt)},
            "escaped_ids": escaped, "precision": precision,
            "processes": ranks.world if ranks is not None else 1, "seconds": time.perf_counter() - t0,
            **({"captions": caption_summary} if caption_summary else {})}


def _caption_column(out: Path, backbone, ids, existing, captions: CaptionRequest | None, log):
    """(the caption column the new generation holds, or None; a summary of the captioning, or None)."""
    if captions is not None:
        return build_caption_column(out, backbone, ids, captions.source, captions.captioner, captions.cache,
                                    captions.batch_size, captions.progress, log)
    kept = read_column(out, existing) if existing is not None else None
    if kept is not None and len(kept.captions) != len(ids):
        raise ZscirError(f"index {str(out)!r} has a caption column (captioner {kept.record.get('captioner')}) and "
                         "its images changed: pass --captioner again to caption the new images too")
    return kept, None


def _write_column(out: Path, meta: dict, column: CaptionColumn) -> dict[str, Any]:
    """index.json ``meta`` with a new generation of the caption column (the other files kept)."""
    gen = _next_generation(out, meta)
    files = {**{k: v for k, v in meta["files"].items() if k not in CAPTION_PARTS},
             **write_column_files(out, gen, column)}
    meta = {**meta, "generation": gen, "files": files, **record_files(out, files),
            "columns": {"caption": column.record}}
    atomic_write_json(out / "index.json", meta)
    _drop_old_generations(out, files)
    return meta


def _drop_old_generations(out: Path, files: dict[str, str]) -> None:
    for p in out.iterdir():  # older generations: no reader opens them any more once index.json moved on
        m = GENERATION_FILE.fullmatch(p.name)
        if m and p.name not in files.values():
            p.unlink(missing_ok=True)


def _count_reasons(corrupt: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in corrupt:
        label = reason.split(" (")[0]
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _read_meta(out: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(index.json, None), or (None, why it is damaged), or (None, None) for a new index."""
    path = out / "index.json"
    if not path.is_file():
        check_out(out)
        return None, None
    try:
        meta = read_json_file(path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not {"backbone", "preprocess",
                                                                            "files"} <= set(meta):
            raise ValueError("not a zscir index description")
    except (OSError, ValueError) as e:
        if not (out / "features").is_dir():
            raise ZscirError(f"{path} is damaged ({str(e).splitlines()[0][:120]}) and there are no features "
                             f"to rebuild it from: {repair_hint(out)}") from None
        return None, str(e).splitlines()[0][:120] or type(e).__name__
    return meta, None


def _stale_derived_files(out: Path, meta: dict[str, Any], ids: list[str], paths: list) -> str | None:
    """Why the faiss index or the ids file must be rebuilt (missing, damaged, other images), else None."""
    digests = meta.get("sha256") or {}
    for part in meta["files"]:
        path = out / meta["files"][part]
        if not path.is_file():
            return f"{path.name} is missing"
        if part in digests and sha256_file(path) != digests[part]:
            return f"{path.name} is damaged (its sha256 differs from index.json's)"
    try:
        rows = read_json_file(out / meta["files"]["ids"])
    except (OSError, ValueError) as e:
        return f"{meta['files']['ids']} is unreadable ({e})"
    if rows.get("ids") != ids or rows.get("paths") != paths or "keys" not in rows:
        return "the images or their paths changed"
    return None


def _previous_index(out: Path, existing: dict | None, kind: str) -> faiss.Index | None:
    if existing is None or existing.get("kind") != kind or kind not in search_index.IVF_KINDS:
        return None
    try:
        return faiss.read_index(str(out / existing["files"]["faiss"]))
    except RuntimeError:
        return None


def _next_generation(out: Path, existing: dict | None) -> int:
    on_disk = [int(m.group(2)) for p in out.iterdir()
               if (m := GENERATION_FILE.fullmatch(p.name))]
    return max([(existing or {}).get("generation", 0), *on_disk]) + 1


def _write_generation(out: Path, existing, backbone, built, recall, ids, paths, keys, images_root, kind, exact_max,
                      precision: str, index_seconds: float, model: str | None,
                      max_index_memory: int | None = None, column: CaptionColumn | None = None) -> dict[str, Any]:
    gen = _next_generation(out, existing)
    files = {"ids": f"ids.g{gen:06d}.json", "vectors": f"vectors.g{gen:06d}.npy"}
    if column is not None:
        files.update(write_column_files(out, gen, column))
    if isinstance(built.index, faiss.Index):
        files["faiss"] = f"faiss.g{gen:06d}.index"
        with atomic_path(out / files["faiss"]) as tmp:
            faiss.write_index(built.index, str(tmp))
    save_npy(out / files["vectors"], built.vectors)
    # resolved once here, so that opening the index needs no realpath per image (recognising a query's own file)
    realpaths = [_resolved(p) for p in paths]
    atomic_write_json(out / files["ids"], {"ids": list(ids), "paths": list(paths), "keys": list(keys),
                                           "realpaths": realpaths}, indent=None)
    k = min(search_index.RECALL_K, len(ids))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": gen, "files": files,
            **record_files(out, files),
            **backbone_fingerprint(backbone), "precision": precision,
            "backbone_source": getattr(backbone, "source", None),
            "images_root": images_root,
            "count": len(ids), "requested_kind": kind, "exact_max": exact_max, "max_index_memory": max_index_memory,
            "kind": built.kind,
            "params": built.params,
            "recall": {"k": k, "value": recall,
                       "against": "exact inner-product search" if built.kind in search_index.APPROXIMATE
                       else "exact (this index is exact)",
                       "queries": search_index.RECALL_QUERIES if built.kind in search_index.APPROXIMATE else 0,
                       "queries_are": "composed (sum of two gallery vectors), held out from the index's training "
                       "sample where the gallery is larger than the sample"
                       if built.kind in search_index.APPROXIMATE else None},
            "model": model, "index_seconds": round(index_seconds, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"columns": {"caption": column.record}} if column is not None else {})}
    atomic_write_json(out / "index.json", meta)
    _drop_old_generations(out, files)
    return meta


def _resolved(path: str | None) -> str | None:
    """The real path of ``path``, or None when it is the same (most files) or there is none."""
    if not path:
        return None
    real = safe_name(os.path.realpath(fs_name(path)))
    return None if real == path else real


