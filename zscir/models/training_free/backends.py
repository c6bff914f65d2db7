"""Generations from models: the one generation cache in front of a captioner and editors chosen by spec strings.

:class:`ModelGenerations` implements the :class:`~zscir.models.training_free.generations.Generations` interface
for ``--captioner SPEC`` / ``--editor SPEC``, for every command: `zscir eval` (batched ahead of the queries),
`zscir retrieve` and the server (behind the ``--generations`` files, :class:`~.generations.Stacked`):

- captions: the image file's sha256 is the content key; what the cache holds for the captioner's identity is
  read, what it lacks is captioned in batches (:func:`zscir.data.caption_cache.caption_images`) and appended;
- edits: one editor per prompt template (the benchmark family's generation style picks the edit template,
  :func:`~zscir.models.training_free.templates.edit_template`; CVSI's "objects likely added" question is
  :data:`~zscir.models.training_free.templates.ADDED_OBJECTS`), each with its own identity and cache entries,
  generated in batches by :func:`zscir.generation.edits.edit_pairs`.

Nothing is generated twice: a rerun reads every answer from the cache (one file for captions and edits with
``cache_path``; else each generator's default file, the one ``zscir caption`` / ``zscir edit`` use). Generators
are built on first need (a run whose answers all come from imported files loads no model). Each record of
:meth:`ModelGenerations.provenance` names a generator that ran or was read: its identity, model, decoding,
prompt (text and sha256), cache file, and how many inputs were generated now or found in the cache.

Retrieval tells it what a reference is (:meth:`ModelGenerations.register`: the decoded image and its content
key, ``sha256:HEX`` of the upload's bytes, else of its decoded pixels), so an in-memory upload is captioned and
cached by content too; ``seconds`` adds up the time spent generating (the retriever's ``generation`` stage).
A generated text's tokens are counted by its generator's tokenizer (:meth:`ModelGenerations.count_tokens`;
words for a backend without one).

:class:`~zscir.models.training_free.cache_file.CacheFileGenerations` reads a generation cache file with no
model at all (``--generations FILE``).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path

from zscir.data.caption_cache import caption_images
from zscir.data.items import ImageItem, ImageSource
from zscir.errors import ZscirError
from zscir.generation.base import EditInput, PromptTemplate, check_outputs
from zscir.generation.cache import (GenerationCache, captioner_key, check_cache_file, default_cache_path,
                                   edit_key)
from zscir.generation.edits import edit_pairs
from zscir.generation.registry import CAPTIONERS, EDITORS, build_captioner, build_editor, load_target
from zscir.models.composed import ImageRef
from zscir.models.training_free.templates import ADDED_OBJECTS, Template, edit_template
from zscir.utils.hashing import sha256_bytes, sha256_file

ENDPOINT_KEYS = ("concurrency", "timeout", "retries", "key_env", "params")


def template_for(style: str, task: str, edit_prompt: PromptTemplate | None = None) -> Template:
    """The prompt a task is asked with: the style's edit template (or ``edit_prompt``, the one an editor was
    trained on, when given), or CVSI's added-objects question."""
    if task == "added":
        return ADDED_OBJECTS
    return Template(edit_prompt.name, edit_prompt.text) if edit_prompt is not None else edit_template(style)


def pixel_key(image) -> str:
    """The content key of an in-memory image: sha256 of its mode, size and pixels."""
    return sha256_bytes(f"{image.mode}:{image.size}".encode() + b"\0" + image.tobytes())


def count_words(text: str) -> int:
    return len(text.split())


def prompt_of(template: Template) -> PromptTemplate:
    return PromptTemplate(template.text, name=template.name)


@dataclass
class BackendConfig:
    """What ``--captioner``/``--editor`` and their options say. ``captioner_kw``: decoding, preset, prompt (the
    captioner's); ``endpoint_kw``: the openai backends' client options (given to each backend that names them);
    ``device``: for the backends that run a model here."""

    captioner: str | None = None
    editor: str | None = None
    captioner_kw: dict = field(default_factory=dict)
    endpoint_kw: dict = field(default_factory=dict)
    device: str | None = None
    cache_path: str | None = None       # one file for captions and edits (None: each generator's default file)
    batch_size: int = 16
    progress: bool = False
    edit_prompt: PromptTemplate | None = None   # the editor's own prompt for edits (None: the style's template)

    def check(self) -> None:
        """Refuse endpoint options that no chosen backend takes (before any model loads)."""
        takers = [s for s, reg in ((self.captioner, CAPTIONERS), (self.editor, EDITORS)) if s and _takes(reg, s, "timeout")]
        if self.endpoint_kw and not takers:
            raise ZscirError(f"--endpoint-*/--key-env: only the openai:MODEL@URL backends take them (given: "
                             f"--captioner {self.captioner}, --editor {self.editor})")
        if self.cache_path:
            check_cache_file(self.cache_path)


