"""Worker pools that leave Ctrl-C to the main process.

A terminal's Ctrl-C reaches the whole process group. A pool worker that receives it prints its own
KeyboardInterrupt traceback, and an initializer that ignores SIGINT comes too late for a worker still
starting up (importing its modules) when the signal arrives. :func:`spawn_pool` therefore ignores SIGINT
in the main process while the pool starts its workers: an ignored signal stays ignored across ``exec``,
and Python keeps it ignored at start-up, so each worker ignores Ctrl-C from its first instruction. The
main process's own handler is put back before the pool is returned: it alone stops the work (and the
command prints one "interrupted" line).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading


def spawn_pool(workers: int):
    """A ``spawn`` :class:`multiprocessing.pool.Pool` of ``workers`` processes that ignore SIGINT.

    Spawn, not fork: the caller may hold torch threads, which do not survive a fork.
    """
    context = multiprocessing.get_context("spawn")
    if threading.current_thread() is not threading.main_thread():
        # signal handlers can only be changed in the main thread; the initializer still covers started workers
        return context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    finally:
        signal.signal(signal.SIGINT, previous)
