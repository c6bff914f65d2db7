"""Decode + preprocess in worker processes, overlapped with the model's forward.

A torch ``DataLoader`` over the sources: each worker process decodes a whole batch
(JPEGs in draft mode to the smallest size that still covers the model's input, see
:func:`zscir.data.images.decode_image`), pads, resizes and crops it and stacks the uint8
pixels (:meth:`zscir.backbone.preprocess.Preprocess.pixels`), while the main process runs the
forward on the previous one; the main process normalises a whole batch at once, on its device.
Batches arrive in order. On a GPU the stacked batch is pinned so the copy to the device can
be ``non_blocking``.

Unusable images are not errors here: a batch carries, for each source, either its
tensor or the reason it was skipped.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from zscir.data.images import BadImageError
from zscir.features.sources import KeyedImage, load_image

if TYPE_CHECKING:  # annotations only; torch is imported where batches are made
    import torch


def default_decode_workers() -> int:
    """Decoding processes: one per core (they share the cores with the forward), at most 8; under a launcher
    (torchrun, accelerate launch) the machine's cores are shared by its ``LOCAL_WORLD_SIZE`` processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(8, cores // local))


def skip_reason(error: Exception) -> str:
    """How a skipped image is reported: the decoder's countable reason (plus detail), else the exception."""
    if isinstance(error, BadImageError):
        return error.reason + (f" ({error.detail})" if error.detail else "")
    return f"{type(error).__name__}: {error}".strip()


def prepare(source: KeyedImage, preprocess, min_size: int | None) -> tuple[torch.Tensor | None, str | None]:
    """(tensor, None) for a usable image, (None, reason) otherwise. The tensor: a ``Preprocess``'s uint8
    pixels [3, S, S] (normalised later, a batch at once), or what another callable ``preprocess`` returns."""
    try:
        return getattr(preprocess, "pixels", preprocess)(load_image(source, min_size)), None
    except Exception as e:  # noqa: BLE001 - any decoder failure means "this file is unusable", which we count
        return None, skip_reason(e)


@dataclass
class PreparedBatch:
    start: int                      # position of the batch's first source
    good: list[int]                 # positions (within the batch) of the usable images, in order
    images: torch.Tensor | None     # [len(good), 3, S, S] uint8 pixels (or a custom preprocess's floats), or None
    errors: list[tuple[int, str]]   # (position within the batch, reason) of the skipped ones

    def pin_memory(self) -> "PreparedBatch":  # DataLoader(pin_memory=True) calls this in its pinning thread
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


class _Batches:
    """Item b = batch b of the sources, decoded and turned into uint8 pixels (in a worker); a map-style
    dataset for torch's ``DataLoader``."""

    def __init__(self, sources: Sequence[KeyedImage], preprocess, batch_size: int, min_size: int | None):
        self.sources, self.preprocess, self.batch_size, self.min_size = sources, preprocess, batch_size, min_size

    def __len__(self) -> int:
        return -(-len(self.sources) // self.batch_size)

    def __getitem__(self, b: int) -> PreparedBatch:
        import torch  # heavy: only when something is encoded

        start = b * self.batch_size
        tensors, good, errors = [], [], []
        for j, source in enumerate(self.sources[start:start + self.batch_size]):
            tensor, error = prepare(source, self.preprocess, self.min_size)
            if tensor is None:
                errors.append((j, error))
            else:
                good.append(j)
                tensors.append(tensor)
        return PreparedBatch(start, good, torch.stack(tensors) if tensors else None, errors)


def _identity(batch):
    return batch


def _quiet_worker(_worker_id: int) -> None:
    """A decoding worker writes nothing to stderr. Its errors reach the main process anyway (an unusable
    image as its skip reason, anything else re-raised there by the DataLoader); what is left is noise, e.g.
    the traceback of a batch it was still sending when Ctrl-C stopped the main process."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def prepared_batches(sources: Sequence[KeyedImage], preprocess, batch_size: int, workers: int,
                     min_size: int | None = None, pin_memory: bool = False,
                     prefetch: int = 2) -> Iterator[PreparedBatch]:
    """Yield the sources' batches in order, ``prefetch`` per worker decoding ahead; ``workers=0``: in this process."""
    dataset = _Batches(sources, preprocess, batch_size, min_size)
    workers = min(workers, len(dataset))
    if workers == 0:
        for b in range(len(dataset)):
            batch = dataset[b]
            yield batch.pin_memory() if pin_memory else batch
        return
    from torch.utils.data import DataLoader  # heavy: only when something is encoded

    # fork: the sources (and a caller's own load() closures) need not be picklable; spawn elsewhere
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        pin_memory=pin_memory, prefetch_factor=prefetch, multiprocessing_context=context,
                        worker_init_fn=_quiet_worker)
    yield from loader