def _takes(registry: dict, spec: str, name: str, explicit: bool = True) -> bool:
    """Whether the backend's factory names ``name`` (or, with ``explicit=False``, takes any keyword)."""
    entry = registry.get(spec.partition(":")[0])
    if entry is None:
        return False
    params = inspect.signature(load_target(entry.target)).parameters
    return name in params or (not explicit and any(p.kind is p.VAR_KEYWORD for p in params.values()))


def _backend_kw(registry: dict, spec: str, config: BackendConfig) -> dict:
    kw = {k: v for k, v in config.endpoint_kw.items() if _takes(registry, spec, "timeout")}
    if config.device is not None and _takes(registry, spec, "device", explicit=False):
        kw["device"] = config.device
    return kw


class _RefSource(ImageSource):
    """The images of a list of :class:`ImageRef` as an image source (id = the benchmark's id)."""

    kind = "refs"

    def __init__(self, refs: list[ImageRef]):
        super().__init__("benchmark images")
        self.refs = refs

    def estimated_len(self) -> int:
        return len(self.refs)

    def __iter__(self):
        for ref in self.refs:
            yield ImageItem(str(ref.id), reader=Path(ref.path).read_bytes, max_pixels=self.max_pixels)


class _Run:
    """One generator's tally for the protocol card."""

    def __init__(self, generator, role: str, cache: Path | None, template: Template | None = None):
        self.generator, self.role, self.cache, self.template = generator, role, cache, template
        self.generated, self.from_cache = 0, 0

    def record(self) -> dict:
        out = {"source": "model run", "role": self.role, **self.generator.describe(),
               "cache": str(self.cache) if self.cache else None, "cache_key": captioner_key(self.generator.identity),
               "generated_now": self.generated, "from_cache": self.from_cache}
        if self.template is not None:
            out["template"] = self.template.describe()
        return out


