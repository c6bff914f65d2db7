"""Weights must be finite numbers: a NaN or infinite value is refused by name, before it is used.

A network with one NaN weight scores every query ``nan`` and ranks nothing; an imported or
saved file that holds one is damaged (or its training diverged), so importing or loading it
fails with one line naming the file and the tensor.
"""

from __future__ import annotations

import os
from typing import Mapping, TypeVar

import torch

from zscir.errors import ZscirError

T = TypeVar("T", bound=Mapping[str, torch.Tensor])


def require_finite(tensors: T, where: str | os.PathLike) -> T:
    """Return ``tensors`` unchanged if every floating-point value is finite; else raise naming the first bad one."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise ZscirError(f"{where}: tensor {key!r} holds {nan} NaN and {inf} infinite values (of "
                             f"{tensor.numel()}): the weights are damaged or their training diverged; refused")
    return tensors
