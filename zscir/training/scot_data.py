"""SCOT's training data (``zscir pretrain --method scot``): one caption edit per image and epoch.

The method's registry record (:data:`zscir.models.combiner.METHOD`) names :func:`prepare_training` by import path.
"""

from __future__ import annotations

import numpy as np

from zscir.errors import ZscirError
from zscir.models.combiner import EDITORS, CaptionEditor, FileCaptionEditor, edit_rng
from zscir.training.pretrain_data import ExtendedSet


def training_editor(edits, world) -> CaptionEditor:
    """The user's caption-edit file, or the shapes world's generator when training on the world."""
    if edits:
        return FileCaptionEditor(edits)
    if world is None:
        raise ZscirError("--method scot on your own images needs --edits FILE (JSONL: image, caption, modification, "
                         "edited_caption): the caption editor of your data")
    return EDITORS["world"](world)


def prepare_training(cfg, data, backbone, world, cache_root, accelerator, log=print):
    """SCOT's training data: the images the editor can edit, each batch with one edit per image drawn for its
    epoch (:func:`edit_rng` of the run's seed, the epoch and the image), so a resumed run draws the same."""
    if accelerator.num_processes > 1:
        raise ZscirError(f"--method scot trains on one process ({accelerator.num_processes} were started): "
                         "its loss gathers no features across processes yet")
    editor = training_editor(cfg.edits, world)
    known = set(editor.ids())
    rows = np.array([i for i, item in enumerate(data.ids) if item in known], dtype=np.int64)
    if len(rows) == 0:
        raise ZscirError(f"--edits {cfg.edits}: edits none of the {len(data)} training images (ids such as "
                         f"{data.ids[0]!r})" if cfg.edits else "the world caption editor knows none of the images")
    if len(rows) < len(data):
        log(f"{len(data) - len(rows)} of {len(data)} training images have no caption edit and are left out")
    record = {"editor": editor.record(), "edited_images": int(len(rows)), "images_without_edit": len(data) - len(rows)}

    def extra(base_rows: np.ndarray, epoch: int) -> dict:
        return {"triples": [editor.edit(data.ids[r], edit_rng(cfg.seed, epoch, int(r))) for r in base_rows]}

    return ExtendedSet(data, rows, extra, record)
