"""What the feature store accepts as an image: anything with an id, a key and a way to load it.

The store decides whether an image must be (re-)encoded by comparing its *key*
with the key stored beside its features: the content key of :mod:`zscir.data.keys`
(``sha256:<hex>`` of the encoded bytes). So moving a gallery folder, copying it
elsewhere or ``touch``-ing its files re-encodes nothing; only a changed picture
is encoded again.

Hashing reads every byte, so the store keeps a hash cache keyed by each file's
*stat key* (:func:`zscir.data.keys.file_key`): a rerun over an unchanged gallery costs
one stat per image, and only moved, touched or new files are read (in threads). Stores
written before content keys hold stat keys; a row whose stat key still matches its
file is kept as it is.

Accepted items: ``(id, path)`` pairs, bare paths (id = the path as given), and
objects with ``id`` and ``load()`` plus ``path`` or ``content_hash`` (an
:class:`zscir.data.items.ImageItem`); an optional ``release()`` is called once their
bytes are no longer needed. Everything is decoded by the project's one decoder,
:func:`zscir.data.images.decode_image`. Ids are made bytes-safe (:func:`zscir.data.keys.safe_name`).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image
from tqdm.auto import tqdm

from zscir.data.images import DEFAULT_MAX_PIXELS, BadImageError, decode_image, to_rgb
# fs_name and content_key: also read from here by index/ and serve/ (their home is zscir.data.keys)
from zscir.data.keys import content_key, file_content_key, file_key, fs_name, safe_name  # noqa: F401
from zscir.errors import ZscirError


@dataclass(frozen=True)
class KeyedImage:
    """One image as the store sees it (made from an ``--images`` item by :func:`as_source`).

    ``key`` identifies the content (``sha256:<hex>``, or any string a caller chooses);
    ``stat`` is the file's stat key when the image is a file (None otherwise).
    """

    id: str
    key: str
    load: Callable[[], Image.Image]
    stat: str | None = None


def default_workers() -> int:
    """Threads for decoding / hashing: I/O and PIL release the GIL, so a few help even on 2 cores."""
    return max(1, min(4, os.cpu_count() or 1))


def read_image_file(path: str | os.PathLike, item_id: str, min_size: int | None = None) -> Image.Image:
    """Read and decode one image file; a missing or unreadable file is a :class:`BadImageError`.

    ``min_size``: see :func:`zscir.data.images.decode_image` (JPEG draft decoding).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "missing file"
        raise BadImageError(item_id, reason) from None
    except OSError as e:
        raise BadImageError(item_id, "unreadable file", e.strerror or str(e)) from None
    return decode_image(data, item_id, min_size=min_size)


class _FileLoader:
    """``load()`` of a file source; picklable, so decoding worker processes can be spawned."""

    accepts_min_size = True

    def __init__(self, image_id: str, path: Path):
        self.image_id, self.path = image_id, path

    def __call__(self, min_size: int | None = None) -> Image.Image:
        return read_image_file(self.path, self.image_id, min_size)


def _file_loader(image_id: str, path: Path) -> Callable[[], Image.Image]:
    return _FileLoader(image_id, path)


def load_image(source: "KeyedImage", min_size: int | None = None) -> Image.Image:
    """Decode ``source``; with ``min_size``, JPEGs are decoded in draft mode where its loader allows it
    (zscir's own loaders do; a caller's ``load`` without arguments is called as it is)."""
    if min_size is not None and getattr(source.load, "accepts_min_size", False):
        return source.load(min_size=min_size)
    return source.load()


def _stat_or_skip(image_id: str, path: Path) -> str:
    try:
        return file_key(path)
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "missing file"
        raise BadImageError(image_id, reason) from None
    except OSError as e:
        raise BadImageError(image_id, "unreadable file", e.strerror or str(e)) from None


def _from_path(image_id: str, path: str | os.PathLike, known: dict[str, str] | None = None) -> KeyedImage:
    """A file as a source, keyed by its content hash (from ``known`` by stat key when it is there)."""
    path = Path(path)
    image_id = safe_name(str(image_id))
    stat = _stat_or_skip(image_id, path)
    key = (known or {}).get(stat)
    if key is None:
        try:
            key = file_content_key(path)
        except OSError as e:
            raise BadImageError(image_id, "unreadable file", e.strerror or str(e)) from None
    return KeyedImage(image_id, key, _file_loader(image_id, path), stat)


def _object_key(item: Any) -> tuple[str, str | None]:
    """(content key, stat key): the file's content when the item names one, else its content_hash."""
    path = getattr(item, "path", None)
    if path is not None:
        return file_content_key(path), file_key(path)
    content_hash = getattr(item, "content_hash", None)
    _release(item)  # the hash stays; the bytes read to compute it need not stay in memory
    if not content_hash:
        raise ZscirError(f"image {item.id!r}: item has neither a path nor a content_hash to key its features by")
    content_hash = str(content_hash)
    return (content_hash if ":" in content_hash else f"sha256:{content_hash}"), None


