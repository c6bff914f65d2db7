"""Generations for retrieval: files first, then a configured captioner and editor through the one generation cache.

:class:`LiveGenerations` is a :class:`~zscir.models.training_free.generations.Generations` for `zscir retrieve`
and the server: it asks ``files`` (``--generations``: released LDRE/SEIZE files, asked in order) first; what
they lack is read from the generation cache of the configured backend (``--captioner`` / ``--editor`` specs,
:mod:`zscir.generation.registry`) or, when the cache lacks it too, generated once and appended there. A
reference image is found by the id the retriever gives it (its gallery id, else its file name) in the files,
and by its content (sha256 of the file's bytes; of the decoded pixels for an in-memory upload) in the cache.
The editor is prompted with the method's own template for the task (:mod:`zscir.models.training_free.templates`:
the generation style's edit template, CVSI's "objects likely added"), so a template is part of the editor's
identity and each task has its own cache entries. ``seconds`` adds up the time spent generating (the
retriever reports it as the ``generation`` stage). Without a backend, what the files lack stays missing and
the method says so in one line.
"""

from __future__ import annotations

import copy
import time

from PIL import Image

from zscir.data.items import ImageItem
from zscir.generation.base import EditInput, PromptTemplate, check_outputs
from zscir.generation.cache import GenerationCache, default_cache_path
from zscir.generation.registry import build_captioner, build_editor
from zscir.models.composed import ImageRef
from zscir.models.training_free.templates import ADDED_OBJECTS, edit_template
from zscir.utils.hashing import sha256_bytes, sha256_file


def pixel_key(image: Image.Image) -> str:
    """The content key of an in-memory image: sha256 of its mode, size and pixels."""
    return sha256_bytes(f"{image.mode}:{image.size}".encode() + b"\0" + image.tobytes())


class LiveGenerations:
    def __init__(self, files=None, captioner: str | None = None, editor: str | None = None,
                 generator_kw: dict | None = None, caption_cache=None, edit_cache=None, style: str = "structural"):
        self.files, self.style = files, style
        self.captioner_spec, self.editor_spec, self.kw = captioner, editor, dict(generator_kw or {})
        self.caption_cache_path, self.edit_cache_path = caption_cache, edit_cache
        self._captioner = self._caches = None
        self._editors: dict[str, object] = {}
        self._images: dict[str, tuple[str, Image.Image | None]] = {}   # ref id -> (content key, image)
        self.seconds = 0.0

    # ------------------------------------------------------------ what the retriever tells it
    def register(self, ref: ImageRef, image: Image.Image | None, key: str | None) -> None:
        """The reference ``ref`` is this decoded image with this content key (``sha256:HEX``, or None)."""
        content = key.removeprefix("sha256:") if key else (pixel_key(image) if image is not None else
                                                            sha256_file(ref.path) if ref.path else None)
        if content is not None:
            self._images[str(ref.id)] = (content, image)

    # ------------------------------------------------------------ the Generations interface
    def captions(self, image: ImageRef) -> list[str] | None:
        found = self.files.captions(image) if self.files is not None else None
        if found or self.captioner_spec is None:
            return found
        content, decoded = self._images.get(str(image.id)) or (sha256_file(image.path) if image.path else None, None)
        if content is None:
            return None
        captioner = self._built_captioner()
        cache = self._cache("caption", captioner) if captioner.cacheable else None
        if cache is not None and content in cache:
            return cache.outputs(content)
        t0 = time.perf_counter()
        decoded = decoded if decoded is not None else (Image.open(image.path).convert("RGB") if image.path else None)
        item = ImageItem(str(image.id), data=b"")
        (out,) = check_outputs(captioner.caption([item], [decoded] if captioner.needs_images else None), 1,
                               captioner.decoding.n, captioner.identity)
        if out is not None and cache is not None:
            cache.add_many([(content, str(image.id), out[0] if len(out) == 1 else out)])
        self.seconds += time.perf_counter() - t0
        return out

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        found = self.files.edits(caption, instruction, task) if self.files is not None else None
        if found or self.editor_spec is None:
            return found
        editor = self._built_editor(task)
        cache = self._cache(task, editor)
        pair = EditInput(caption, instruction)
        if pair.content_key not in cache:
            t0 = time.perf_counter()
            (out,) = check_outputs(editor.edit([pair]), 1, editor.decoding.n, editor.identity)
            if out is not None:
                cache.add_many([(pair.content_key, pair.content_key[:16], out)], inputs=[pair._asdict()])
            self.seconds += time.perf_counter() - t0
        return cache.outputs(pair.content_key)

    def prefetch(self, images=(), edits=()) -> None:
        """The files may batch ahead; the backends here answer lookup by lookup (retrieval asks for few queries)."""
        if self.files is not None:
            self.files.prefetch(images=images, edits=edits)

    def for_style(self, style: str) -> "LiveGenerations":
        """The same sources, registered images and caches, with the editor prompted in ``style``'s template."""
        if style == self.style:
            return self
        twin = copy.copy(self)
        twin.style, twin._editors = style, {}
        twin.files = self.files.for_style(style) if self.files is not None else None
        return twin

    def provenance(self) -> list[dict]:
        out = self.files.provenance() if self.files is not None else []
        if self._captioner is not None:
            out.append({"source": "model run", **self._captioner.describe()})
        out += [{"source": "model run", "task": task, **e.describe()} for task, e in self._editors.items()]
        return out

    # ------------------------------------------------------------ backends and caches, built on first use
    def _built_captioner(self):
        if self._captioner is None:
            self._captioner = build_captioner(self.captioner_spec, **self.kw)
        return self._captioner

    def _built_editor(self, task: str):
        if task not in self._editors:
            template = ADDED_OBJECTS if task == "added" else edit_template(self.style)
            self._editors[task] = build_editor(self.editor_spec, template=PromptTemplate(template.text, name=template.name),
                                               **self.kw)
        return self._editors[task]

    def _cache(self, task: str, generator) -> GenerationCache:
        self._caches = self._caches or {}
        if task not in self._caches:
            kind = "caption" if task == "caption" else "edit"
            given = self.caption_cache_path if kind == "caption" else self.edit_cache_path
            path = given or default_cache_path(generator.identity, kind)
            self._caches[task] = GenerationCache(path, generator.identity, kind, about=generator.about())
        return self._caches[task]
