"""Encoding precision: fp32, or bf16 / fp16 autocast where the device has fast kernels for it.

The precision is part of a feature store's identity (``meta.json``) and of an index's
``index.json``: features of two precisions are never mixed in one store. A reduced
precision is only used where it is fast: on a CPU, bf16 needs AVX512-BF16 or AMX-BF16 and
fp16 needs AVX512-FP16 (without it fp16 matmuls are emulated, many times slower than fp32);
the flags are read at run time from ``/proc/cpuinfo``. Anything else is refused with one
line, never silently run in another precision.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from zscir.errors import ZscirError
from zscir.utils.cpu import NATIVE_FLAGS, has_native

if TYPE_CHECKING:  # annotations only
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}   # torch dtypes of the reduced precisions
def check_precision(precision: str, device: str | torch.device, flags: frozenset[str] | None = None) -> None:
    """Raise a one-line :class:`ZscirError` unless ``device`` runs ``precision`` natively."""
    if precision not in PRECISIONS:
        raise ZscirError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    import torch  # heavy: only for a reduced precision

    device = torch.device(device)
    if device.type == "cpu":
        need = NATIVE_FLAGS[precision]
        if not has_native(precision, flags):
            raise ZscirError(f"--precision {precision} on the CPU needs {' or '.join(need)} (this CPU lacks them: "
                             f"{precision} matmuls would be emulated, many times slower than fp32); use --precision "
                             f"fp32{' or bf16' if precision == 'fp16' else ''}")
    elif device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ZscirError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                             "use --precision fp16 or fp32")
    elif device.type == "mps":
        if precision == "bf16":
            raise ZscirError("--precision bf16 is not offered on mps; use --precision fp16 or fp32")
    else:
        raise ZscirError(f"--precision {precision} is not offered on device {device.type!r}; use --precision fp32")


def autocast(precision: str, device: str | torch.device):
    """The context an image forward runs in: nothing for fp32, else torch autocast to bf16/fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch  # heavy: only for a reduced precision

    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, DTYPE_NAMES[precision]))
