"""Where the training-free methods read captions and edits: the :class:`Generations` interface.

    captions(image)                      -> the reference image's N captions (None: none known)
    edits(caption, instruction, task)    -> the language model's outputs for that caption and instruction
    provenance()                         -> one record per source: a released file (path, sha256, keys, the models
                                            its keys name) or a model run (captioner/editor identity, prompt, decoding)

``image`` is an :class:`~zscir.models.composed.ImageRef` (the benchmark's id and the file), so a source keyed
by image id (a released annotation file) and one keyed by content (the generation cache: sha256 of the file)
both find it. ``task`` names what the language model was asked: ``"edit"`` (the edited caption) or
``"added"`` (CVSI's "objects most likely added"). A method asks only for what it needs; a missing answer is
a one-line error naming the image or caption and how to supply it, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from zscir.errors import ZscirError
from zscir.models.composed import ImageRef

TASKS = ("edit", "added")


def edit_key(caption: str, instruction: str, task: str = "edit") -> str:
    """The content key of one language-model input: sha256 of the JSON [caption, instruction] (and the task when
    it is not the edit), as the generation cache keys edits."""
    parts = [caption, instruction] if task == "edit" else [caption, instruction, task]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


class Generations(Protocol):
    def captions(self, image: ImageRef) -> list[str] | None: ...

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None: ...

    def provenance(self) -> list[dict]: ...


class TableGenerations:
    """Generations held in memory: image id -> captions, :func:`edit_key` -> outputs, plus their provenance."""

    def __init__(self, captions: dict[str, list[str]] | None = None, edits: dict[str, list[str]] | None = None,
                 provenance: list[dict] | None = None):
        self._captions = dict(captions or {})
        self._edits = dict(edits or {})
        self._provenance = list(provenance or [])

    def add_caption(self, image_id: str, captions: list[str]) -> None:
        self._captions[str(image_id)] = list(captions)

    def add_edit(self, caption: str, instruction: str, outputs: list[str], task: str = "edit") -> None:
        self._edits[edit_key(caption, instruction, task)] = list(outputs)

    def add_source(self, record: dict) -> None:
        self._provenance.append(dict(record))

    def captions(self, image: ImageRef) -> list[str] | None:
        return self._captions.get(str(image.id))

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        return self._edits.get(edit_key(caption, instruction, task))

    def provenance(self) -> list[dict]:
        return list(self._provenance)


class Stacked:
    """Several sources asked in order (the first that knows an answer gives it)."""

    def __init__(self, sources: list):
        self.sources = list(sources)

    def captions(self, image: ImageRef) -> list[str] | None:
        return next((c for s in self.sources if (c := s.captions(image))), None)

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        return next((e for s in self.sources if (e := s.edits(caption, instruction, task))), None)

    def provenance(self) -> list[dict]:
        return [p for s in self.sources for p in s.provenance()]


def require_generations(generations, method: str):
    if generations is None:
        raise ZscirError(f"--model {method}: needs captions and edits: pass --generations FILE (a released LDRE/SEIZE "
                         "annotation file or a zscir generations file)")
    return generations


def need_captions(generations, image: ImageRef, n: int | None, method: str) -> list[str]:
    """The first ``n`` captions of ``image`` (all when ``n`` is None); one line when there are fewer."""
    caps = generations.captions(image)
    if not caps or (n is not None and len(caps) < n):
        have = len(caps or [])
        raise ZscirError(f"--model {method}: image {image.id!r} has {have} caption(s) in --generations, expected "
                         f"{n or 1}: add them to the generations file (or caption the images first)")
    return list(caps[:n] if n is not None else caps)


def need_edit(generations, caption: str, instruction: str, method: str, task: str = "edit") -> str:
    """The first output of the language model for (caption, instruction); one line when there is none."""
    outs = generations.edits(caption, instruction, task)
    if not outs:
        raise ZscirError(f"--model {method}: no {task} for caption {caption[:60]!r} and instruction "
                         f"{instruction[:60]!r} in --generations: add it (or run the editor first)")
    return outs[0]
