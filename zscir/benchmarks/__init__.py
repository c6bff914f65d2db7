"""Benchmark loaders behind one registry: name -> how to load it and its protocol defaults.

    from zscir.benchmarks import get_benchmark, load_splits
    splits = load_splits("cirr", root, "val")     # -> [EvalSplit]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zscir.benchmarks import circo, cirr, fashioniq, fine, shapes
from zscir.benchmarks.base import KINDS, BenchmarkDefaults, EvalSplit, Query
from zscir.errors import ZscirError


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    title: str
    load: Callable[..., list[EvalSplit]]
    splits: tuple[str, ...]            # splits the official layout has
    default_splits: tuple[str, ...]    # what `zscir eval NAME` runs without --split
    remove_reference: bool             # protocol default: drop the reference from the ranking
    options: tuple[str, ...] = ()      # loader keywords set from the protocol
    default_root: Callable[[], Path] | None = None
    root_hint: str = ""
    defaults: BenchmarkDefaults = BenchmarkDefaults()   # own backbone, shipped models, oracle ceilings


BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in [
    BenchmarkSpec("circo", "CIRCO", circo.load, ("val", "test"), ("val",), remove_reference=False,
                  root_hint="the CIRCO folder holding annotations/ and COCO2017_unlabeled/"),
    BenchmarkSpec("cirr", "CIRR", cirr.load, ("val", "test1", "train"), ("val",), remove_reference=True,
                  root_hint="the CIRR folder holding cirr/{captions,image_splits} (or captions/, image_splits/) and dev/, test1/"),
    BenchmarkSpec("fashioniq", "FashionIQ", fashioniq.load, ("val", "test", "train"), ("val",),
                  remove_reference=False, options=("categories",),
                  root_hint="the FashionIQ folder holding captions/, image_splits/ and images/"),
    BenchmarkSpec("fine-fashioniq", "Fine-FashionIQ", fine.load_fashioniq, ("val", "train"), ("val",),
                  remove_reference=True, options=("categories", "gallery"),
                  root_hint="the FashionIQ folder with FineCIR's fiq.fine.*.jsonl in captions/"),
    BenchmarkSpec("fine-cirr", "Fine-CIRR", fine.load_cirr, ("val", "train"), ("val",), remove_reference=True,
                  root_hint="the CIRR folder with FineCIR's cirr.fine.*.jsonl in captions/"),
    BenchmarkSpec("shapes", "shapes world", shapes.load,
                  shapes.FINE_SPLITS + shapes.COARSE_SPLITS + shapes.MULTITURN_SPLITS,
                  ("val", "val_coarse"), remove_reference=False, default_root=shapes.default_root,
                  defaults=shapes.DEFAULTS),
]}


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ZscirError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}") from None


def resolve_root(spec: BenchmarkSpec, root: str | Path | None) -> Path:
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise ZscirError(f"benchmark root {str(root)!r} (option --root) is not a directory")
        return root
    if spec.default_root is None:
        raise ZscirError(f"{spec.title} needs --root: {spec.root_hint}")
    return spec.default_root()


def load_splits(name: str, root: str | Path | None, split: str, **options) -> list[EvalSplit]:
    """Load one split of benchmark ``name``; ``options`` not used by this benchmark are ignored."""
    spec = get_benchmark(name)
    kwargs = {k: v for k, v in options.items() if k in spec.options and v is not None}
    return spec.load(resolve_root(spec, root), split, **kwargs)


__all__ = ["BENCHMARKS", "BenchmarkDefaults", "BenchmarkSpec", "EvalSplit", "Query", "KINDS", "get_benchmark",
           "load_splits", "resolve_root"]
