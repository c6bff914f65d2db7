"""The one id and key scheme of every image zscir reads.

Ids: a folder's images are named by their path relative to the folder (POSIX
separators); a list file's by the path as written; a webdataset sample by its key.
File names that are not valid UTF-8 (possible on POSIX) get a *bytes-safe id*: each
undecodable byte is written ``\\xNN`` (:func:`safe_name`), so ids can be stored in
JSON and printed; :func:`fs_name` turns such an id back into the name on disk.
Names that are valid UTF-8 are used unchanged.

Keys: an image's *content key* is ``sha256:<hex>`` of its encoded bytes, so moving,
copying or ``touch``-ing a file changes nothing. A file's *stat key*
(``file:<abs path>:<size>:<mtime_ns>``) says whether a file may have changed without
reading it; caches map stat keys to content keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from zscir.utils.hashing import sha256_bytes, sha256_file

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


def file_key(path: str | os.PathLike) -> str:
    """The stat identity of a file on disk: absolute path, size and mtime in nanoseconds."""
    p = Path(path).absolute()
    st = p.stat()
    return f"file:{safe_name(str(p))}:{st.st_size}:{st.st_mtime_ns}"


def content_key(data: bytes) -> str:
    return "sha256:" + sha256_bytes(data)


def file_content_key(path: str | os.PathLike) -> str:
    return "sha256:" + sha256_file(path)
