"""End a launcher's process group before the interpreter's own teardown.

A process of a ``torchrun`` / ``accelerate launch`` job that exits with its (gloo) process group still
alive leaves the group's C++ threads to the interpreter's teardown, where they can abort the process
("terminate called without an active exception", SIGABRT): the launcher then reports the whole job as
failed although its work was done. :func:`end_at_exit` registers, once, an exit handler that destroys
the default process group while the interpreter is still whole.
"""

from __future__ import annotations

import atexit

_registered = False


def _end_process_group() -> None:
    import torch.distributed as dist  # heavy: only a launched process registers this

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_at_exit() -> None:
    """Destroy the default process group (if any) when this process exits normally."""
    global _registered
    if not _registered:
        atexit.register(_end_process_group)
        _registered = True
