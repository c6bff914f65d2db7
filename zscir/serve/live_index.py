"""The served index as a snapshot swapped whole when ``zscir index`` writes a new generation.

A request takes the snapshot (:class:`IndexState`) once and uses it to the end, so it sees the old
index or the new one, never a mix. The snapshot carries what the service derives from an index:
row lookups, the metadata table (``zscir index --metadata``) and the notice about the world's CLIP.
While a new generation is being opened the index is "loading": /readyz answers 503 so that a load
balancer holds traffic back until it is in.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex
from zscir.index.metadata import METADATA_FILE, Metadata, load_metadata
from zscir.serve.notices import world_clip_notice

log = logging.getLogger("zscir.serve")


@dataclass
class IndexState:
    """One opened generation of the index, with a retriever per model over it."""

    retrievers: dict[str, Any]
    signature: tuple
    row_of_id: dict[str, int] = field(default_factory=dict)
    ids_of_key: dict[str, list[str]] = field(default_factory=dict)
    metadata: Metadata | None = None
    notices: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.row_of_id = {i: n for n, i in enumerate(self.index.ids)}
        for image_id, key in zip(self.index.ids, getattr(self.index, "keys", None) or []):
            if key:
                self.ids_of_key.setdefault(key, []).append(image_id)
        self.metadata = load_metadata(self.index.root)
        notice = world_clip_notice(self.index.meta)
        self.notices = [notice] if notice else []

    @property
    def index(self):
        return next(iter(self.retrievers.values())).index

    @property
    def generation(self) -> int:
        return int(self.index.meta.get("generation", 0))


def signature(root: Path) -> tuple:
    """What changes when ``zscir index`` writes a new generation or a new metadata table."""
    out = []
    for name in ("index.json", METADATA_FILE):
        try:
            st = (Path(root) / name).stat()
        except OSError:
            if name == "index.json":
                return ()
            out.append(None)
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class LiveIndex:
    """The current :class:`IndexState` of ``root``, re-opened by a watcher thread when it changes."""

    def __init__(self, retrievers: dict[str, Any], interval: float, on_swap: Callable[[], None], metrics):
        roots = {str(Path(r.index.root).resolve()) for r in retrievers.values()}
        if len(roots) > 1:
            raise ZscirError(f"the served models must search one index, got {len(roots)}: {', '.join(sorted(roots))}")
        self.root = Path(next(iter(retrievers.values())).index.root)
        self.models = dict(retrievers)      # each model as loaded: a new index generation gets the same ones
        self.state = IndexState(dict(retrievers), signature(self.root))
        self.interval, self.on_swap, self.metrics = interval, on_swap, metrics
        self.loading = False                 # True while a changed index is being opened
        self._lock = threading.Lock()
        self._failed: tuple | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def reload_if_changed(self) -> bool:
        """Open the index again if it changed; swap it in whole. True when a new generation came in."""
        with self._lock:
            sig = signature(self.root)
            if not sig or sig == self.state.signature:
                return False
            self.loading = True
            try:
                new = self._open(sig)
            finally:
                self.loading = False
            if new is None:
                return False
            old, self.state = self.state, new  # one assignment: each request holds the snapshot it started with
            self.metrics.counter("zscir_index_reloads_total", "Times a new index generation was loaded")
            self.on_swap()
            log.info("index %s: generation %s -> %s (%d images)", self.root, old.generation, new.generation,
                     len(new.index))
            return new.generation != old.generation

    def _open(self, sig: tuple) -> IndexState | None:
        if sig == self._failed:
            return None
        problem: object = "index.json kept changing while it was read"
        for attempt in range(5):
            try:
                index = GalleryIndex.open(self.root)
            except ZscirError as e:  # e.g. an older generation's files deleted between index.json and them
                problem = e
                time.sleep(0.05 * (attempt + 1))
                sig = signature(self.root)
                continue
            now = signature(self.root)
            if now != sig:  # replaced again while we read it: read the newer one
                sig = now
                continue
            try:
                return IndexState({name: r.over(index) for name, r in self.models.items()}, sig)
            except ZscirError as e:  # rebuilt with another backbone (or a damaged metadata table)
                problem = e
                break
        self._failed = sig
        self.metrics.counter("zscir_index_reload_errors_total", "Index reloads that failed (the old index is kept)")
        log.warning("index %s changed but cannot be served; still serving generation %s: %s",
                    self.root, self.state.generation, problem)
        return None

    def start_watching(self) -> None:
        if self.interval <= 0 or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="zscir-index-watch", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad reload
                log.exception("index reload failed")
