"""The search service behind `zscir serve`, with no HTTP in it: models, the live index, sessions, thumbnails.

    service = SearchService({"fti": retriever})
    turn = service.search(Reference.from_id("000000000123.png"), "make it red", k=10)
    turn = service.refine(turn["session"], choice=turn["results"][0]["id"], text="and smaller")

- One load of each model: every request (whichever worker thread answers it)
  shares the retrievers given here.
- The index is a snapshot (:class:`IndexState`) swapped in one assignment when
  ``zscir index`` has written a new generation: a request takes the snapshot
  once and uses it to the end, so it sees the old index or the new one, never a mix.
- Sessions (the turns of a refinement) live in memory only, bounded; nothing is
  written to disk from a request.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zscir.data.images import DEFAULT_MAX_PIXELS, BadImageError, decode_image
from zscir.errors import ZscirError
from zscir.features.sources import content_key
from zscir.index.gallery import GalleryIndex
from zscir.index.retriever import Retriever
from zscir.serve.metrics import Metrics

log = logging.getLogger("zscir.serve")

STAGES = ("decode", "image_encoder", "mapping_network", "text_encoder", "search")
THUMB_SIZES = (64, 128, 192, 256, 384, 512)


class RequestError(Exception):
    """Bad input from a request: an HTTP status, the field at fault and what was expected."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def to_dict(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


@dataclass
class ServeConfig:
    max_upload_bytes: int = 10 * 2 ** 20     # an uploaded or base64 reference image, encoded
    max_pixels: int = DEFAULT_MAX_PIXELS     # decompression-bomb limit for references
    max_k: int = 100
    max_text_chars: int = 1000
    workers: int = 2                         # searches answered at once (threads sharing the one model load)
    reload_interval: float = 2.0             # seconds between checks of index.json; 0: never reload
    thumb_size: int = 192
    thumb_cache_bytes: int = 64 * 2 ** 20
    max_sessions: int = 1000
    max_turns: int = 50
    api_key: str | None = None


@dataclass
class Reference:
    """A query's reference image: a decoded upload, or a gallery id."""

    kind: str                       # "upload" | "base64" | "id"
    image: Image.Image | None = None
    id: str | None = None
    decode_seconds: float = 0.0
    key: str | None = None          # content key of uploaded bytes: a gallery copy is left out of its answer

    @classmethod
    def from_bytes(cls, data: bytes, kind: str, field_name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                   min_size: int | None = None) -> "Reference":
        t0 = time.perf_counter()
        try:
            image = decode_image(data, item_id=field_name, max_pixels=max_pixels, min_size=min_size)
        except BadImageError as e:
            status = 413 if e.reason.startswith("too large") else 422
            raise RequestError(status, field_name, f"field {field_name!r}: {e.reason}"
                                                   + (f" ({e.detail[:160]})" if e.detail else "")) from None
        return cls(kind, image=image, decode_seconds=time.perf_counter() - t0, key=content_key(data))

    @classmethod
    def from_id(cls, image_id: str) -> "Reference":
        return cls("id", id=image_id)

    def describe(self) -> dict:
        return {"kind": self.kind, "id": self.id}


@dataclass
class IndexState:
    """One opened generation of the index, with a retriever per model over it."""

    retrievers: dict[str, Any]
    signature: tuple
    row_of_id: dict[str, int] = field(default_factory=dict)
    ids_of_key: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.row_of_id = {i: n for n, i in enumerate(self.index.ids)}
        for image_id, key in zip(self.index.ids, getattr(self.index, "keys", None) or []):
            if key:
                self.ids_of_key.setdefault(key, []).append(image_id)

    @property
    def index(self):
        return next(iter(self.retrievers.values())).index

    @property
    def generation(self) -> int:
        return int(self.index.meta.get("generation", 0))


def _signature(root: Path) -> tuple:
    try:
        st = (Path(root) / "index.json").stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _MappingTimer:
    """Times a query encoder's mapping network (forward hooks), per thread, so text encoding = the rest."""

    def __init__(self, encoder):
        self.local = threading.local()
        network = getattr(encoder, "network", None)
        self.active = network is not None and hasattr(network, "register_forward_hook")
        if self.active:
            network.register_forward_pre_hook(self._start)
            network.register_forward_hook(self._stop)

    def _start(self, module, args):
        self.local.t0 = time.perf_counter()

    def _stop(self, module, args, output):
        self.local.seconds = getattr(self.local, "seconds", 0.0) + time.perf_counter() - self.local.t0

    def take(self) -> float | None:
        if not self.active:
            return None
        seconds, self.local.seconds = getattr(self.local, "seconds", 0.0), 0.0
        return seconds


