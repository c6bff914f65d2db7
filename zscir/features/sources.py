"""What the feature store accepts as an image: anything with an id, a key and a way to load it.

The store decides whether an image must be (re-)encoded by comparing its *key*
with the key stored beside its features. Two kinds of key:

- ``file:<abs path>:<size>:<mtime_ns>`` for images given as paths. A stat is
  cheap, so a rerun over a 123k-image gallery costs 123k stats instead of
  re-reading ~20 GB to hash it. Any rewrite of a file changes its mtime, and a
  ``touch`` only costs a needless re-encode, never a stale feature. (A same-size
  rewrite that also restores the old mtime would be missed; tools do not do that
  by accident.)
- ``sha256:<hex>`` when the source already knows the content hash (the data
  package's ``ImageItem``: archives, URLs and generated images have no stable
  mtime, and their hash is computed once upstream).

Accepted items: ``(id, path)`` pairs, bare paths (id = the path as given), and
objects with ``id``, ``load()`` and ``content_hash`` (or ``path``) attributes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from zscir.errors import ZscirError


@dataclass(frozen=True)
class ImageSource:
    """One image as the store sees it."""

    id: str
    key: str
    load: Callable[[], Image.Image]


def file_key(path: str | os.PathLike) -> str:
    """The identity of a file on disk: absolute path, size and mtime in nanoseconds."""
    p = Path(path).absolute()
    st = p.stat()
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"


def _open_rgb(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode inside the with-block
    return load


def _from_path(image_id: str, path: str | os.PathLike) -> ImageSource:
    path = Path(path)
    try:
        key = file_key(path)
    except FileNotFoundError:
        raise ZscirError(f"image {image_id!r}: file {str(path)!r} does not exist") from None
    return ImageSource(str(image_id), key, _open_rgb(path))


def _from_object(item: Any) -> ImageSource:
    image_id = str(item.id)
    content_hash = getattr(item, "content_hash", None)
    if content_hash:
        key = content_hash if ":" in str(content_hash) else f"sha256:{content_hash}"
        load = item.load
        return ImageSource(image_id, key, lambda: load().convert("RGB"))
    path = getattr(item, "path", None)
    if path is not None:
        return _from_path(image_id, path)
    raise ZscirError(f"image {image_id!r}: item has neither a content_hash nor a path to key its features by")


def as_source(item: Any) -> ImageSource:
    """Adapt one accepted item (see module docstring) to an :class:`ImageSource`."""
    if isinstance(item, ImageSource):
        return item
    if isinstance(item, (str, os.PathLike)):
        return _from_path(str(item), item)
    if isinstance(item, tuple) and len(item) == 2:
        return _from_path(str(item[0]), item[1])
    if hasattr(item, "id") and hasattr(item, "load"):
        return _from_object(item)
    raise ZscirError(f"cannot use {type(item).__name__} as an image: expected (id, path), a path, "
                     "or an object with id, load() and content_hash")


def as_sources(items: Iterable[Any]) -> list[ImageSource]:
    """Adapt all items; a duplicated id is an error (its features would be ambiguous)."""
    sources, seen = [], set()
    for item in items:
        src = as_source(item)
        if src.id in seen:
            raise ZscirError(f"image id {src.id!r} appears twice in the items to encode; ids must be unique")
        seen.add(src.id)
        sources.append(src)
    return sources


def images_in_folder(folder: str | os.PathLike,
                     extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
                     ) -> list[tuple[str, Path]]:
    """(id, path) for every image file under ``folder``, id = path relative to it (POSIX), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise ZscirError(f"image folder {str(root)!r} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(extensions) and not name.startswith("."):
                p = Path(dirpath) / name
                found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    return found
