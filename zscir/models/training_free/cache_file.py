"""A generation cache file read with no model: ``--generations CACHE.jsonl`` (:class:`CacheFileGenerations`)."""

from __future__ import annotations

import json
from pathlib import Path

from zscir.errors import ZscirError
from zscir.generation.cache import HEADER, edit_key
from zscir.models.composed import ImageRef
from zscir.models.training_free.backends import prompt_of, template_for
from zscir.models.training_free.templates import Template
from zscir.utils.hashing import sha256_file


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
