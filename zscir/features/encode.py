"""Batched image encoding: decode and preprocess in threads while the model runs.

Corrupt or unreadable images are skipped and returned with their reason, never
raised: one bad file in 100k must not end a long job.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from zscir.data.images import BadImageError
from zscir.errors import ZscirError
from zscir.features.sources import ImageSource, default_workers
from zscir.features.shards import DTYPE


@dataclass
class EncodedBatch:
    ids: list[str]
    keys: list[str]
    pooled: np.ndarray            # fp16 [b, D], projected, not normalised
    tokens: np.ndarray | None     # fp16 [b, T, W] (CLS + patches) or None
    corrupt: list[tuple[str, str]]  # (id, reason) of images skipped in this batch


def skip_reason(error: Exception) -> str:
    """How a skipped image is reported: the decoder's countable reason (plus detail), else the exception."""
    if isinstance(error, BadImageError):
        return error.reason + (f" ({error.detail})" if error.detail else "")
    return f"{type(error).__name__}: {error}".strip()


def _prepare(source: ImageSource, preprocess) -> tuple[torch.Tensor | None, str | None]:
    try:
        return preprocess(source.load()), None
    except BadImageError as e:
        return None, skip_reason(e)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "this file is unusable", which we count
        return None, f"{type(e).__name__}: {e}".strip()


def _prepared_batches(sources: Sequence[ImageSource], preprocess, batch_size: int, workers: int,
                      prefetch: int = 2) -> Iterator[tuple[list[ImageSource], list]]:
    """Yield (batch, [(tensor|None, error|None), ...]) with ``prefetch`` batches decoding ahead."""
    starts = iter(range(0, len(sources), batch_size))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zscir-decode") as pool:
        pending: deque = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                batch = list(sources[start:start + batch_size])
                pending.append((batch, [pool.submit(_prepare, s, preprocess) for s in batch]))

        for _ in range(prefetch):
            submit_next()
        while pending:
            batch, futures = pending.popleft()
            submit_next()
            yield batch, [f.result() for f in futures]


def encode_sources(backbone, sources: Sequence[ImageSource], batch_size: int = 64, with_tokens: bool = False,
                   workers: int | None = None) -> Iterator[EncodedBatch]:
    """Encode ``sources`` with ``backbone`` in batches; yields fp16 numpy features."""
    workers = workers or default_workers()
    for batch, prepared in _prepared_batches(sources, backbone.preprocess, batch_size, workers):
        good = [(s, t) for s, (t, err) in zip(batch, prepared) if t is not None]
        corrupt = [(s.id, err) for s, (t, err) in zip(batch, prepared) if t is None]
        if not good:
            yield EncodedBatch([], [], np.zeros((0, 0), DTYPE), None, corrupt)
            continue
        images = torch.stack([t for _, t in good]).to(backbone.device)
        with torch.inference_mode():
            feats = backbone.encode_image(images, with_tokens=with_tokens)
        pooled = feats.pooled.float().cpu().numpy().astype(DTYPE)
        tokens = feats.tokens.float().cpu().numpy().astype(DTYPE) if with_tokens else None
        for name, array in (("pooled", pooled), ("token", tokens)):
            if array is not None and not np.isfinite(array).all():
                raise ZscirError(f"{name} features of {backbone.identity} overflow fp16 (|x| > 65504) or are NaN "
                                 f"in the batch starting at image {good[0][0].id!r}; the fp16 cache cannot hold them")
        yield EncodedBatch([s.id for s, _ in good], [s.key for s, _ in good], pooled, tokens, corrupt)
