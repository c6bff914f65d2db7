"""Oracle query texts of the shapes world: what a perfect captioner or rewriter would hand the text tower.

They are ceilings, not models: each replaces what a zero-shot method has to
infer (the reference's content, the composed result) by the ground truth the
world knows, and asks only the frozen text tower to find the target.

- ``caption``: the target's own canonical caption (a perfect captioner of the
  target + perfect composition);
- ``edit``: the reference's scene with the query's edits applied by the world's
  generator, canonically captioned (the ceiling of caption-rewrite methods such
  as CIReVL / LDRE). A fine text fixes the result, so on fine splits this is
  the caption oracle again; a coarse text leaves values open, so one reading is
  drawn (:func:`zscir.world.edits.concretize`, seeded by the query) as a
  rewriter has to commit to one;
- ``inversion``: "a photo of {reference caption} but {text}": the true caption
  in place of FTI4CIR's pseudo-words (the ceiling of the inversion prompt);
- ``reference``: the reference's canonical caption alone (a floor for text).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zscir.benchmarks.base import EvalSplit, read_json
from zscir.errors import ZscirError
from zscir.world.build import read_scenes
from zscir.world.captions import canonical_caption
from zscir.world.edits import ATTRIBUTE_KINDS, apply_edits, concretize
from zscir.world.spec import Scene

ORACLE_SEED = 14  # the stream the coarse edit oracle draws its readings from (with the query id)


def _scene(scenes: dict[int, dict], image_id: str, where: str) -> Scene:
    try:
        return Scene.from_json(scenes[int(image_id)])
    except (KeyError, ValueError):
        raise ZscirError(f"{where}: image {image_id} has no scene spec in scenes.jsonl") from None


def caption_of(scene: Scene) -> str:
    return canonical_caption(scene).text


def is_fine(edit: dict) -> bool:
    """A fine edit names its object by cell and its new value; a coarse twin by slot, with values left open."""
    if "slot" in edit:
        return False
    if edit["kind"] == "add":
        return "object" in edit
    return "value" in edit if edit["kind"] in ATTRIBUTE_KINDS + ("background",) else True


def edit_result(reference: Scene, edits: list[dict], qid: int) -> Scene:
    """The scene the generator makes of ``reference`` under the record's edits (coarse: one seeded reading)."""
    if all(is_fine(e) for e in edits):
        return apply_edits(reference, edits)
    fine = concretize(reference, edits, np.random.default_rng([ORACLE_SEED, qid]))
    if fine is None:
        raise ZscirError(f"coarse edits {edits} have no reading on the reference {reference.key}")
    return apply_edits(reference, fine)


def inversion_text(reference_caption: str, text: str) -> str:
    return f"a photo of {reference_caption} but {text}"


# the oracle rows of `zscir eval shapes`, in table order: name -> what its text is
ORACLE_NOTES = {
    "caption": "the target's canonical caption as the text query",
    "edit": "the reference's scene with the edit applied by the world's generator, captioned (coarse: one reading)",
    "inversion": "'a photo of {reference caption} but {text}': the true caption in place of the pseudo-words",
    "reference": "the reference's canonical caption alone (a floor, not a ceiling)",
}
ORACLES = ORACLE_NOTES


def oracle_texts(root: str | Path, split: EvalSplit) -> dict[str, list[str]]:
    """Oracle name -> one query text per query of ``split`` (a world split read by the CIRCO loader)."""
    scenes = read_scenes(root)
    ann_path = Path(split.sources[0])
    records = read_json(ann_path, f"shapes world {split.split} annotations")
    if len(records) != len(split.queries):
        raise ZscirError(f"{ann_path}: {len(records)} records but the split has {len(split.queries)} queries")
    out: dict[str, list[str]] = {name: [] for name in ORACLES}
    for n, (record, query) in enumerate(zip(records, split.queries)):
        where = f"{ann_path}, record {n}"
        if "edits" not in record:
            raise ZscirError(f"{where}: no field 'edits' (a world made before generator v2?)")
        reference = _scene(scenes, query.reference, where)
        target = _scene(scenes, query.targets[0], where) if query.targets else None
        ref_caption = caption_of(reference)
        result = edit_result(reference, record["edits"], n)
        out["caption"].append(caption_of(target) if target is not None else caption_of(result))
        out["edit"].append(caption_of(result))
        out["inversion"].append(inversion_text(ref_caption, " ".join(query.captions)))
        out["reference"].append(ref_caption)
    return out
