"""Generations from models: the one generation cache in front of a captioner and editors chosen by spec strings.

:class:`ModelGenerations` implements the :class:`~zscir.models.training_free.generations.Generations` interface
for ``--captioner SPEC`` / ``--editor SPEC``:

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

:class:`CacheFileGenerations` reads a generation cache file with no model at all (``--generations FILE`` where
FILE is a zscir generation cache, e.g. copied from the GPU machine that filled it): its one captioner's
captions, and per template the edits of the editor declared with that prompt's sha256.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from zscir.data.caption_cache import caption_images
from zscir.data.items import ImageItem, ImageSource
from zscir.errors import ZscirError
from zscir.generation.base import EditInput, PromptTemplate
from zscir.generation.cache import HEADER, captioner_key, check_cache_file, default_cache_path, edit_key
from zscir.generation.edits import edit_pairs
from zscir.generation.registry import CAPTIONERS, EDITORS, build_captioner, build_editor, load_target
from zscir.models.composed import ImageRef
from zscir.models.training_free.templates import ADDED_OBJECTS, Template, edit_template
from zscir.utils.hashing import sha256_file

ENDPOINT_KEYS = ("concurrency", "timeout", "retries", "key_env", "params")


def template_for(style: str, task: str) -> Template:
    """The prompt a task is asked with: the style's edit template, or CVSI's added-objects question."""
    return ADDED_OBJECTS if task == "added" else edit_template(style)


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
                                                            "captioner": None, "editors": {}}

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
        key = (template_for(self.style, task).name, edit_key(caption, instruction))
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
                template = template_for(self.style, task)
                if (template.name, edit_key(caption, instruction)) not in self.shared["edits"]:
                    by_template.setdefault(template.name, (template, []))[1].append((caption, instruction))
            for template, pairs in by_template.values():
                self._edit(template, list(dict.fromkeys(pairs)))

    def _caption(self, todo: dict[ImageRef, str]) -> None:
        captioner = self._captioner()
        run = self.shared["runs"]["caption"]
        result = caption_images(_RefSource(list(todo)), captioner, run.cache, batch_size=self.config.batch_size,
                                progress=self.config.progress)
        run.generated += result.captioned
        run.from_cache += result.from_cache
        for image, h in todo.items():
            if str(image.id) in result.outputs:
                self.shared["captions"][h] = list(result.outputs[str(image.id)])

    def _edit(self, template: Template, pairs: list[tuple[str, str]]) -> None:
        editor, path = self._editor(template)
        run = self.shared["runs"][template.name]
        result = edit_pairs([(str(n), EditInput(c, i)) for n, (c, i) in enumerate(pairs)], editor, path,
                            batch_size=self.config.batch_size, progress=self.config.progress)
        run.generated += result.edited
        run.from_cache += result.from_cache
        for n, (caption, instruction) in enumerate(pairs):
            if str(n) in result:
                self.shared["edits"][(template.name, edit_key(caption, instruction))] = list(result[str(n)])

    def provenance(self) -> list[dict]:
        return [run.record() for run in self.shared["runs"].values()]


class CacheFileGenerations:
    """A generation cache file read with no model: ``--generations CACHE.jsonl``.

    Captions: the file's one declared captioner (``FILE#captioner=KEY`` picks one of several). Edits: per
    template, the editor declared with that template's prompt sha256 (``#editor=KEY`` when several are).
    """

    def __init__(self, path: str | Path, options: dict | None = None, style: str = "structural", _state=None):
        self.path, self.style = Path(path), style
        if _state is None:
            _state = self._read(options or {})
        self.state = _state
        self.hashes: dict[str, str] = _state["hashes"]

    def _read(self, options: dict) -> dict:
        declared: dict[str, tuple[str, str, dict]] = {}   # key -> (kind, identity, about)
        entries: dict[str, dict[str, list[str]]] = {}
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue   # a line cut short by a kill
                if not isinstance(record, dict) or record == HEADER or "c" not in record:
                    continue
                if "h" in record:
                    value = record.get("outputs", record.get("caption"))
                    entries.setdefault(record["c"], {})[record["h"]] = [value] if isinstance(value, str) else value
                for kind in ("captioner", "editor"):
                    if kind in record:
                        declared[record["c"]] = (kind, record[kind], record.get("about") or {})
        unknown = set(options) - {"captioner", "editor"}
        if unknown:
            raise ZscirError(f"--generations {self.path}#{','.join(unknown)}: expected captioner=KEY and/or editor=KEY")
        captioners = [k for k, (kind, _, _) in declared.items() if kind == "captioner"]
        if "captioner" in options:
            captioners = [options["captioner"]] if options["captioner"] in captioners else []
        if len(captioners) > 1:
            raise ZscirError(f"--generations {self.path}: {len(captioners)} captioners declared ("
                             f"{', '.join(captioners)}): pick one with {self.path}#captioner=KEY")
        return {"declared": declared, "entries": entries, "captioner": captioners[0] if captioners else None,
                "editor": options.get("editor"), "hashes": {}, "sha256": sha256_file(self.path), "used": set()}

    def for_style(self, style: str) -> "CacheFileGenerations":
        return CacheFileGenerations(self.path, style=style, _state=self.state)

    def _editor_key(self, template: Template) -> str | None:
        sha = prompt_of(template).sha256
        keys = [k for k, (kind, _, about) in self.state["declared"].items()
                if kind == "editor" and (about.get("prompt") or {}).get("sha256") == sha]
        if self.state["editor"]:
            keys = [k for k in keys if k == self.state["editor"]]
        if len(keys) > 1:
            raise ZscirError(f"--generations {self.path}: {len(keys)} editors with the prompt {template.name} "
                             f"({', '.join(keys)}): pick one with {self.path}#editor=KEY")
        return keys[0] if keys else None

    def captions(self, image: ImageRef) -> list[str] | None:
        key = self.state["captioner"]
        if key is None or image.path is None or not Path(image.path).is_file():
            return None
        path = str(image.path)
        if path not in self.hashes:
            self.hashes[path] = sha256_file(path)
        found = self.state["entries"].get(key, {}).get(self.hashes[path])
        if found:
            self.state["used"].add(key)
        return found

    def edits(self, caption: str, instruction: str, task: str = "edit") -> list[str] | None:
        key = self._editor_key(template_for(self.style, task))
        found = self.state["entries"].get(key, {}).get(edit_key(caption, instruction)) if key else None
        if found:
            self.state["used"].add(key)
        return found

    def prefetch(self, images=(), edits=()) -> None:
        return None

    def provenance(self) -> list[dict]:
        used = sorted(self.state["used"]) or [k for k in [self.state["captioner"]] if k]
        return [{"source": "imported file", "kind": "zscir generation cache", "path": str(self.path.resolve()),
                 "sha256": self.state["sha256"],
                 "generators": [{"cache_key": k, "role": self.state["declared"][k][0],
                                 "identity": self.state["declared"][k][1], **self.state["declared"][k][2]}
                                for k in used]}]


def is_generation_cache(path: str | Path) -> bool:
    """Whether ``path`` starts with the generation cache's header."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline(4096) or b"null")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("zscir") == HEADER["zscir"]
