"""Edit many (caption, instruction) pairs once, resumably, into the generation cache.

``edit_pairs(pairs, editor, cache_path)`` is to edits what ``caption_images`` is to captions:
each distinct pair (content key :func:`edit_key`) is generated once per editor identity;
finished batches are durable before the next one starts (a kill loses only the batch in
flight); a rerun generates nothing already generated; a new model, prompt or decoding is a
new identity and generates again. With ``share=(rank, world)`` a process takes every
``world``-th distinct pair, and processes may append to one cache file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from zscir.errors import ZscirError
from zscir.generation.base import EditInput, Editor, check_outputs
from zscir.generation.cache import GenerationCache, default_cache_path


class EditResult(dict):
    """pair id -> the pair's edits (a list of N strings), in input order, plus counts."""

    def __init__(self):
        super().__init__()
        self.edited = 0        # distinct pairs generated in this run
        self.from_cache = 0    # distinct pairs found in the cache
        self.empty: list[str] = []   # pair ids whose model answer was empty (not cached: a rerun tries again)
        self.cache_path: Path | None = None
        self.identity = ""

    def summary(self) -> dict:
        return {"pairs": len(self), "edited_now": self.edited, "from_cache": self.from_cache,
                "empty": len(self.empty), "editor": self.identity,
                "cache": str(self.cache_path) if self.cache_path else None}


def edit_pairs(pairs: Iterable[tuple[str, EditInput]], editor: Editor, cache_path: str | os.PathLike | None = None,
               batch_size: int = 16, progress: bool = True, share: tuple[int, int] | None = None) -> EditResult:
    """Edit every (id, EditInput) (resumable through the cache); returns id -> list of edits."""
    if batch_size < 1:
        raise ZscirError(f"--batch-size {batch_size}: expected a positive integer")
    rank, world = share or (0, 1)
    pairs = list(pairs)
    result = EditResult()
    result.identity = editor.identity
    result.cache_path = Path(cache_path) if cache_path else default_cache_path(editor.identity, "edit")
    by_key: dict[str, list[str]] = {}
    inputs: dict[str, EditInput] = {}
    for pair_id, pair in pairs:
        key = pair.content_key
        by_key.setdefault(key, []).append(pair_id)
        inputs.setdefault(key, pair)
    with GenerationCache(result.cache_path, editor.identity, kind="edit", about=editor.about()) as cache:
        todo = []
        for position, key in enumerate(by_key):
            if key in cache:
                result.from_cache += 1
            elif position % world == rank:
                todo.append(key)
        bar = tqdm(total=len(todo), unit="edit", desc=f"edit [{editor.name}]", disable=not progress,
                   dynamic_ncols=True)
        try:
            for start in range(0, len(todo), batch_size):
                keys = todo[start:start + batch_size]
                batch = [inputs[k] for k in keys]
                outputs = check_outputs(editor.edit(batch), len(batch), editor.decoding.n, editor.identity)
                done = [(k, by_key[k][0], out) for k, out in zip(keys, outputs) if out is not None]
                cache.add_many(done, inputs=[inputs[k]._asdict() for k, _, _ in done])
                result.edited += len(done)
                result.empty.extend(by_key[k][0] for k, out in zip(keys, outputs) if out is None)
                bar.update(len(keys))
        finally:
            bar.close()
        for pair_id, pair in pairs:
            outputs = cache.outputs(pair.content_key)
            if outputs is not None:
                result[pair_id] = outputs
    return result
