"""The shapes world: zscir's offline procedural benchmark, stored in the CIRCO layout.

Its annotation files are CIRCO's schema (``annotations/{val,test,val_coarse,
test_coarse,...}.json``) over a gallery list in CIRCO's place, so the CIRCO
loader reads it unchanged; the train triplets rank the world's separate train
gallery (``train_gallery/``). Without a root, the default world is built on
first use (``zscir.world.build.default_world``) and reused afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zscir.benchmarks import circo
from zscir.benchmarks.base import BenchmarkDefaults, EvalSplit
from zscir.errors import ZscirError

FINE_SPLITS = ("val", "test", "train")
TRAIN_LIST = Path("train_gallery/image_info.json")   # the world's train gallery (zscir.world.build)
TRAIN_DIR = Path("train_gallery/images")
COARSE_SPLITS = ("val_coarse", "test_coarse", "train_coarse")


def default_root() -> Path:
    try:
        from zscir.world.build import default_world  # imported on use: building the world is heavy
    except ImportError as e:
        raise ZscirError(f"the shapes world is not available in this installation ({e}): pass --root DIR "
                         "with a world made by `zscir world generate`") from None
    # messages to stderr: stdout may carry `zscir eval --json` output
    return Path(default_world(log=lambda msg: print(msg, file=sys.stderr, flush=True)))


def load(root: str | Path | None = None, split: str = "val", benchmark: str = "shapes") -> list[EvalSplit]:
    root = default_root() if root is None else root
    if split.startswith("train"):
        # train triplets rank their own gallery, disjoint from the evaluation one
        return circo.load(root, split, benchmark=benchmark, gallery_list=TRAIN_LIST, image_dir=TRAIN_DIR,
                          gallery_label=f"{benchmark}-train")
    return circo.load(root, split, benchmark=benchmark)


# the world's own models and ceilings (imported on use: the world's modules are heavy)
def _backbone(device: str = "cpu", preprocess: str = "targetpad"):
    from zscir.world.shipped import shapes_backbone

    return shapes_backbone(device=device, preprocess=preprocess)


def _models(backbone) -> list[str]:
    from zscir.world.shipped import shipped_checkpoints

    return [str(p) for p in shipped_checkpoints(backbone.identity)]


def _query_model(backbone_identity: dict) -> str | None:
    from zscir.world.shipped import shipped_fti_checkpoint

    ckpt = shipped_fti_checkpoint(backbone_identity)
    return str(ckpt) if ckpt else None


def _oracles(root: Path, split: EvalSplit) -> dict[str, list[str]]:
    from zscir.world.oracles import oracle_texts

    return oracle_texts(root, split)


# the oracle rows of `zscir eval shapes` (texts made by zscir.world.oracles), in table order
ORACLE_NOTES = {
    "caption": "the target's canonical caption as the text query",
    "edit": "the reference's scene with the edit applied by the world's generator, captioned (coarse: one reading)",
    "inversion": "'a photo of {reference caption} but {text}': the true caption in place of the pseudo-words",
    "reference": "the reference's canonical caption alone (a floor, not a ceiling)",
}
DEFAULTS = BenchmarkDefaults(backbone=_backbone, models=_models, query_model=_query_model, oracles=_oracles,
                             oracle_notes=ORACLE_NOTES)
