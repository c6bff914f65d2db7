"""What the feature store accepts as an image: anything with an id, a key and a way to load it.

The store decides whether an image must be (re-)encoded by comparing its *key*
with the key stored beside its features. The key is the image's content:
``sha256:<hex>`` of the encoded bytes. So moving a gallery folder, copying it
elsewhere or ``touch``-ing its files re-encodes nothing; only a changed picture
is encoded again.

Hashing reads every byte, so the store keeps a hash cache keyed by each file's
*stat key* (``file:<abs path>:<size>:<mtime_ns>``): a rerun over an unchanged
123k-image gallery costs 123k stats, and only moved, touched or new files are
read (in threads). Stores written before content keys hold stat keys; a row
whose stat key still matches its file is kept as it is.

Accepted items: ``(id, path)`` pairs, bare paths (id = the path as given), and
objects with ``id`` and ``load()`` plus ``path`` or ``content_hash``; an
optional ``release()`` is called once their bytes are no longer needed.
Everything is decoded by the project's one decoder, :func:`zscir.data.images.decode_image`.

File names that are not valid UTF-8 (possible on POSIX) get a *bytes-safe id*:
each undecodable byte is written ``\\xNN`` (:func:`safe_name`), so ids can be
stored in JSON and printed; :func:`fs_name` turns such an id back into the name
on disk. Names that are valid UTF-8 are used unchanged.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from zscir.data.images import BadImageError, decode_image, to_rgb
from zscir.errors import ZscirError
from zscir.utils.hashing import sha256_bytes, sha256_file


@dataclass(frozen=True)
class ImageSource:
    """One image as the store sees it.

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


# ---------------------------------------------------------------- bytes-safe names
_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def safe_name(name: str) -> str:
    """``name`` with every byte that is not UTF-8 (a surrogateescape'd byte) written as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def fs_name(safe: str) -> str:
    """The inverse of :func:`safe_name`: ``\\xNN`` (NN >= 80) back to the undecodable byte."""
    if "\\x" not in safe:
        return safe
    return _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), safe)


def is_escaped(name: str) -> bool:
    return safe_name(name) != name


# ---------------------------------------------------------------- keys
def file_key(path: str | os.PathLike) -> str:
    """The stat identity of a file on disk: absolute path, size and mtime in nanoseconds."""
    p = Path(path).absolute()
    st = p.stat()
    return f"file:{safe_name(str(p))}:{st.st_size}:{st.st_mtime_ns}"


def content_key(data: bytes) -> str:
    return "sha256:" + sha256_bytes(data)


def file_content_key(path: str | os.PathLike) -> str:
    return "sha256:" + sha256_file(path)


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


def load_image(source: "ImageSource", min_size: int | None = None) -> Image.Image:
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


def _from_path(image_id: str, path: str | os.PathLike, known: dict[str, str] | None = None) -> ImageSource:
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
    return ImageSource(image_id, key, _file_loader(image_id, path), stat)


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
                from zscir.data.images import DEFAULT_MAX_PIXELS

                return decode_image(item.read_bytes(), safe_name(str(item.id)),
                                    getattr(item, "max_pixels", DEFAULT_MAX_PIXELS), min_size=min_size)
            return to_rgb(item.load())  # ImageItem.load() already decodes with decode_image
        finally:
            _release(item)


def _object_loader(item: Any) -> Callable[[], Image.Image]:
    return _ObjectLoader(item)


def _from_object(item: Any) -> ImageSource:
    key, stat = _object_key(item)
    return ImageSource(safe_name(str(item.id)), key, _object_loader(item), stat)


def _is_object(item: Any) -> bool:
    return not isinstance(item, (ImageSource, str, os.PathLike, tuple)) and hasattr(item, "id") and hasattr(item, "load")


def _item_id(item: Any) -> str:
    if isinstance(item, ImageSource):
        return item.id
    return safe_name(str(item[0]) if isinstance(item, tuple) else str(getattr(item, "id", item)))


def as_source(item: Any, known: dict[str, str] | None = None) -> ImageSource:
    """Adapt one accepted item (see module docstring) to an :class:`ImageSource`."""
    if isinstance(item, ImageSource):
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
               ) -> tuple[list[ImageSource], list[tuple[str, str]]]:
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

    def adapt(item: Any) -> ImageSource | tuple[str, str]:
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
        if isinstance(item, ImageSource):
            return False
        path = item[1] if isinstance(item, tuple) else item
        try:
            return file_key(path) not in known
        except OSError:
            return False

    slow = sum(map(needs_reading, items))
    if slow > 1:
        from tqdm.auto import tqdm

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
    sources = [a for a in adapted if isinstance(a, ImageSource)]
    unusable = [a for a in adapted if not isinstance(a, ImageSource)]
    return sources, unusable


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def images_in_folder(folder: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                     ) -> list[tuple[str, Path]]:
    """(id, path) for every image file under ``folder``, id = path relative to it (POSIX, bytes-safe), sorted.

    Symlinks to files are listed (a dangling one is skipped later, with its reason);
    symlinked folders are not followed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ZscirError(f"image folder {safe_name(str(root))!r} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(extensions) and not name.startswith("."):
                p = Path(dirpath) / name
                found.append((safe_name(p.relative_to(root).as_posix()), p))
    found.sort()
    return found