class ModelGenerations:
    """Captions and edits from the generation cache, generated by the configured backends where missing."""

    def __init__(self, config: BackendConfig, style: str = "structural", _shared: dict | None = None):
        self.config, self.style = config, style
        self.shared = _shared if _shared is not None else {"hash": {}, "captions": {}, "edits": {}, "runs": {},
                                                            "captioner": None, "editors": {}, "images": {},
                                                            "seconds": 0.0}

    @property
    def seconds(self) -> float:
        """Seconds spent generating (not reading the cache) so far, every style together."""
        return self.shared["seconds"]

    def register(self, ref: ImageRef, image, key: str | None) -> None:
        """The reference ``ref`` is this decoded image (PIL, or None) with this content key (``sha256:HEX``, or
        None: the pixels' key, else the file's)."""
        content = key.removeprefix("sha256:") if key else (pixel_key(image) if image is not None else
                                                            sha256_file(ref.path) if ref.path else None)
        if content is not None:
            self.shared["images"][str(ref.id)] = (content, image)

    def count_tokens(self, role: str, text: str) -> int:
        """Tokens of a generated ``text`` by the tokenizer of the generator of ``role`` ("caption" or "edit"),
        words where that generator was not built here or has no tokenizer."""
        generator = (self.shared["captioner"] if role == "caption" else
                     next(iter(self.shared["editors"].values()), (None,))[0])
        count = getattr(generator, "count_tokens", None)
        return count(text) if count is not None else count_words(text)

    def for_style(self, style: str) -> "ModelGenerations":
        return ModelGenerations(self.config, style, self.shared)

    # ---- generators, built on first need
    def _captioner(self):
        if self.shared["captioner"] is None:
            spec = self.config.captioner
            captioner = build_captioner(spec, **self.config.captioner_kw, **_backend_kw(CAPTIONERS, spec, self.config))
            path = Path(self.config.cache_path) if self.config.cache_path else default_cache_path(captioner.identity)
            self.shared["captioner"] = captioner
            self.shared["runs"]["caption"] = _Run(captioner, "captioner", path if captioner.cacheable else None)
        return self.shared["captioner"]

    def _editor(self, template: Template):
        if template.name not in self.shared["editors"]:
            spec = self.config.editor
            editor = build_editor(spec, template=prompt_of(template), **_backend_kw(EDITORS, spec, self.config))
            path = Path(self.config.cache_path) if self.config.cache_path else default_cache_path(editor.identity, "edit")
            self.shared["editors"][template.name] = (editor, path)
            self.shared["runs"][template.name] = _Run(editor, "editor", path, template)
        return self.shared["editors"][template.name]

    # ---- the interface
    def _hash(self, image: ImageRef) -> str | None:
        registered = self.shared["images"].get(str(image.id))
        if registered is not None:
            return registered[0]
        if image.path is None or not Path(image.path).is_file():
            return None
        key = str(image.path)
        if key not in self.shared["hash"]:
            self.shared["hash"][key] = sha256_file(image.path)
        return self.shared["hash"][key]

    def captions(self, image: ImageRef) -> list[str] | None:
        h = self._hash(image)
        if h is None or self.config.captioner is None:
            return None
        if h not in self.shared["captions"]:
            self.prefetch(images=[image])
        return self.shared["captions"].get(h)

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        if self.config.editor is None:
            return None
        key = (template_for(self.style, task, self.config.edit_prompt).name, edit_key(caption, instruction))
        if key not in self.shared["edits"]:
            self.prefetch(edits=[(caption, instruction, task)])
        return self.shared["edits"].get(key)

    def prefetch(self, images=(), edits=()) -> None:
        """Caption the images and edit the (caption, instruction, task) inputs not known yet, in batches."""
        if self.config.captioner is not None:
            todo = {}
            for image in images:
                h = self._hash(image)
                if h is not None and h not in self.shared["captions"] and h not in todo.values():
                    todo[image] = h
            if todo:
                self._caption(todo)
        if self.config.editor is not None:
            by_template: dict[str, tuple[Template, list]] = {}
            for caption, instruction, task in edits:
                template = template_for(self.style, task, self.config.edit_prompt)
                if (template.name, edit_key(caption, instruction)) not in self.shared["edits"]:
                    by_template.setdefault(template.name, (template, []))[1].append((caption, instruction))
            for template, pairs in by_template.values():
                self._edit(template, list(dict.fromkeys(pairs)))

    def _caption(self, todo: dict[ImageRef, str]) -> None:
        captioner = self._captioner()
        run = self.shared["runs"]["caption"]
        t0 = time.perf_counter()
        decoded = {i: h for i, h in todo.items() if self.shared["images"].get(str(i.id), (None, None))[1] is not None}
        if decoded:
            self._caption_decoded(captioner, run, decoded)
        files = [i for i in todo if i not in decoded]
        if files:
            result = caption_images(_RefSource(files), captioner, run.cache, batch_size=self.config.batch_size,
                                    progress=self.config.progress)
            run.generated += result.captioned
            run.from_cache += result.from_cache
            for image in files:
                if str(image.id) in result.outputs:
                    self.shared["captions"][todo[image]] = list(result.outputs[str(image.id)])
        self.shared["seconds"] += time.perf_counter() - t0

    def _caption_decoded(self, captioner, run: "_Run", todo: dict[ImageRef, str]) -> None:
        """Registered in-memory images (uploads): looked up by content key, the rest captioned in one batch."""
        cache = GenerationCache(run.cache, captioner.identity, about=captioner.about()) if run.cache else None
        try:
            missing = []
            for image, h in todo.items():
                if cache is not None and h in cache:
                    self.shared["captions"][h] = cache.outputs(h)
                    run.from_cache += 1
                else:
                    missing.append((image, h))
            if not missing:
                return
            items = [ImageItem(str(image.id), data=b"") for image, _ in missing]
            pictures = [self.shared["images"][str(image.id)][1] for image, _ in missing]
            outputs = check_outputs(captioner.caption(items, pictures if captioner.needs_images else None),
                                    len(items), captioner.decoding.n, captioner.identity)
            rows = [(h, str(image.id), out[0] if len(out) == 1 else out)
                    for (image, h), out in zip(missing, outputs) if out is not None]
            if cache is not None:
                cache.add_many(rows)
            for (image, h), out in zip(missing, outputs):
                if out is not None:
                    self.shared["captions"][h] = list(out)
                    run.generated += 1
        finally:
            if cache is not None:
                cache.close()

    def _edit(self, template: Template, pairs: list[tuple[str, str]]) -> None:
        editor, path = self._editor(template)
        run = self.shared["runs"][template.name]
        t0 = time.perf_counter()
        result = edit_pairs([(str(n), EditInput(c, i)) for n, (c, i) in enumerate(pairs)], editor, path,
                            batch_size=self.config.batch_size, progress=self.config.progress)
        run.generated += result.edited
        run.from_cache += result.from_cache
        for n, (caption, instruction) in enumerate(pairs):
            if str(n) in result:
                self.shared["edits"][(template.name, edit_key(caption, instruction))] = list(result[str(n)])
        self.shared["seconds"] += time.perf_counter() - t0

    def provenance(self) -> list[dict]:
        return [run.record() for run in self.shared["runs"].values()]
