"""Where the training-free methods read captions and edits: the :class:`Generations` interface.

    captions(image)                      -> the reference image's N captions (None: none known)
    edits(caption, instruction, task)    -> the language model's outputs for that caption and instruction
    provenance()                         -> one record per source: a released file (path, sha256, keys, the models
                                            its keys name) or a model run (captioner/editor identity, prompt, decoding)
    prefetch(images=..., edits=...)      -> generate what is missing in batches before it is asked for (sources that
                                            only look answers up do nothing); ``edits`` holds (caption, instruction,
                                            task) triples
    for_style(style)                     -> the source as a benchmark family of that generation style asks it (a
                                            source that runs an editor picks the style's template; others: itself)

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

    def prefetch(self, images=(), edits=()) -> None: ...

    def for_style(self, style: str) -> "Generations": ...


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

    def prefetch(self, images=(), edits=()) -> None:
        return None   # a table holds what it holds

    def for_style(self, style: str) -> "TableGenerations":
        return self


class Stacked:
    """Several sources asked in order (the first that knows an answer gives it); each source's provenance record
    counts the captions and edits it answered (``answered``)."""

    def __init__(self, sources: list, counts: list[dict] | None = None):
        self.sources = list(sources)
        self.counts = counts if counts is not None else [{"captions": 0, "edits": 0} for _ in self.sources]

    def _first(self, ask, kind: str):
        for n, source in enumerate(self.sources):
            found = ask(source)
            if found:
                self.counts[n][kind] += 1
                return found
        return None

    def captions(self, image: ImageRef) -> list[str] | None:
        return self._first(lambda s: s.captions(image), "captions")

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        return self._first(lambda s: s.edits(caption, instruction, task), "edits")

    def prefetch(self, images=(), edits=()) -> None:
        """Each source generates only what no source before it answers."""
        images, edits = list(images), list(edits)
        for source in self.sources:
            if not images and not edits:
                return
            source.prefetch(images=images, edits=edits)
            images = [i for i in images if not source.captions(i)]
            edits = [e for e in edits if not source.edits(*e)]

    def register(self, ref: ImageRef, image, key: str | None) -> None:
        """Retrieval's word on what a reference is, passed to the sources that read images by content."""
        for source in self.sources:
            if hasattr(source, "register"):
                source.register(ref, image, key)

    @property
    def seconds(self) -> float:
        """Seconds the sources spent generating."""
        return sum(getattr(source, "seconds", 0.0) for source in self.sources)

    def count_tokens(self, role: str, text: str) -> int:
        """Tokens of a generated text by the first source that counts them (a model's tokenizer), else words."""
        for source in self.sources:
            if hasattr(source, "count_tokens"):
                return source.count_tokens(role, text)
        return len(text.split())

    def for_style(self, style: str) -> "Stacked":
        return Stacked([s.for_style(style) for s in self.sources], self.counts)   # one tally for every style

    def provenance(self) -> list[dict]:
        out = []
        for source, count in zip(self.sources, self.counts):
            out += [{**p, "answered": dict(count)} for p in source.provenance()]
        return out


def require_generations(generations, method: str):
    if generations is None:
        raise ZscirError(f"--model {method}: needs captions and edits: pass --generations FILE (a released LDRE/SEIZE "
                         "annotation file or a zscir generation cache) or --captioner SPEC --editor SPEC")
    return generations


def need_captions(generations, image: ImageRef, n: int | None, method: str) -> list[str]:
    """The first ``n`` captions of ``image`` (all when ``n`` is None); one line when there are fewer."""
    caps = generations.captions(image)
    if not caps or (n is not None and len(caps) < n):
        have = len(caps or [])
        raise ZscirError(f"--model {method}: image {image.id!r} has {have} caption(s) in --generations, expected "
                         f"{n or 1}: add them to a --generations file or pass --captioner SPEC (N captions: --n N --decoding sample)")
    return list(caps[:n] if n is not None else caps)


def need_edit(generations, caption: str, instruction: str, method: str, task: str = "edit") -> str:
    """The first output of the language model for (caption, instruction); one line when there is none."""
    outs = generations.edits(caption, instruction, task)
    if not outs:
        raise ZscirError(f"--model {method}: no {task} for caption {caption[:60]!r} and instruction "
                         f"{instruction[:60]!r}: add it to a --generations file or pass --editor SPEC")
    return outs[0]
