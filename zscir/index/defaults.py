"""What `zscir retrieve` uses when not told: the shapes world, so that it answers on a fresh install.

- backbone: the default benchmark's own (the shapes world's shipped tiny CLIP, from its
  :class:`~zscir.benchmarks.base.BenchmarkDefaults`);
- model: its shipped query model for that backbone (FTI; else the image+text sum baseline);
- gallery: the default world's evaluation gallery, built into the cache directory on
  first use and indexed there (``<cache>/indexes/shapes-world-...``), reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from zscir.errors import ZscirError
from zscir.utils.paths import cache_dir

FALLBACK_BASELINE = "sum"
DEFAULT_BENCHMARK = "shapes"  # the benchmark whose own backbone and shipped model answer a bare `zscir retrieve`


def default_model_for(backbone_identity: dict) -> str:
    """The default benchmark's shipped query model for this backbone, else the sum baseline."""
    from zscir.benchmarks import get_benchmark

    pick = get_benchmark(DEFAULT_BENCHMARK).defaults.query_model
    return (pick(backbone_identity) if pick else None) or FALLBACK_BASELINE


def default_backbone(device: str = "cpu", preprocess: str = "targetpad"):
    """The default benchmark's own backbone (the shapes world's CLIP)."""
    from zscir.benchmarks import get_benchmark

    make = get_benchmark(DEFAULT_BENCHMARK).defaults.backbone
    if make is None:
        raise ZscirError(f"benchmark {DEFAULT_BENCHMARK!r} has no backbone of its own: pass --clip NAME --pretrained TAG|FILE")
    return make(device, preprocess)


def load_index_backbone(index, device: str = "cpu"):
    """The backbone an index was built with, from the source it recorded."""
    from zscir.backbone import load_backbone
    from zscir.backbone.loading import resolve_portable_path

    source = index.meta.get("backbone_source")
    if not source:
        raise ZscirError(f"index {index.root} does not record where its backbone's weights are: "
                         "pass --clip NAME --pretrained TAG|FILE")
    return load_backbone(source["name"], resolve_portable_path(source["pretrained"]), device=device,
                         preprocess=index.meta["preprocess"])


def world_index_dir(backbone) -> Path:
    from zscir.features import backbone_fingerprint

    fp = json.dumps(backbone_fingerprint(backbone), sort_keys=True)
    return cache_dir() / "indexes" / f"shapes-world-{hashlib.sha256(fp.encode()).hexdigest()[:12]}"


def world_gallery_index(backbone, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Index the default world's gallery with ``backbone`` (first use: build; afterwards: a quick check)."""
    from zscir.index.gallery import build_index
    from zscir.world.build import GALLERY_DIR, default_world

    world = default_world(progress=progress, log=log)
    out = world_index_dir(backbone)
    if log and not (out / "index.json").is_file():
        log(f"indexing the shapes world's gallery into {out} (first use; reused afterwards)")
    build_index(out, backbone, images=world / GALLERY_DIR, progress=progress, log=log)
    return out
