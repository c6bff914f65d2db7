"""What the feature store accepts as an image: anything with an id, a key and a way to load it.

The store decides whether an image must be (re-)encoded by comparing its *key*
with the key stored beside its features. Two kinds of key:

- ``file:<abs path>:<size>:<mtime_ns>`` for images given as paths. A stat is
  cheap, so a rerun over a 123k-image gallery costs 123k stats instead of
  re-reading ~20 GB to hash it. Any rewrite of a file changes its mtime, and a
  ``touch`` only costs a needless re-encode, never a stale feature. (A same-size
  rewrite that also restores the old mtime would be missed; tools do not do that
  by accident.)
- ``sha256:<hex>`` for objects that do not name a file (the data package's
  ``ImageItem``: tar members, generated images have no stable mtime). Computing
  it reads the bytes, so it runs in threads, and the bytes are released after.

Accepted items: ``(id, path)`` pairs, bare paths (id = the path as given), and
objects with ``id`` and ``load()`` plus ``path`` (preferred: a stat) or
``content_hash``; an optional ``release()`` is called once their bytes are no longer needed.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
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


def default_workers() -> int:
    """Threads for decoding / hashing: I/O and PIL release the GIL, so a few help even on 2 cores."""
    return max(1, min(4, os.cpu_count() or 1))


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


def _object_key(item: Any) -> str:
    """A stat key when the item names its file (cheap), else its content hash (reads the bytes once)."""
    path = getattr(item, "path", None)
    if path is not None:
        return file_key(path)
    content_hash = getattr(item, "content_hash", None)
    _release(item)  # the hash stays; the bytes read to compute it need not stay in memory
    if not content_hash:
        raise ZscirError(f"image {item.id!r}: item has neither a path nor a content_hash to key its features by")
    content_hash = str(content_hash)
    return content_hash if ":" in content_hash else f"sha256:{content_hash}"


def _release(item: Any) -> None:
    release = getattr(item, "release", None)
    if callable(release):
        release()


def _object_loader(item: Any) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        try:
            return item.load().convert("RGB")
        finally:
            _release(item)
    return load


def _from_object(item: Any) -> ImageSource:
    return ImageSource(str(item.id), _object_key(item), _object_loader(item))


def _is_object(item: Any) -> bool:
    return not isinstance(item, (ImageSource, str, os.PathLike, tuple)) and hasattr(item, "id") and hasattr(item, "load")


def as_source(item: Any) -> ImageSource:
    """Adapt one accepted item (see module docstring) to an :class:`ImageSource`."""
    if isinstance(item, ImageSource):
        return item
    if isinstance(item, (str, os.PathLike)):
        return _from_path(str(item), item)
    if isinstance(item, tuple) and len(item) == 2:
        return _from_path(str(item[0]), item[1])
    if _is_object(item):
        return _from_object(item)
    raise ZscirError(f"cannot use {type(item).__name__} as an image: expected (id, path), a path, "
                     "or an object with id, load() and content_hash")


def as_sources(items: Iterable[Any], workers: int = 4, progress: bool = False,
               ) -> tuple[list[ImageSource], list[tuple[str, str]]]:
    """Adapt all items; return (sources, unusable) where unusable = [(id, reason)].

    Content hashes are computed in threads (each reads a whole file), with a progress
    bar when asked. An item whose bytes cannot be read is unusable, not fatal; a
    duplicated id is an error (its features would be ambiguous).
    """
    items = list(items)
    seen: set[str] = set()
    for item in items:
        image_id = str(item[0]) if isinstance(item, tuple) else str(getattr(item, "id", item))
        if image_id in seen:
            raise ZscirError(f"image id {image_id!r} appears twice in the items to encode; ids must be unique")
        seen.add(image_id)

    def adapt(item: Any) -> ImageSource | tuple[str, str]:
        if not _is_object(item):
            return as_source(item)
        if getattr(item, "path", None) is None and not hasattr(type(item), "content_hash") \
                and not hasattr(item, "content_hash"):
            raise ZscirError(f"image {item.id!r}: item has neither a path nor a content_hash to key its features by")
        try:
            return _from_object(item)
        except Exception as e:  # noqa: BLE001 - an unreadable file is one bad item, counted by the caller
            return (str(item.id), f"{type(e).__name__}: {e}".strip())

    slow = sum(_is_object(i) and getattr(i, "path", None) is None for i in items)
    if slow:
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=workers) as pool:
            adapted = list(tqdm(pool.map(adapt, items), total=len(items), unit="img", desc="hashing images",
                                disable=not progress, file=sys.stderr, dynamic_ncols=True))
    else:
        adapted = [adapt(i) for i in items]
    sources = [a for a in adapted if isinstance(a, ImageSource)]
    unusable = [a for a in adapted if not isinstance(a, ImageSource)]
    return sources, unusable


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
