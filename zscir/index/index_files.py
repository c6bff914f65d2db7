"""The files of an index directory: format, names, and the checksums that make opening one trustworthy.

At build, every file a generation writes gets a record in ``index.json``::

    "sha256": {part: hex}                      full-file digest (what --verify checks)
    "bytes":  {part: size}                     checked on every open (a stat)
    "blocks": {part: {"size": BLOCK_BYTES, "crc32": [..]}}   one crc32 per 64 MiB block

On open (:func:`check_on_open`): the size of every file; the sha256 of the small files (the
ids file: names, paths, content keys); the crc32 of every block of the large ones (the
fp16 vectors and the faiss index). The cost is one sequential read of the index's files at
crc32 / sha256 speed on top of parsing the ids file; eval/bench_index_open.py measures it as
a ratio of the open time without the check. ``zscir index --verify`` compares full sha256
digests of every file, the feature store's included. Indexes built before the sizes and
blocks were recorded open with their ids file checked only, and say so once per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any

FORMAT = "zscir-index"
FORMAT_VERSION = 1
BLOCK_BYTES = 64 * 2 ** 20    # crc32 granularity of the large files
SMALL = ("ids", "captions")   # parts checked by full sha256 on open; the others by their crc32 blocks
GENERATION_FILE = re.compile(r"(faiss|ids|vectors|captions|caption-vectors)\.g(\d+)\.(index|json|npy)")

_noticed: set[str] = set()    # indexes whose missing records were already reported in this process


def repair_hint(root: str | os.PathLike, images: str | None = None) -> str:
    """What fixes a damaged index: deleting it, or rebuilding it in place."""
    where = f" --images {images}" if images else " --images DIR"
    return f"delete {str(root)!r} or run `zscir index --force{where} --out {root}`"


def read_json_file(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def describe(meta: dict) -> str:
    bb = meta["backbone"]
    return f"{bb.get('model')}@{bb.get('pretrained')} (preprocess {meta['preprocess']})"


def file_records(path: Path) -> tuple[str, int, list[int]]:
    """(sha256, size, crc32 of each BLOCK_BYTES block) of ``path``, in one read."""
    sha, size, crcs = hashlib.sha256(), 0, []
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            sha.update(block)
            crcs.append(zlib.crc32(block))
            size += len(block)
    return sha.hexdigest(), size, crcs


def record_files(root: Path, files: dict[str, str]) -> dict[str, Any]:
    """The ``sha256`` / ``bytes`` / ``blocks`` records of index.json for the generation's ``files``."""
    sha, sizes, blocks = {}, {}, {}
    for part, name in files.items():
        sha[part], sizes[part], crcs = file_records(root / name)
        blocks[part] = {"size": BLOCK_BYTES, "crc32": crcs}
    return {"sha256": sha, "bytes": sizes, "blocks": blocks}


def _crc_mismatch(path: Path, record: dict[str, Any]) -> str | None:
    size = int(record["size"])
    with open(path, "rb") as f:
        for n, want in enumerate(record["crc32"]):
            if zlib.crc32(f.read(size)) != want:
                return f"bytes {n * size}-{(n + 1) * size - 1} differ from what was written (crc32)"
    return None


def check_on_open(root: Path, meta: dict[str, Any]) -> tuple[str, str] | None:
    """(file name, what is wrong) for the first file that differs from its records, else None."""
    files, sizes = meta["files"], meta.get("bytes")
    digests, blocks = meta.get("sha256") or {}, meta.get("blocks")
    for part, name in files.items():
        path = root / name
        if sizes is not None and part in sizes:
            have = path.stat().st_size
            if have != sizes[part]:
                return name, f"{have} bytes, index.json records {sizes[part]}"
    for part, name in files.items():
        path = root / name
        if part in SMALL and part in digests:
            if hashlib.sha256(path.read_bytes()).hexdigest() != digests[part]:
                return name, "content differs from index.json (sha256)"
        elif blocks is not None and part in blocks:
            problem = _crc_mismatch(path, blocks[part])
            if problem:
                return name, problem
    if sizes is None or blocks is None:
        _notice_once(root)
    return None


def _notice_once(root: Path) -> None:
    key = str(root.absolute())
    if key in _noticed:
        return
    _noticed.add(key)
    print(f"note: index {str(root)!r} was built before zscir recorded file sizes and block checksums: only "
          f"its ids file is checked on open (`zscir index --verify --out {root}` checks every file; a rerun "
          "of `zscir index` records them)", file=sys.stderr)