def _release(item: Any) -> None:
    release = getattr(item, "release", None)
    if callable(release):
        release()


class _ObjectLoader:
    """``load()`` of an item object (e.g. a webdataset sample); draft decoding when it exposes its bytes."""

    accepts_min_size = True

    def __init__(self, item: Any):
        self.item = item

    def __call__(self, min_size: int | None = None) -> Image.Image:
        item = self.item
        try:
            if min_size is not None and callable(getattr(item, "read_bytes", None)):
                return decode_image(item.read_bytes(), safe_name(str(item.id)),
                                    getattr(item, "max_pixels", DEFAULT_MAX_PIXELS), min_size=min_size)
            return to_rgb(item.load())  # ImageItem.load() already decodes with decode_image
        finally:
            _release(item)


def _object_loader(item: Any) -> Callable[[], Image.Image]:
    return _ObjectLoader(item)


def _from_object(item: Any) -> KeyedImage:
    key, stat = _object_key(item)
    return KeyedImage(safe_name(str(item.id)), key, _object_loader(item), stat)


def _is_object(item: Any) -> bool:
    return not isinstance(item, (KeyedImage, str, os.PathLike, tuple)) and hasattr(item, "id") and hasattr(item, "load")


def _item_id(item: Any) -> str:
    if isinstance(item, KeyedImage):
        return item.id
    return safe_name(str(item[0]) if isinstance(item, tuple) else str(getattr(item, "id", item)))


def as_source(item: Any, known: dict[str, str] | None = None) -> KeyedImage:
    """Adapt one accepted item (see module docstring) to an :class:`KeyedImage`."""
    if isinstance(item, KeyedImage):
        return item
    if isinstance(item, (str, os.PathLike)):
        return _from_path(str(item), item, known)
    if isinstance(item, tuple) and len(item) == 2:
        return _from_path(str(item[0]), item[1], known)
    if _is_object(item):
        return _from_object(item)
    raise ZscirError(f"cannot use {type(item).__name__} as an image: expected (id, path), a path, "
                     "or an object with id, load() and content_hash")


HASH_RUN = 32   # items a hashing thread adapts in one go


def as_sources(items: Iterable[Any], workers: int = 4, progress: bool = False,
               known_hashes: dict[str, str] | None = None,
               ) -> tuple[list[KeyedImage], list[tuple[str, str]]]:
    """Adapt all items; return (sources, unusable) where unusable = [(id, reason)].

    Content hashes are computed in threads (each reads a whole file), with a progress
    bar when asked; ``known_hashes`` (stat key -> content key) spares reading unchanged
    files. An item whose file is missing, a dangling symlink or unreadable is unusable,
    not fatal; a duplicated id is an error (its features would be ambiguous).
    """
    items = list(items)
    seen: set[str] = set()
    for item in items:
        image_id = _item_id(item)
        if image_id in seen:
            raise ZscirError(f"image id {image_id!r} appears twice in the items to encode; ids must be unique")
        seen.add(image_id)
    known = known_hashes or {}

    def adapt(item: Any) -> KeyedImage | tuple[str, str]:
        if _is_object(item) and getattr(item, "path", None) is None and not hasattr(type(item), "content_hash") \
                and not hasattr(item, "content_hash"):
            raise ZscirError(f"image {item.id!r}: item has neither a path nor a content_hash to key its features by")
        try:
            return as_source(item, known)
        except BadImageError as e:
            return (e.item_id, e.reason + (f" ({e.detail})" if e.detail else ""))
        except ZscirError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable file is one bad item, counted by the caller
            return (_item_id(item), f"{type(e).__name__}: {e}".strip())

    def needs_reading(item: Any) -> bool:
        if _is_object(item):
            return True
        if isinstance(item, KeyedImage):
            return False
        path = item[1] if isinstance(item, tuple) else item
        try:
            return file_key(path) not in known
        except OSError:
            return False

    slow = sum(map(needs_reading, items))
    if slow > 1:
        # a thread takes a run of HASH_RUN items, not a future an item (a future each costs more than the
        # hash of a small page-cached file); the threads are for cold disks and network storage, where
        # reads wait (eval/bench_index_encode.py; docs/encoding_performance.md)
        runs = [items[i:i + HASH_RUN] for i in range(0, len(items), HASH_RUN)]
        pool = ThreadPoolExecutor(max_workers=workers)
        adapted = []
        try:
            with tqdm(total=len(items), unit="img", desc="hashing images", disable=not progress or slow < 64,
                      file=sys.stderr, dynamic_ncols=True) as bar:
                for run in pool.map(lambda run: [adapt(item) for item in run], runs):
                    adapted += run
                    bar.update(len(run))
        except BaseException:  # Ctrl-C: stop at once instead of hashing the rest of the gallery first
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        adapted = [adapt(i) for i in items]
    sources = [a for a in adapted if isinstance(a, KeyedImage)]
    unusable = [a for a in adapted if not isinstance(a, KeyedImage)]
    return sources, unusable

