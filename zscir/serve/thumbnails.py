"""JPEG thumbnails of gallery images: made on demand, cached in memory (bounded in bytes), with an ETag.

The ETag names the file's identity (path, modification time, size) and the size asked for, so a
browser's copy is revalidated (304) until the file changes; a file deleted after indexing is a 404
that names the image id, never the server's path.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import threading
from dataclasses import dataclass

from zscir.data.images import BadImageError, decode_image

THUMB_SIZES = (64, 128, 192, 256, 384, 512)


@dataclass
class Thumbnail:
    data: bytes
    etag: str          # a strong validator, quoted as HTTP wants it


class ThumbnailCache:
    """Thumbnails by (path, mtime, size, thumbnail size), least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self.lock:
            if key in self.items or len(data) > self.max_bytes:
                return
            self.items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= len(old)


def file_etag(path: str, st: os.stat_result, size: int) -> str:
    raw = f"{path}\0{st.st_mtime_ns}\0{st.st_size}\0{size}".encode("utf-8", "surrogateescape")
    return '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def make_thumbnail(path: str, image_id: str, size: int) -> bytes:
    """The JPEG thumbnail (longest side ``size``) of the file; OSError / BadImageError when unreadable."""
    with open(path, "rb") as f:
        image = decode_image(f.read(), item_id=image_id)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
