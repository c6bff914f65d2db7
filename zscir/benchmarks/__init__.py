"""Benchmark loaders behind one registry: name -> how to load it and its protocol defaults.

    from zscir.benchmarks import get_benchmark, load_splits
    splits = load_splits("cirr", root, "val")     # -> [EvalSplit]

An entry is a :class:`BenchmarkSpec` or the import path of one (``"module:ATTRIBUTE"``): a plugin above this
layer (the shapes world) is named so and imported on first use, so that nothing here imports it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from zscir.benchmarks import circo, cirr, fashioniq, fine
from zscir.benchmarks.base import KINDS, BenchmarkDefaults, BenchmarkSpec, EvalSplit, Query
from zscir.errors import ZscirError

BENCHMARKS: dict[str, BenchmarkSpec | str] = {spec.name: spec for spec in [
    BenchmarkSpec("circo", "CIRCO", "circo", circo.load, ("val", "test"), ("val",), remove_reference=False,
                  root_hint="the CIRCO folder holding annotations/ and COCO2017_unlabeled/",
                  gallery_definition="all images of the split's image list (COCO 2017 unlabeled, 123,403 for val "
                                     "and test)"),
    BenchmarkSpec("cirr", "CIRR", "cirr", cirr.load, ("val", "test1", "train"), ("val",), remove_reference=True,
                  root_hint="the CIRR folder holding cirr/{captions,image_splits} (or captions/, image_splits/) and dev/, test1/",
                  gallery_definition="the split's image_splits/split.rc2.{split}.json, every image (the reference "
                                     "included unless removed)"),
    BenchmarkSpec("fashioniq", "FashionIQ", "fashioniq", fashioniq.load, ("val", "test", "train"), ("val",),
                  remove_reference=False, options=("categories",),
                  root_hint="the FashionIQ folder holding captions/, image_splits/ and images/",
                  protocol_choices=("fiq_captions",),
                  gallery_definition="the category's image_splits/split.{category}.{split}.json"),
    BenchmarkSpec("fine-fashioniq", "Fine-FashionIQ", "fashioniq", fine.load_fashioniq, ("val", "train"), ("val",),
                  remove_reference=True, options=("categories", "gallery"),
                  root_hint="the FashionIQ folder with FineCIR's fiq.fine.*.jsonl in captions/",
                  protocol_choices=("fine_gallery",),
                  gallery_definition="fine: the images of the queries (candidate then target, first appearance); "
                                     "split: the category's image split"),
    BenchmarkSpec("fine-cirr", "Fine-CIRR", "cirr", fine.load_cirr, ("val", "train"), ("val",), remove_reference=True,
                  root_hint="the CIRR folder with FineCIR's cirr.fine.*.jsonl in captions/",
                  gallery_definition="CIRR's image_splits/split.rc2.{split}.json"),
]}
BENCHMARKS["shapes"] = "zscir.world.benchmark:SPEC"   # the shapes world, a plugin (zscir.world)


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        entry = BENCHMARKS[name]
    except KeyError:
        raise ZscirError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}") from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        try:
            plugin = importlib.import_module(module)
        except ImportError as e:
            raise ZscirError(f"benchmark {name!r} is not available in this installation ({e})") from None
        entry = BENCHMARKS[name] = getattr(plugin, attribute)
    return entry


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
