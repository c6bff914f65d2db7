"""User-facing errors, and the one place where other exceptions a user can cause become one line.

A ``ZscirError`` carries a message meant for a person: it names the file, field
or option at fault and what was expected. The CLI prints it on one line and
exits non-zero, without a traceback. :func:`user_message` turns the errors that
come from the user's files and folders (OSError, damaged safetensors, refused
pickles, weights of another architecture, damaged JSON) into such a line;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re


class ZscirError(Exception):
    """An error caused by the user's input or environment, not by a bug."""


class MissingWeightsError(ZscirError):
    """Model weights are not available locally and cannot be downloaded."""


# other OSErrors (the disk's refusals of a write: WRITE_ERRNOS below)
_OS_HINTS = {
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another --out",
    errno.EISDIR: "this is a folder, expected a file",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EMFILE: "too many open files: raise `ulimit -n`",
}


# the errnos by which a disk refuses a write, each with its cause named as the system names it
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device (ENOSPC): free some space or write it to another disk",
    errno.EDQUOT: "disk quota exceeded (EDQUOT): free some space or write it to another disk",
    errno.EROFS: "read-only file system (EROFS): write it to a writable folder",
    errno.EACCES: "permission denied (EACCES): fix its permissions or choose another path",
    errno.EPERM: "operation not permitted (EPERM): fix its permissions or choose another path",
}


class WriteFailedError(ZscirError):
    """Writing ``path`` failed for a reason of the disk (full, read-only, not permitted): one line naming the
    file being written (never a temporary file) and the cause."""

    def __init__(self, path: str | os.PathLike, errno_: int):
        self.path, self.errno = os.fspath(path), errno_
        super().__init__(f"{self.path}: cannot write it: {WRITE_ERRNOS[errno_]}")


_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def write_errno(exc: BaseException, folder: str | os.PathLike | None = None) -> int | None:
    """The errno of :data:`WRITE_ERRNOS` behind ``exc`` raised while writing into ``folder``, else None.

    An OSError carries it; a writer that wraps it (safetensors: "... (os error 28)") names it in its
    message; a writer that loses it (torch.save on a full disk: "unexpected pos ...") is taken as
    ENOSPC when ``folder``'s file system has no free block left.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno if exc.errno in WRITE_ERRNOS else None
        match = _OS_ERROR_NUMBER.search(str(exc))
        if match and int(match.group(1) or match.group(2)) in WRITE_ERRNOS:
            return int(match.group(1) or match.group(2))
        exc = exc.__cause__ or exc.__context__
    if folder is not None:
        try:
            fs = os.statvfs(folder)
        except OSError:
            return None
        if (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) == 0:
            return errno.ENOSPC
    return None


def _first_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _file_in_traceback(exc: BaseException, must_exist: bool = True) -> str | None:
    """The file the failing code was working on: the innermost frame's local naming a file.

    Used when an exception does not carry its file name (a JSON parser, a full disk seen by
    ``write``). A temporary file of :mod:`zscir.utils.atomic` (``.NAME.xxxx.tmp``) is reported
    as the file it was going to become.
    """
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("path", "file", "filename", "sidecar", "weights", "checkpoint_path", "tmp", "out", "fp", "f",
                     "log", "handle", "stream"):
            value = frame.f_locals.get(name)
            if not isinstance(value, (str, os.PathLike)) and isinstance(getattr(value, "name", None), str):
                value = value.name  # an open file
            if isinstance(value, (str, os.PathLike)) and (os.path.isfile(value) or not must_exist):
                path = os.fspath(value)
                folder, base = os.path.split(path)
                if base.startswith(".") and base.endswith(".tmp") and base.count(".") >= 3:
                    path = os.path.join(folder, base[1:].rsplit(".", 2)[0])
                return path
    return None


def _hint_for(path: str | None) -> str:
    if path is None:
        return "restore it or delete it (zscir rebuilds what it derived)"
    parts = set(os.path.normpath(path).split(os.sep))
    if "index.json" in parts or "manifest.json" in parts or any("index" in p for p in parts):
        return "delete it or run `zscir index --force` to rebuild the index"
    if path.endswith(".json") and os.path.isfile(path[:-5] + ".safetensors"):
        return "the checkpoint sidecar is damaged: restore it or save the checkpoint again"
    return "restore it, or delete it if zscir derived it (it is rebuilt)"


def user_message(exc: BaseException) -> str | None:
    """One line for an error the user's input or environment caused; None for a bug (keep the traceback)."""
    if isinstance(exc, ZscirError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else _file_in_traceback(exc, must_exist=False)
        if exc.filename2 is not None:
            where = f"{exc.filename} -> {exc.filename2}"
        # the disk's refusals by their cause and name: "no space left on device (ENOSPC): ..."
        hint = WRITE_ERRNOS.get(exc.errno) or _OS_HINTS.get(exc.errno, exc.strerror or _first_line(exc)
                                                               or type(exc).__name__)
        return f"{where}: {hint}" if where else f"{hint} ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, json.JSONDecodeError):
        path = _file_in_traceback(exc)
        return f"{path or 'a file zscir reads'}: not valid JSON ({_first_line(exc, 120)}): {_hint_for(path)}"
    if isinstance(exc, UnicodeDecodeError):
        path = _file_in_traceback(exc)
        return (f"{path or 'a file zscir reads'}: not UTF-8 text ({_first_line(exc, 120)}): expected a UTF-8 "
                f"text file (JSON, JSONL, CSV or a list of paths)")
    if isinstance(exc, pickle.UnpicklingError):
        path = _file_in_traceback(exc)
        return (f"{path or 'a weights file'}: refused to unpickle it ({_first_line(exc, 120)}): zscir loads pickles "
                f"with torch.load(weights_only=True) only; convert the weights to .safetensors")
    if type(exc).__name__ == "SafetensorError":
        path = _file_in_traceback(exc)
        return (f"{path or 'a .safetensors file'}: not a readable safetensors file ({_first_line(exc, 120)}): "
                f"the file is damaged, truncated or of another format; download or save it again")
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), "")[:200]
        path = _file_in_traceback(exc)
        return (f"{path or 'the weights'}: weights of another architecture ({detail}): pass the checkpoint or "
                f"--clip the weights were trained for")
    return None
