"""One exclusive lock between processes: ``fcntl.flock`` on a lock file or on an open file.

    with file_lock(folder / ".lock"):                       # created if missing; released on exit
        ...
    with file_lock(self._file, on_wait=lambda: print("waiting ...")):

Two processes asking at once: one holds the lock, the other waits (``on_wait`` is called once,
before it starts waiting, so that a user sees why nothing happens). The lock dies with its
process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def file_lock(target: str | os.PathLike | IO, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a lock file's path, opened for writing, or an open file)."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w") as lock, file_lock(lock, on_wait):
            yield
        return
    if on_wait is None:
        fcntl.flock(target, fcntl.LOCK_EX)
    else:
        try:
            fcntl.flock(target, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(target, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(target, fcntl.LOCK_UN)
