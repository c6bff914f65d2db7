"""The shapes world's evaluation gallery as a search index: what `zscir retrieve` and `zscir serve` search
when given no --index (through the shapes benchmark's ``BenchmarkDefaults.gallery``).

Built into the cache directory on first use (``<cache>/indexes/shapes-world-<backbone hash>``: one index
per backbone), reused afterwards (a rerun only checks that the gallery has not changed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from zscir.features import backbone_fingerprint
from zscir.index.gallery import build_index
from zscir.utils.paths import cache_dir
from zscir.world import build


def world_index_dir(backbone) -> Path:
    """Where the default world's gallery is indexed for ``backbone``."""
    fp = json.dumps(backbone_fingerprint(backbone), sort_keys=True)
    return cache_dir() / "indexes" / f"shapes-world-{hashlib.sha256(fp.encode()).hexdigest()[:12]}"


def world_gallery_index(backbone, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Index the default world's gallery with ``backbone`` (first use: build; afterwards: a quick check)."""
    world = build.default_world(progress=progress, log=log)
    out = world_index_dir(backbone)
    if log and not (out / "index.json").is_file():
        log(f"indexing the shapes world's gallery into {out} (first use; reused afterwards)")
    build_index(out, backbone, images=world / build.GALLERY_DIR, progress=progress, log=log)
    return out
