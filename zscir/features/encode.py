"""Batched image encoding: decode and preprocess in worker processes while the model runs.

Corrupt or unreadable images are skipped and returned with their reason, never
raised: one bad file in 100k must not end a long job. ``precision`` runs the forward
under bf16/fp16 autocast (:mod:`zscir.features.precision`); ``draft`` decodes JPEGs
at the smallest DCT scale that still covers the model's input (:mod:`zscir.features.loader`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from zscir.errors import ZscirError
from zscir.features.loader import default_decode_workers, prepared_batches, skip_reason  # noqa: F401 (re-export)
from zscir.features.options import EncodeOptions
from zscir.features.precision import autocast, check_precision
from zscir.features.shards import DTYPE
from zscir.features.sources import KeyedImage


@dataclass
class EncodedBatch:
    ids: list[str]
    keys: list[str]
    pooled: np.ndarray            # fp16 [b, D], projected, not normalised
    tokens: np.ndarray | None     # fp16 [b, T, W] (CLS + patches) or None
    corrupt: list[tuple[str, str]]  # (id, reason) of images skipped in this batch


def encode_sources(backbone, sources: Sequence[KeyedImage], options: EncodeOptions | None = None,
                   **overrides) -> Iterator[EncodedBatch]:
    """Encode ``sources`` with ``backbone`` in batches; yields fp16 numpy features.

    Of ``options`` (:class:`EncodeOptions`, its fields also accepted as keywords) this reads
    ``batch_size``, ``with_tokens``, ``precision``, ``draft`` and ``workers``: decoding processes
    (None: one per core; 0: decode in this process, also chosen for a single batch, where
    starting processes costs more than it saves).
    """
    import torch  # heavy: only when something is encoded

    options = EncodeOptions.of(options, **overrides)
    batch_size, with_tokens, workers = options.batch_size, options.with_tokens, options.workers
    precision, draft = options.precision, options.draft
    check_precision(precision, backbone.device)
    workers = default_decode_workers() if workers is None else workers
    if len(sources) <= batch_size:
        workers = 0
    on_gpu = backbone.device.type == "cuda"
    min_size = backbone.image_size if draft else None
    balance = CoreBalance(workers if backbone.device.type == "cpu" else 0)
    try:
        for batch in prepared_batches(sources, backbone.preprocess, batch_size, workers, min_size, pin_memory=on_gpu):
            chunk = sources[batch.start:batch.start + batch_size]
            good = [chunk[j] for j in batch.good]
            corrupt = [(chunk[j].id, reason) for j, reason in batch.errors]
            if not good:
                yield EncodedBatch([], [], np.zeros((0, 0), DTYPE), None, corrupt)
                continue
            images = batch.images.to(backbone.device, non_blocking=on_gpu)
            if images.dtype == torch.uint8:      # a Preprocess's pixels: normalised here, a batch at once
                images = backbone.preprocess.normalize(images)
            with torch.inference_mode(), autocast(precision, backbone.device):
                feats = backbone.encode_image(images, with_tokens=with_tokens)
            pooled = feats.pooled.float().cpu().numpy().astype(DTYPE)
            tokens = feats.tokens.float().cpu().numpy().astype(DTYPE) if with_tokens else None
            for name, array in (("pooled", pooled), ("token", tokens)):
                if array is not None and not np.isfinite(array).all():
                    raise ZscirError(f"{name} features of {backbone.identity} overflow fp16 (|x| > 65504) or are "
                                     f"NaN in the batch starting at image {good[0].id!r}; the fp16 cache cannot "
                                     "hold them")
            balance.batch_done()
            yield EncodedBatch([s.id for s in good], [s.key for s in good], pooled, tokens, corrupt)
    finally:
        balance.restore()


class CoreBalance:
    """On a CPU the decoding workers and the forward's torch threads share the cores, and how to split
    them depends on the model: a tiny model (the world CLIP) runs faster with fewer torch threads than
    cores, leaving the rest to the decoders, while an encoder-bound one (ViT-B-32) needs every thread
    (eval/bench_index_encode.py; docs/encoding_performance.md). So it is measured: after a start-up batch,
    ``WINDOW`` batches with all threads, then ``WINDOW`` with ``threads - workers`` (at least 1), cut
    short after one batch that is already 1.5x slower; the faster keeps going. The thread count is
    restored at the end."""

    WINDOW = 4

    def __init__(self, workers: int):
        import torch  # heavy: only when something is encoded

        self.threads = torch.get_num_threads()
        self.fewer = max(1, self.threads - workers)
        self.active = workers > 0 and self.fewer < self.threads
        self.trials: list[float] = []     # seconds of a window: with all threads, with fewer
        self.done = 0
        self._start = 0.0

    def batch_done(self) -> None:
        if not self.active or len(self.trials) == 2:
            return
        now = time.perf_counter()
        self.done += 1
        if self.done == 1:              # the first batch includes the workers' start-up: not timed
            self._start = now
            return
        in_window = (self.done - 1) % self.WINDOW or self.WINDOW
        pace = self.trials[0] * in_window / self.WINDOW if self.trials else 0.0   # all threads' time so far
        if self.trials and in_window < self.WINDOW and now - self._start > 1.5 * pace:
            # fewer threads are clearly slower (an encoder-bound model): stop the trial after one batch
            self.trials.append((now - self._start) * self.WINDOW / in_window)
            _set_threads(self.threads)
            return
        if in_window < self.WINDOW:
            return
        self.trials.append(now - self._start)
        self._start = now
        if len(self.trials) == 1:
            _set_threads(self.fewer)
        elif self.trials[0] <= self.trials[1]:
            _set_threads(self.threads)

    def restore(self) -> None:
        if self.active:
            _set_threads(self.threads)


def _set_threads(n: int) -> None:
    import torch  # heavy: only when something is encoded

    torch.set_num_threads(n)
