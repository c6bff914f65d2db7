"""Keeping a feature store whole: checking it, dropping damaged shards, compacting deleted rows,
consolidating the pooled rows into one file and removing what nothing refers to.

A damaged shard costs time, never a wrong feature: an update drops it and encodes its images
again (:func:`drop_damaged`: a stat per file; a file whose size, mtime or ctime moved on since the
manifest recorded it is hashed, and kept when its sha256 still matches). A damaged consolidated
file is rebuilt from the shards. :func:`verify` compares full checksums of every file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from zscir.errors import ZscirError
from zscir.features.interrupt import sigint_deferred
from zscir.features.manifest import StoreDamaged, StoreFiles, stat_record, stderr
from zscir.features.reading import gather_pooled
from zscir.features.shards import save_npy, shard_files, write_shard
from zscir.utils.atomic import atomic_write_json
from zscir.utils.hashing import sha256_file

COMPACT_DEAD_FRACTION = 0.5  # rewrite a shard once more than half of its rows are deleted


def verify(files: StoreFiles) -> tuple[int, list[str]]:
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
        meta = files.meta
        checked += 1
        manifest = files.read_manifest()
    except ZscirError as e:
        return checked, [str(e)]
    for shard in manifest["shards"]:
        paths = shard_files(files.shard_dir, shard["name"])
        digests = shard.get("sha256") or {}
        parts = ["rows", "pooled"] + (["tokens"] if shard["tokens"] else [])
        for part in parts:
            if not check_digest(paths[part], digests.get(part)):
                continue
            try:
                if part == "rows":
                    files.read_rows(shard)
                else:
                    array = files.open_array(paths[part], shard["rows"])
                    if part == "pooled" and array.shape[1:] != (meta["embed_dim"],):
                        problems.append(f"{paths[part]}: shape {array.shape}, expected [n, {meta['embed_dim']}]")
            except (ZscirError, FileNotFoundError) as e:
                problems.append(str(e))
    cons = manifest.get("consolidated")
    if cons is not None:
        digests = cons.get("sha256") or {}
        ok = all([check_digest(files.root / cons[p], digests.get(p)) for p in ("ids", "pooled")])
        if ok and not problems:
            try:
                ids = files.read_json(files.root / cons["ids"])
                live = [i for _, _, i, _ in files.live_rows(manifest)]
                if ids != live:
                    problems.append(f"{files.root / cons['ids']}: ids differ from the shards'")
                files.open_array(files.root / cons["pooled"], len(live))
            except (ZscirError, FileNotFoundError) as e:
                problems.append(str(e))
    return checked, problems


def drop_damaged(files: StoreFiles, manifest: dict[str, Any]) -> int:
    """Drop shards whose files are missing, of the wrong size, changed since written or unreadable;
    return the rows dropped. Their images are simply encoded again by this update."""
    stats = manifest.setdefault("stat", {})
    refreshed = False

    def problem_of(rel: str, sha: str | None, size: int | None) -> str | None:
        nonlocal refreshed
        path = files.root / rel
        if not path.is_file():
            return f"{path.name} is missing"
        now = stat_record(path)
        if size is not None and now[0] != size:
            return f"{path.name} has {now[0]} bytes, not {size}"
        if stats.get(rel) == now:
            return None
        if sha is not None and sha256_file(path) != sha:  # written since it was recorded: is it still the same?
            return f"{path.name} was changed after it was written (its sha256 differs from the manifest's)"
        stats[rel], refreshed = now, True  # the same bytes (copied, touched): remember the new stat
        return None

    kept, dropped = [], 0
    for shard in manifest["shards"]:
        paths = shard_files(files.shard_dir, shard["name"])
        parts = ["rows", "pooled"] + (["tokens"] if shard["tokens"] else [])
        sizes, digests = shard.get("bytes") or {}, shard.get("sha256") or {}
        problem = None
        for part in parts:
            problem = problem_of(f"shards/{paths[part].name}", digests.get(part), sizes.get(part))
            if problem:
                break
        if problem is None:
            try:
                files.read_rows(shard)
                for part in parts[1:]:
                    files.open_array(paths[part], shard["rows"])
            except StoreDamaged as e:
                problem = str(e).split(" is damaged (", 1)[-1].rsplit("): ", 1)[0]
            except (ZscirError, FileNotFoundError) as e:
                problem = str(e)
        if problem:
            stderr(f"feature shard {shard['name']} of {files.root} is damaged ({problem}): "
                   f"its {shard['rows'] - len(shard['dead'])} image(s) are encoded again")
            dropped += shard["rows"] - len(shard["dead"])
        else:
            kept.append(shard)
    cons = manifest.get("consolidated")
    if cons is not None:
        sizes, digests = cons.get("bytes") or {}, cons.get("sha256") or {}
        if any(problem_of(cons[part], digests.get(part), sizes.get(part)) for part in ("ids", "pooled")):
            manifest["consolidated"] = None  # derived: rebuilt from the shards
    if dropped or len(kept) != len(manifest["shards"]):
        manifest["shards"] = kept
        manifest["consolidated"] = None
    elif refreshed and manifest.get("consolidated") is not None:
        with sigint_deferred():
            files.write_manifest(manifest)  # the new stats, so that the next update does not hash again
    return dropped


def compact(files: StoreFiles, manifest) -> None:
    """Drop fully deleted shards; rewrite those that are mostly deleted."""
    kept = []
    for shard in manifest["shards"]:
        live_rows = shard["rows"] - len(shard["dead"])
        if live_rows == 0:
            continue
        if len(shard["dead"]) > COMPACT_DEAD_FRACTION * shard["rows"]:
            shard = _rewrite_shard(files, manifest, shard)
        kept.append(shard)
    manifest["shards"] = kept


def _rewrite_shard(files: StoreFiles, manifest, shard) -> dict[str, Any]:
    paths = shard_files(files.shard_dir, shard["name"])
    ids, keys = files.read_rows(shard)
    dead = set(shard["dead"])
    rows = np.array([r for r in range(shard["rows"]) if r not in dead], dtype=np.int64)
    name = files.new_shard_name(manifest)
    digests = write_shard(files.shard_dir, name, [ids[r] for r in rows], [keys[r] for r in rows],
                          files.open_array(paths["pooled"], shard["rows"])[rows],
                          files.open_array(paths["tokens"], shard["rows"])[rows] if shard["tokens"] else None)
    return {"name": name, "rows": len(rows), "tokens": shard["tokens"], "dead": [], "sha256": digests,
            "bytes": files.sizes(name, digests)}


def consolidate_pooled(files: StoreFiles, manifest) -> None:
    """Write all live pooled rows into one file so that readers get a single memmap."""
    live = files.live_rows(manifest)
    pooled = gather_pooled(files, manifest["shards"], live, files.meta["embed_dim"])
    gen = manifest["generation"] + 1
    names = {"pooled": f"pooled.g{gen:06d}.npy", "ids": f"ids.g{gen:06d}.json"}
    digests = {"pooled": save_npy(files.root / names["pooled"], pooled)}
    atomic_write_json(files.root / names["ids"], [i for _, _, i, _ in live], indent=None)
    digests["ids"] = sha256_file(files.root / names["ids"])
    manifest["consolidated"] = {**names, "sha256": digests,
                                "bytes": {p: (files.root / names[p]).stat().st_size for p in ("pooled", "ids")}}
    files.commit(manifest, consolidated=True)
    collect_garbage(files, manifest)


def collect_garbage(files: StoreFiles, manifest) -> None:
    """Remove files no manifest entry refers to: leftovers of replaced data or of a kill."""
    referenced = set()
    for shard in manifest["shards"]:
        referenced.update(p.name for p in shard_files(files.shard_dir, shard["name"]).values())
    if files.shard_dir.is_dir():
        for p in files.shard_dir.iterdir():
            if p.name not in referenced:
                p.unlink(missing_ok=True)
    cons = manifest.get("consolidated") or {}
    for p in files.root.iterdir():
        if re.fullmatch(r"(pooled|ids)\.g\d+\.(npy|json)", p.name) and p.name not in cons.values():
            p.unlink(missing_ok=True)
        elif p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
