"""spawn_pool: workers ignore Ctrl-C from their first instruction, the main process keeps its handler."""

import signal
from pathlib import Path

from zscir.utils.pools import spawn_pool


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for process {pid}")


def _square(x):
    return x * x


def test_workers_ignore_sigint_as_soon_as_they_exist_and_the_main_handler_is_kept():
    handler = signal.getsignal(signal.SIGINT)
    pool = spawn_pool(2)
    try:
        # read before any worker has run its initializer: the disposition was inherited across exec
        masks = [_ignored_signals(p.pid) for p in pool._pool]
        assert all(mask & (1 << (signal.SIGINT - 1)) for mask in masks), [hex(m) for m in masks]
        assert signal.getsignal(signal.SIGINT) is handler
        assert pool.map(_square, range(5)) == [0, 1, 4, 9, 16]
    finally:
        pool.terminate()
        pool.join()
