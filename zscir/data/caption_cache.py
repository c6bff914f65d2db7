"""Caption a whole image source once, resumably, into the generation cache.

Captions are cached in the one generation cache (:mod:`zscir.generation.cache`, an
append-only JSONL file) keyed by the image's content hash and the captioner's identity, so that:
- a run killed at image 2,000,001 restarts at image 2,000,001 (every finished
  batch is flushed and fsynced before the next one starts; a line cut in half
  by the kill is dropped on the next open);
- the same picture under two names, or in two datasets, is captioned once;
- a different model, prompt or decoding never reuses old captions;
- several processes (``share=(rank, world)``: process ``rank`` takes every ``world``-th image)
  append to one file under a lock, and a last pass over the whole source reads everything
  from the cache: N processes leave the same entries as one.

A captioner with ``decoding.n > 1`` gives N captions per image: ``result[id]`` is the first,
``result.outputs[id]`` all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from zscir.data.images import BadImageError, SkipReport
from zscir.data.sources import ImageItem, ImageSource
from zscir.errors import ZscirError
from zscir.generation.base import Captioner, GenerationUnavailable
from zscir.generation.cache import (HEADER, CaptionCache, GenerationCache, captioner_key, check_cache_file,
                                    create_cache_file, default_cache_path, json_line)

__all__ = ["HEADER", "CaptionCache", "CaptionResult", "GenerationCache", "MAX_CONSECUTIVE_FAILURES", "caption_images",
           "captioner_key", "check_cache_file", "create_cache_file", "default_cache_path", "json_line"]


class CaptionResult(dict):
    """id -> caption (the first, when there are N) in source order, plus what happened on the way."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[str, list[str]] = {}  # id -> every caption of the image (N with decoding.n = N)
        self.from_cache = 0          # images whose caption was already in the cache
        self.captioned = 0           # images captioned in this run
        self.skipped = SkipReport()  # the source's report: bad files, missing shards, no caption
        self.cache_path: Path | None = None
        self.identity = ""

    def summary(self) -> dict:
        return {"images": len(self), "captioned_now": self.captioned, "from_cache": self.from_cache,
                "captioner": self.identity, "cache": str(self.cache_path) if self.cache_path else None,
                **self.skipped.to_dict()}


# A captioner that fails on this many images in a row is broken, not fed bad images.
MAX_CONSECUTIVE_FAILURES = 64


def caption_images(source: ImageSource, captioner: Captioner, cache_path: str | os.PathLike | None = None,
                   batch_size: int = 16, progress: bool = True, share: tuple[int, int] | None = None) -> CaptionResult:
    """Caption every image of ``source`` (resumable through the cache); returns id -> caption.

    Skipped items (undecodable, duplicate ids, no caption) are listed in
    ``result.skipped`` (the same object as ``source.skipped``). With ``share=(rank, world)``
    only the images at positions ``rank, rank + world, ...`` of the source are visited.
    """
    if batch_size < 1:
        raise ZscirError(f"--batch-size {batch_size}: expected a positive integer")
    rank, world = share or (0, 1)
    run = _CaptionRun(source, captioner, batch_size)
    result = run.result
    result.identity = captioner.identity
    bar = tqdm(total=source.estimated_len(), unit="img", desc=f"caption [{captioner.name}]",
               disable=not progress, dynamic_ncols=True)
    cache = None
    if captioner.cacheable:
        result.cache_path = Path(cache_path) if cache_path else default_cache_path(captioner.identity)
        cache = CaptionCache(result.cache_path, captioner.identity, about=captioner.about())
    try:
        for position, item in enumerate(source):
            bar.update(1)
            if position % world != rank:
                continue
            run.add(item, cache)
            if bar.n % 256 == 0:
                bar.set_postfix(cached=result.from_cache, new=result.captioned, skipped=len(result.skipped))
        run.flush(cache)
    finally:
        bar.close()
        if cache is not None:
            cache.close()
    return run.ordered()


