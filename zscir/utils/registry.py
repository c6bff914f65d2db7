"""Registries as data: each entry names its object by import path (``"zscir.models.fti:METHOD"``) and is
imported on first use.

So a registry holds no import of what it lists: a method's module owns its entry's object, and a lower
layer reaches a plugin above it (the shapes world) by name without importing it. Paths are
``module:attribute``, the attribute possibly dotted (``"zscir.models.query:PseudoWordQuery.from_checkpoint"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


def load_entry(path: str) -> Any:
    """The object named by ``"package.module:attribute[.attribute...]"``."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"registry entry {path!r}: expected 'package.module:attribute'")
    value = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


class Entries(Mapping):
    """name -> the object at an import path, loaded on first access and kept. Iteration, ``in`` and ``len``
    read the names alone (nothing is imported); the order is the order of ``paths``."""

    def __init__(self, paths: dict[str, str]):
        self.paths = dict(paths)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load_entry(self.paths[name])
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def __repr__(self) -> str:
        return f"Entries({self.paths!r})"
