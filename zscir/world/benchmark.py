"""The shapes world as a benchmark: zscir's offline procedural benchmark, stored in the CIRCO layout.

The benchmark registry names it by import path (``zscir.benchmarks.BENCHMARKS["shapes"]`` is
``"zscir.world.benchmark:SPEC"``) and imports it on first use: the world is a plugin on top of the
layers below it. Its :data:`DEFAULTS` (backbone, shipped query models, the query model `zscir retrieve`
uses, oracle ceilings, the captioner and editor of the language-model methods, the rows that split their
pipeline) are the only source of world defaults for the commands below it.

Its annotation files are CIRCO's schema (``annotations/{val,test,val_coarse,
test_coarse,...}.json``) over a gallery list in CIRCO's place, so the CIRCO
loader reads it unchanged; the train triplets rank the world's separate train
gallery (``train_gallery/``), the multi-turn sequences theirs (``multiturn_gallery/``;
each query's sequence and turn go to ``EvalSplit.notes["multiturn"]``). Every query carries its edits: their
kinds, in order, go to ``EvalSplit.notes[EDIT_KINDS_NOTE]`` (one list per query; the per-edit-type table of
:mod:`zscir.evaluation.edit_types`). Without a root, the default world is built on first use
(``zscir.world.build.default_world``, seed 0; ``default_root(seed=N)`` builds world N: ``zscir eval --seeds``)
and reused afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zscir.benchmarks import circo
from zscir.benchmarks.base import BenchmarkDefaults, BenchmarkSpec, EvalSplit, field_of, read_json
from zscir.evaluation.edit_types import EDIT_KINDS_NOTE
from zscir.world.build import default_world
from zscir.world.gallery_index import world_gallery_index
from zscir.world.oracles import ORACLE_NOTES, oracle_texts
from zscir.world.pipeline_oracles import PIPELINE_NOTES, pipeline_texts
from zscir.world.shipped import shapes_backbone, shapes_generators, shipped_checkpoints, shipped_fti_checkpoint

FINE_SPLITS = ("val", "test", "train")
TRAIN_LIST = Path("train_gallery/image_info.json")   # the world's train gallery (zscir.world.build)
TRAIN_DIR = Path("train_gallery/images")
COARSE_SPLITS = ("val_coarse", "test_coarse", "train_coarse")
MULTITURN_SPLITS = ("multiturn", "multiturn_coarse")   # sequences of edits, over their own gallery
MULTITURN_LIST = Path("multiturn_gallery/image_info.json")
MULTITURN_DIR = Path("multiturn_gallery/images")


def default_root(seed: int = 0) -> Path:
    """The default world of ``seed`` (built on first use, cached afterwards)."""
    # messages to stderr: stdout may carry `zscir eval --json` output
    return Path(default_world(seed=seed, log=lambda msg: print(msg, file=sys.stderr, flush=True)))


def load(root: str | Path | None = None, split: str = "val", benchmark: str = "shapes") -> list[EvalSplit]:
    root = default_root() if root is None else root
    if split.startswith("train"):
        # train triplets rank their own gallery, disjoint from the evaluation one
        splits = circo.load(root, split, benchmark=benchmark, gallery_list=TRAIN_LIST, image_dir=TRAIN_DIR,
                            gallery_label=f"{benchmark}-train")
    elif split.startswith("multiturn"):
        splits = [_with_turns(s) for s in circo.load(root, split, benchmark=benchmark, gallery_list=MULTITURN_LIST,
                                                      image_dir=MULTITURN_DIR, gallery_label=f"{benchmark}-multiturn")]
    else:
        splits = circo.load(root, split, benchmark=benchmark)
    return [_with_edit_kinds(s) for s in splits]


def _with_edit_kinds(split: EvalSplit) -> EvalSplit:
    """Record each query's edit kinds (``"edits"[*]["kind"]`` of its annotation record, in order)."""
    path = Path(split.sources[0])
    records = read_json(path, f"shapes world {split.split} annotations")
    kinds = []
    for n, r in enumerate(records):
        edits = field_of(r, "edits", path, f"record {n}")
        kinds.append([field_of(e, "kind", path, f"record {n} edit") for e in edits])
    split.notes[EDIT_KINDS_NOTE] = kinds
    return split


def _with_turns(split: EvalSplit) -> EvalSplit:
    """Record each query's (sequence, turn) in ``notes["multiturn"]``: the split is evaluated turn by turn."""
    path = Path(split.sources[0])
    records = read_json(path, f"shapes world {split.split} annotations")
    sequence = [field_of(r, "sequence", path, f"record {n}") for n, r in enumerate(records)]
    turn = [field_of(r, "turn", path, f"record {n}") for n, r in enumerate(records)]
    split.notes["multiturn"] = {"sequence": sequence, "turn": turn}
    return split


# the world's own models and ceilings
def _models(backbone) -> list[str]:
    return [str(p) for p in shipped_checkpoints(backbone.identity)]


def _query_model(backbone_identity: dict) -> str | None:
    ckpt = shipped_fti_checkpoint(backbone_identity)
    return str(ckpt) if ckpt else None


DEFAULTS = BenchmarkDefaults(backbone=shapes_backbone, models=_models, query_model=_query_model,
                             gallery=world_gallery_index, oracles=oracle_texts,
                             oracle_notes={**ORACLE_NOTES, **PIPELINE_NOTES}, generators=shapes_generators,
                             generation_oracles=pipeline_texts)
SPEC = BenchmarkSpec("shapes", "shapes world", "circo", load, FINE_SPLITS + COARSE_SPLITS + MULTITURN_SPLITS,
                     ("val", "val_coarse"), remove_reference=False, default_root=default_root, defaults=DEFAULTS,
                     gallery_definition="the world split's gallery")