class _CaptionRun:
    """The state of one pass: the pending batch, the order of ids, the counts."""

    def __init__(self, source: ImageSource, captioner: Captioner, batch_size: int):
        self.source, self.captioner, self.batch_size = source, captioner, batch_size
        self.n = getattr(getattr(captioner, "decoding", None), "n", 1)
        self.result = CaptionResult()
        self.result.skipped = source.skipped
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.pending: list[tuple[ImageItem, object]] = []   # (item, decoded image or None)
        self.pending_hash: dict[str, list[str]] = {}      # content hash -> ids waiting for it
        self.consecutive_failures = 0

    def _keep(self, item_id: str, outputs: list[str]) -> None:
        self.result[item_id] = outputs[0]
        self.result.outputs[item_id] = outputs

    def add(self, item: ImageItem, cache: CaptionCache | None) -> None:
        if item.id in self.seen:
            self.source.skipped.add(item.id + " (again)", "duplicate id")
            return
        self.seen.add(item.id)
        self.order.append(item.id)
        if cache is None:  # a lookup: no hashing, no decoding
            self.pending.append((item, None))
        else:
            try:
                content_hash = item.content_hash
            except BadImageError as e:
                self.source.skipped.record(e)
                return
            cached = cache.outputs(content_hash)
            if cached is not None:
                self._keep(item.id, cached)
                self.result.from_cache += 1
                item.release()
                return
            if content_hash in self.pending_hash:  # the same picture twice in one batch
                self.pending_hash[content_hash].append(item.id)
                return
            image = self.source.load_or_skip(item) if self.captioner.needs_images else None
            item.release()
            if image is None and self.captioner.needs_images:
                return
            self.pending_hash[content_hash] = [item.id]
            self.pending.append((item, image))
        if len(self.pending) >= self.batch_size:
            self.flush(cache)

    def flush(self, cache: CaptionCache | None) -> None:
        if not self.pending:
            return
        items = [item for item, _ in self.pending]
        images = [image for _, image in self.pending] if self.captioner.needs_images else None
        captions = self._caption_batch(items, images)
        rows = []
        for item, outputs in zip(items, captions):
            ids = self.pending_hash.get(item.content_hash, [item.id]) if cache is not None else [item.id]
            if outputs is None:
                for item_id in ids:
                    self.source.skipped.add(item_id, "no caption")
                continue
            for item_id in ids:
                self._keep(item_id, outputs)
            self.result.captioned += len(ids)
            if cache is not None:  # one caption is stored as the string, as zscir always wrote it
                rows.append((item.content_hash, item.id, outputs[0] if self.n == 1 else outputs))
        if cache is not None:
            cache.add_many(rows)
        self.pending, self.pending_hash = [], {}

    def _caption_batch(self, items, images) -> list[list[str] | None]:
        try:
            captions = self._checked(self.captioner.caption(items, images), len(items))
        except GenerationUnavailable:
            raise  # the captioner cannot run at all (endpoint down, model missing): nothing to skip
        except Exception as error:
            if len(items) == 1:
                return [self._failed(items[0], error)]
            # One bad image must not cost its batch: retry one by one and skip only the failures.
            return [self._caption_batch([item], None if images is None else [images[i]])[0]
                    for i, item in enumerate(items)]
        self.consecutive_failures = 0
        return captions

    def _failed(self, item: ImageItem, error: Exception) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise ZscirError(f"captioner {self.captioner.identity} failed on {self.consecutive_failures} images "
                             f"in a row (last: {item.id}: {type(error).__name__}: {error})") from error
        self.source.skipped.add(item.id, f"captioner failed ({type(error).__name__})")
        return None

    def _checked(self, captions, n: int) -> list[list[str] | None]:
        captions = list(captions)
        if len(captions) != n:
            raise ZscirError(f"captioner {self.captioner.identity} returned {len(captions)} captions for {n} images")
        checked = []
        for value in captions:
            texts = [value] if isinstance(value, str) else list(value or ())
            texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
            checked.append(texts or None)
        return checked

    def ordered(self) -> CaptionResult:
        out = CaptionResult()
        out.__dict__.update(self.result.__dict__)
        out.update((i, self.result[i]) for i in self.order if i in self.result)
        return out
