"""The shapes world: zscir's offline procedural benchmark, stored in the CIRCO layout.

Its annotation files are CIRCO's schema (``annotations/{val,test,val_coarse,
test_coarse,...}.json``) over a gallery list in CIRCO's place, so the CIRCO
loader reads it unchanged; the train triplets rank the world's separate train
gallery (``train_gallery/``), the multi-turn sequences theirs (``multiturn_gallery/``;
each query's sequence and turn go to ``EvalSplit.notes["multiturn"]``). Without a root, the default world is built on
first use (``zscir.world.build.default_world``) and reused afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zscir.benchmarks import circo
from zscir.benchmarks.base import BenchmarkDefaults, EvalSplit, field_of, read_json
from zscir.errors import ZscirError

FINE_SPLITS = ("val", "test", "train")
TRAIN_LIST = Path("train_gallery/image_info.json")   # the world's train gallery (zscir.world.build)
TRAIN_DIR = Path("train_gallery/images")
COARSE_SPLITS = ("val_coarse", "test_coarse", "train_coarse")
MULTITURN_SPLITS = ("multiturn", "multiturn_coarse")   # sequences of edits, over their own gallery
MULTITURN_LIST = Path("multiturn_gallery/image_info.json")
MULTITURN_DIR = Path("multiturn_gallery/images")


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
    if split.startswith("multiturn"):
        return [_with_turns(s) for s in circo.load(root, split, benchmark=benchmark, gallery_list=MULTITURN_LIST,
                                                    image_dir=MULTITURN_DIR, gallery_label=f"{benchmark}-multiturn")]
    return circo.load(root, split, benchmark=benchmark)


def _with_turns(split: EvalSplit) -> EvalSplit:
    """Record each query's (sequence, turn) in ``notes["multiturn"]``: the split is evaluated turn by turn."""
    path = Path(split.sources[0])
    records = read_json(path, f"shapes world {split.split} annotations")
    sequence = [field_of(r, "sequence", path, f"record {n}") for n, r in enumerate(records)]
    turn = [field_of(r, "turn", path, f"record {n}") for n, r in enumerate(records)]
    split.notes["multiturn"] = {"sequence": sequence, "turn": turn}
    return split


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


def _gallery(backbone, progress: bool = True, log=None) -> Path:
    from zscir.world.gallery_index import world_gallery_index

    return world_gallery_index(backbone, progress=progress, log=log)


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
DEFAULTS = BenchmarkDefaults(backbone=_backbone, models=_models, query_model=_query_model, gallery=_gallery,
                             oracles=_oracles, oracle_notes=ORACLE_NOTES)
