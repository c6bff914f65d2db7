"""One image of an ``--images`` input (:class:`ImageItem`), the iterable that yields them
(:class:`ImageSource`), and the one rule for which file names are images.

The rule, for every command that takes ``--images``: a file is an image when its extension
(any case) is one of :data:`IMAGE_EXTENSIONS`; names starting with a dot (hidden files,
macOS ``._`` resource forks) and hidden folders are skipped.
"""

from __future__ import annotations

from typing import Callable, Iterator

from PIL import Image

from zscir.data.images import DEFAULT_MAX_PIXELS, BadImageError, SkipReport, decode_image
from zscir.utils.hashing import sha256_bytes

# Every format PIL decodes that zscir lists; in a webdataset sample, the first one present is its image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

IMAGES_RULE = ("Image files: .jpg .jpeg .png .webp .bmp .gif .tif .tiff (any case); "
               "dotfiles and hidden folders are skipped.")


def has_image_extension(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """The rule above, for one file name (no directory)."""
    return has_image_extension(name) and not is_hidden(name)


class ImageItem:
    """One image of a source: a stable id, lazily read bytes, and side data (webdataset members)."""

    __slots__ = ("id", "_reader", "_data", "_hash", "extras", "max_pixels")

    def __init__(self, item_id: str, reader: Callable[[], bytes] | None = None, data: bytes | None = None,
                 extras: dict[str, bytes] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.id = item_id
        self._reader, self._data, self._hash = reader, data, None
        self.extras = extras or {}
        self.max_pixels = max_pixels

    def read_bytes(self) -> bytes:
        if self._data is None:
            try:
                self._data = self._reader()
            except FileNotFoundError:
                raise BadImageError(self.id, "missing file") from None
            except OSError as e:
                raise BadImageError(self.id, "unreadable file", str(e)) from None
        return self._data

    @property
    def content_hash(self) -> str:
        """sha256 of the encoded bytes: the same picture under two names is one cache entry."""
        if self._hash is None:
            self._hash = sha256_bytes(self.read_bytes())
        return self._hash

    def load(self) -> Image.Image:
        """The image as 8-bit RGB; raises :class:`BadImageError` when it cannot be used."""
        return decode_image(self.read_bytes(), self.id, self.max_pixels)

    def release(self) -> None:
        """Drop the cached bytes (the hash stays) once the image has been used."""
        self._data = None if self._reader is not None else self._data

    def __repr__(self) -> str:
        return f"ImageItem({self.id!r})"


class ImageSource:
    """Iterable of :class:`ImageItem`; ``skipped`` collects what could not be used."""

    kind = "?"

    def __init__(self, spec: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec, self.max_pixels = spec, max_pixels
        self.skipped = SkipReport()

    def __iter__(self) -> Iterator[ImageItem]:
        raise NotImplementedError

    def estimated_len(self) -> int | None:
        """Number of items when known cheaply (for progress bars), else None."""
        return None

    def load_or_skip(self, item: ImageItem) -> Image.Image | None:
        try:
            return item.load()
        except BadImageError as e:
            self.skipped.record(e)
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
