"""Precision of the world CLIP's training steps: fp32, or bf16 autocast of the two towers.

The rule:

- master weights, gradients and AdamW's state are fp32 in both precisions; with ``bf16`` the
  towers' forward (and so its backward) runs under ``torch.autocast`` to bfloat16, on the
  device the batch is on (CPU autocast on a CPU, CUDA autocast on a GPU);
- the features are cast back to fp32 before they are normalised and scored, and the loss is
  fp32: bf16 keeps about 3 significant digits, so at logit scale 100 two twins' cosines that
  differ by 0.01 would be rounded to within ~0.8 logit of each other;
- ``fp32`` enters no autocast context at all: the same operations as before the option existed;
- fp16 is not offered (it would need a loss scaler);
- on a CPU, bf16 runs only where it is native (AVX512-BF16 or AMX-BF16 in the CPU's flags):
  elsewhere it is emulated, slower than fp32, and refused with one line -- never run in fp32
  instead. The same check as ``zscir index --precision`` (:mod:`zscir.features.precision`).

``eval/bench_train_backbone_precision.py`` measures the speed of both and the loss each
reaches from the same seed.
"""

from __future__ import annotations

from zscir.errors import ZscirError
from zscir.features.precision import autocast, check_precision

TRAIN_PRECISIONS = ("fp32", "bf16")


def validate_train_precision(precision: str) -> None:
    """Raise a one-line :class:`ZscirError` unless ``precision`` is one training offers."""
    if precision not in TRAIN_PRECISIONS:
        raise ZscirError(f"--precision {precision!r}: expected one of {', '.join(TRAIN_PRECISIONS)} for training")


def check_train_precision(precision: str, device: str = "cpu", flags: frozenset[str] | None = None) -> None:
    """Raise a one-line :class:`ZscirError` unless ``device`` trains in ``precision`` natively (``flags``: the CPU's)."""
    validate_train_precision(precision)
    check_precision(precision, device, flags)


def tower_autocast(precision: str, device):
    """The context the towers' forward runs in: none for fp32, bf16 autocast on ``device``'s type otherwise."""
    validate_train_precision(precision)
    return autocast(precision, device)
