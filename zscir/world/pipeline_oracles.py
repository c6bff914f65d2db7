"""Rows that split a caption-rewrite pipeline on the world: how much each stage costs against the caption oracle.

A caption-rewrite method (CIReVL; LDRE and SEIZE with N captions) has two trained stages: a captioner reads
the reference, an editor rewrites the caption by the modification text. The world knows the truth of each
stage (the reference's canonical caption; its exact edit rule, :func:`zscir.world.oracles.edit_result`), so
each stage can be swapped for its truth:

- ``true-caption+editor``:  the reference's canonical caption, rewritten by the run's editor (the prompt the
  methods use, the answer read by the family's template as CIReVL reads it): the editor's cost alone;
- ``captioner+exact-edit``: the run's captioner's (first) caption of the reference, edited by the world's
  exact rule (:func:`exact_edit`): the captioner's cost alone;
- both trained is the ``cirevl`` row itself; both true is the ``edit`` oracle (on fine texts the caption
  oracle).

They are computed only where the run has the generator they need for every query (no partial row), through
the run's generations (the one generation cache: nothing is generated twice), and reported with the oracle
rows (``results["oracles"]``).
"""

from __future__ import annotations

from pathlib import Path

from zscir.benchmarks.base import EvalSplit, read_json
from zscir.errors import ZscirError
from zscir.evaluation.families import get_family
from zscir.models.composed import ImageRef
from zscir.models.training_free.templates import edit_template, instruction_of
from zscir.world.build import read_scenes
from zscir.world.model_data import parse_caption
from zscir.world.oracles import _scene, caption_of, edit_result

PIPELINE_NOTES = {
    "true-caption+editor": "the reference's true caption rewritten by the run's editor (the editor's cost alone)",
    "captioner+exact-edit": "the run's captioner's caption edited by the world's exact rule (the captioner's cost "
                            "alone; a caption the world cannot read, or an edit that does not apply to it, stays "
                            "as generated)",
}


def exact_edit(caption: str, edits: list[dict], qid: int) -> str:
    """The world's exact edit of a (generated) caption: the scene it describes, edited as the generator edits
    (coarse edits: the oracle's seeded reading for query ``qid``), canonically captioned. A caption that is not
    a canonical description of a valid scene, or whose scene the edits do not apply to (an object the caption
    misplaced), is returned as it is."""
    scene = parse_caption(caption)
    if scene is None:
        return caption
    try:
        return caption_of(edit_result(scene, edits, qid))
    except (ZscirError, KeyError):
        return caption


def pipeline_texts(root: str | Path, split: EvalSplit, generations) -> dict[str, list[str]]:
    """Row name -> one query text per query of ``split``, for the rows the run's generations can make."""
    if generations is None or not split.queries:
        return {}
    style = get_family(split.kind).generation_style
    gen, template = generations.for_style(style), edit_template(style)
    ann_path = Path(split.sources[0])
    records = read_json(ann_path, f"shapes world {split.split} annotations")
    if len(records) != len(split.queries):
        raise ZscirError(f"{ann_path}: {len(records)} records but the split has {len(split.queries)} queries")
    scenes = read_scenes(root)
    refs = [ImageRef(q.reference, split.images.get(q.reference)) for q in split.queries]
    instructions = [instruction_of(q.captions) for q in split.queries]
    true_captions = [caption_of(_scene(scenes, q.reference, f"{ann_path}, record {n}"))
                     for n, q in enumerate(split.queries)]
    out: dict[str, list[str]] = {}
    gen.prefetch(edits=[(c, i, "edit") for c, i in zip(true_captions, instructions)])
    answers = [gen.edits(c, i) for c, i in zip(true_captions, instructions)]
    if all(answers):
        out["true-caption+editor"] = [template.parse(a[0], i) for a, i in zip(answers, instructions)]
    gen.prefetch(images=refs)
    captions = [gen.captions(r) for r in refs]
    if all(captions):
        out["captioner+exact-edit"] = [exact_edit(c[0], record["edits"], n)
                                       for n, (c, record) in enumerate(zip(captions, records))]
    return out
