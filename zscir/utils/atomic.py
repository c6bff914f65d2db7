"""Atomic file writes: readers see the old file or the new one, never half of one.

A write the disk refuses (full, read-only, not permitted) raises
:class:`zscir.errors.WriteFailedError` naming the file being written (not its
temporary file) and the cause, whatever the writer (open/write, safetensors,
torch.save) made of it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from zscir.errors import WriteFailedError, write_errno


@functools.cache
def _umask() -> int:
    # read once: os.umask can only be read by setting it, which would race with other threads later on
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory so that the final
    ``os.replace`` is a rename within one filesystem (atomic on POSIX).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        _raise_write_failure(e, path, None)
        raise
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the final file the mode a plain open() would (0666 minus umask)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except Exception as e:
        _raise_write_failure(e, path, tmp_path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _raise_write_failure(exc: Exception, path: Path, tmp: Path | None) -> None:
    """Raise :class:`WriteFailedError` for ``path`` when the disk refused writing it.

    An OSError about another file (the caller read an input inside the ``with``) is not a write
    failure of ``path`` and passes unchanged; so does every exception that is no refusal of the disk.
    """
    if isinstance(exc, OSError) and exc.filename is not None and tmp is not None:
        if os.fspath(exc.filename) not in (os.fspath(tmp), os.fspath(path)):
            return
    elif not isinstance(exc, OSError) and tmp is not None and not _is_writer_error(exc):
        return
    code = write_errno(exc, path.parent if path.parent.is_dir() else None)
    if code is not None:
        raise WriteFailedError(path, code) from exc


def _is_writer_error(exc: Exception) -> bool:
    """An error a writer raises for a failed write (safetensors' SafetensorError, torch.save's RuntimeError)."""
    return isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