class _ThumbnailCache:
    """JPEG thumbnails of gallery images, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self.lock:
            if key in self.items or len(data) > self.max_bytes:
                return
            self.items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= len(old)


class SearchService:
    def __init__(self, retrievers: dict[str, Any], config: ServeConfig | None = None, metrics=None):
        if not retrievers:
            raise ZscirError("serve needs at least one model (option --model)")
        self.config = config or ServeConfig()
        self.metrics = metrics or Metrics()
        self.default_model = next(iter(retrievers))
        self.encoders = {name: r.encoder for name, r in retrievers.items()}
        self._timers = {name: _MappingTimer(enc) for name, enc in self.encoders.items()}
        roots = {str(Path(r.index.root).resolve()) for r in retrievers.values()}
        if len(roots) > 1:
            raise ZscirError(f"the served models must search one index, got {len(roots)}: {', '.join(sorted(roots))}")
        self.root = Path(next(iter(retrievers.values())).index.root)
        self._state = IndexState(dict(retrievers), _signature(self.root))
        self._reload_lock = threading.Lock()
        self._failed_signature: tuple | None = None
        self._sessions: collections.OrderedDict[str, list[dict]] = collections.OrderedDict()
        self._sessions_lock = threading.Lock()
        self._thumbs = _ThumbnailCache(self.config.thumb_cache_bytes)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.started = time.time()
        self._index_gauges()

    # --- the live index --------------------------------------------------------------------------
    @property
    def state(self) -> IndexState:
        return self._state

    def reload_if_changed(self) -> bool:
        """Open the index again if ``index.json`` changed; swap it in whole. True when a new generation came in."""
        with self._reload_lock:
            sig = _signature(self.root)
            if not sig or sig == self._state.signature:
                return False
            new = self._open_state(sig)
            if new is None:
                return False
            old, self._state = self._state, new  # one assignment: each request holds the snapshot it started with
            self.metrics.counter("zscir_index_reloads_total", "Times a new index generation was loaded")
            self._index_gauges()
            log.info("index %s: generation %s -> %s (%d images)", self.root, old.generation, new.generation,
                     len(new.index))
            return new.generation != old.generation

    def _open_state(self, sig: tuple) -> IndexState | None:
        if sig == self._failed_signature:
            return None
        problem: object = "index.json kept changing while it was read"
        for attempt in range(5):
            try:
                index = GalleryIndex.open(self.root)
            except ZscirError as e:  # e.g. an older generation's files deleted between index.json and them
                problem = e
                time.sleep(0.05 * (attempt + 1))
                sig = _signature(self.root)
                continue
            now = _signature(self.root)
            if now != sig:  # replaced again while we read it: read the newer one
                sig = now
                continue
            try:
                return IndexState({name: Retriever(index, enc) for name, enc in self.encoders.items()}, sig)
            except ZscirError as e:  # rebuilt with another backbone: the loaded models cannot search it
                problem = e
                break
        self._failed_signature = sig
        self.metrics.counter("zscir_index_reload_errors_total", "Index reloads that failed (the old index is kept)")
        log.warning("index %s changed but cannot be served; still serving generation %s: %s",
                    self.root, self._state.generation, problem)
        return None

    def _index_gauges(self) -> None:
        s = self._state
        self.metrics.gauge("zscir_index_images", "Images in the served index", len(s.index))
        self.metrics.gauge("zscir_index_generation", "Generation of the served index", s.generation)

    def start_watching(self) -> None:
        if self.config.reload_interval <= 0 or self._watcher is not None:
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
        while not self._stop.wait(self.config.reload_interval):
            try:
                self.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad reload
                log.exception("index reload failed")

    # --- queries ---------------------------------------------------------------------------------
    def check_text(self, text: Any, field_name: str = "text") -> str:
        if text is None:
            raise RequestError(422, field_name, f"field {field_name!r} is missing: expected the change to apply, "
                                                "e.g. \"make the circle red\"")
        if not isinstance(text, str) or not text.strip():
            raise RequestError(422, field_name, f"field {field_name!r} is empty: expected the change to apply, "
                                                "e.g. \"make the circle red\"")
        if len(text) > self.config.max_text_chars:
            raise RequestError(422, field_name, f"field {field_name!r} has {len(text)} characters; "
                                                f"at most {self.config.max_text_chars} are accepted")
        return text.strip()

    def check_k(self, k: Any, state: IndexState) -> int:
        top = min(self.config.max_k, len(state.index))
        try:
            value = int(k)
            if isinstance(k, float) and not k.is_integer() or isinstance(k, bool):
                raise ValueError
        except (TypeError, ValueError):
            raise RequestError(422, "k", f"field 'k' must be an integer from 1 to {top}, got {k!r}") from None
        if not 1 <= value <= top:
            raise RequestError(422, "k", f"field 'k' must be from 1 to {top} (the gallery has {len(state.index)} "
                                         f"images, the server's cap is {self.config.max_k}), got {value}")
        return value

    def check_model(self, model: Any) -> str:
        if model in (None, ""):
            return self.default_model
        if model not in self.encoders:
            raise RequestError(422, "model", f"field 'model': unknown model {model!r}; loaded: "
                                             f"{', '.join(self.encoders)}")
        return model

    def gallery_path(self, state: IndexState, image_id: str, field_name: str) -> str:
        row = state.row_of_id.get(image_id)
        if row is None:
            raise RequestError(404, field_name, f"field {field_name!r}: no gallery image with id {image_id!r} "
                                                f"(the index has {len(state.index)} images)")
        path = state.index.paths[row]
        if not path:
            raise RequestError(404, field_name, f"field {field_name!r}: gallery image {image_id!r} has no file")
        return path

    def search(self, reference: Reference, text: Any, k: Any = 10, model: Any = None,
               session: str | None = None) -> dict:
        """One turn: rank the gallery for ``reference`` + ``text``; a new session unless ``session`` is given."""
        state = self._state  # this request's snapshot of the index
        text = self.check_text(text)
        k = self.check_k(k, state)
        name = self.check_model(model)
        retriever = state.retrievers[name]
        image = reference.image if reference.image is not None else self.gallery_path(state, reference.id, "image_id")

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._timers[name].take()  # drop anything a failed earlier call left on this thread
        try:
            # an upload is an in-memory image: its gallery copies (same bytes) are left out by id
            own = state.ids_of_key.get(reference.key, []) if reference.key else None
            result = retriever.search_many([(image, text)], k, exclude_ids=[own], timings=timings)[0]
        except ZscirError as e:
            if reference.kind == "id":  # the gallery file went missing or unreadable on disk
                raise RequestError(404 if "does not exist" in str(e) else 422, "image_id", f"field 'image_id': {e}")
            raise
        total = time.perf_counter() - t0 + reference.decode_seconds
        mapping = self._timers[name].take()
        stages = {
            "decode": reference.decode_seconds + timings.get("decode", 0.0),
            "image_encoder": timings.get("image_encoder", 0.0),
            "mapping_network": mapping,
            "text_encoder": timings.get("query_encoder", 0.0) - (mapping or 0.0),
            "search": timings.get("search", 0.0),
        }
        for stage, seconds in stages.items():
            if seconds is not None:
                self.metrics.observe("zscir_stage_seconds", "Seconds per search stage", max(seconds, 0.0), stage=stage)
        turn = {
            "model": name, "k": k, "text": text, "reference": reference.describe(),
            "index_generation": state.generation,
            "results": [{"rank": h.rank, "score": round(h.score, 6), "id": h.id, "path": h.path,
                         "thumbnail": "images/" + urllib.parse.quote(h.id)} for h in result.hits],
            "timings_ms": {s: (None if v is None else round(max(v, 0.0) * 1000, 3)) for s, v in stages.items()}
                          | {"total": round(total * 1000, 3)},
        }
        return self._record(session, turn)

    def refine(self, session: Any, choice: Any, text: Any, k: Any = None, model: Any = None) -> dict:
        """The next turn of ``session``: the chosen result (a gallery id shown in an earlier turn) is the reference."""
        if not isinstance(session, str) or not session:
            raise RequestError(422, "session", "field 'session' is missing: expected the session id a search returned")
        if not isinstance(choice, str) or not choice:
            raise RequestError(422, "choice", "field 'choice' is missing: expected the id of a result to refine from")
        with self._sessions_lock:
            turns = self._sessions.get(session)
            turns = list(turns) if turns is not None else None
        if turns is None:
            raise RequestError(404, "session", f"field 'session': no session {session!r} (unknown, or expired: "
                                               f"the server keeps the last {self.config.max_sessions})")
        shown = {r["id"] for t in turns for r in t["results"]}
        if choice not in shown:
            raise RequestError(422, "choice", f"field 'choice': {choice!r} is not among this session's results")
        if len(turns) >= self.config.max_turns:
            raise RequestError(422, "session", f"field 'session': at most {self.config.max_turns} turns per session")
        if choice not in self._state.row_of_id:
            raise RequestError(409, "choice", f"field 'choice': {choice!r} is no longer in the gallery (the index "
                                              "was updated since); start a new search")
        last = turns[-1]
        return self.search(Reference.from_id(choice), text, last["k"] if k in (None, "") else k,
                           last["model"] if model in (None, "") else model, session=session)

    def session(self, session: str) -> list[dict] | None:
        with self._sessions_lock:
            turns = self._sessions.get(session)
            return list(turns) if turns is not None else None

    def _record(self, session: str | None, turn: dict) -> dict:
        with self._sessions_lock:
            if session is None or session not in self._sessions:
                session = secrets.token_urlsafe(12)
                self._sessions[session] = []
            turns = self._sessions[session]
            turn = {"turn": len(turns) + 1, **turn}
            turns.append(turn)
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.config.max_sessions:
                self._sessions.popitem(last=False)
            n_sessions = len(self._sessions)
            all_turns = list(turns)
        self.metrics.gauge("zscir_sessions", "Refinement sessions held in memory", n_sessions)
        return {"session": session, **turn, "turns": [_summary(t) for t in all_turns]}

    # --- images ----------------------------------------------------------------------------------
    def thumbnail(self, image_id: str, size: int | None = None) -> bytes:
        size = self.config.thumb_size if size is None else size
        if size not in THUMB_SIZES:
            raise RequestError(422, "size", f"field 'size' must be one of {', '.join(map(str, THUMB_SIZES))}, "
                                            f"got {size}")
        path = self.gallery_path(self._state, image_id, "id")
        try:
            st = os.stat(path)
        except OSError:
            raise RequestError(404, "id", f"field 'id': the file of gallery image {image_id!r} is missing") from None
        key = (path, st.st_mtime_ns, st.st_size, size)
        data = self._thumbs.get(key)
        self.metrics.counter("zscir_thumbnails_total", "Thumbnails served, from the memory cache or decoded",
                             result="cached" if data is not None else "decoded")
        if data is None:
            try:
                with open(path, "rb") as f:
                    image = decode_image(f.read(), item_id=image_id)
            except (OSError, BadImageError) as e:
                raise RequestError(422, "id", f"field 'id': gallery image {image_id!r} is unreadable ({e})") from None
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            data = buf.getvalue()
            self._thumbs.put(key, data)
        return data

    def gallery(self, offset: int = 0, limit: int = 24) -> dict:
        state = self._state
        offset, limit = max(0, int(offset)), max(1, min(int(limit), 200))
        return {"count": len(state.index), "generation": state.generation, "offset": offset,
                "ids": state.index.ids[offset:offset + limit]}

    def health(self) -> dict:
        s = self._state
        return {"status": "ok", "models": {n: _model_info(e) for n, e in self.encoders.items()},
                "default_model": self.default_model,
                "index": {"root": str(self.root), "images": len(s.index), "generation": s.generation,
                          "kind": s.index.meta.get("kind")},
                "limits": {"max_k": min(self.config.max_k, len(s.index)),
                           "max_upload_bytes": self.config.max_upload_bytes, "max_pixels": self.config.max_pixels,
                           "max_text_chars": self.config.max_text_chars},
                "uptime_s": round(time.time() - self.started, 3)}


def _summary(turn: dict) -> dict:
    return {"turn": turn["turn"], "reference": turn["reference"], "text": turn["text"], "k": turn["k"],
            "model": turn["model"], "results": [{"id": r["id"], "score": r["score"]} for r in turn["results"]]}


def _model_info(encoder) -> dict:
    ident = encoder.identity
    return json.loads(json.dumps({"method": ident.get("method"), "checkpoint_sha256": ident.get("checkpoint_sha256"),
                                  "backbone": ident.get("backbone", {}).get("model")}, default=str))
