"""The search service behind `zscir serve`, with no HTTP in it: models, the live index, sessions, thumbnails.

    service = SearchService({"fti": retriever})
    turn = service.search(Reference.from_id("000000000123.png"), "make it red", k=10)
    turn = service.refine(turn["session"], choice=turn["results"][0]["id"], text="and smaller")

- One load of each model: every request (whichever worker thread answers it)
  shares the retrievers given here.
- The index is a snapshot (:mod:`zscir.serve.live_index`) swapped in one assignment when
  ``zscir index`` has written a new generation: a request takes the snapshot
  once and uses it to the end, so it sees the old index or the new one, never a mix.
- Sessions (:mod:`zscir.serve.sessions`) live in memory only, bounded; nothing is
  written to disk from a request. Thumbnails: :mod:`zscir.serve.thumbnails`; the ranking
  (filter, dedupe, offset, text-only / image-only queries): :mod:`zscir.serve.ranking`.
- Server paths appear in answers only with ``show_paths`` (``--show-paths``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from PIL import Image

from zscir.data.images import DEFAULT_MAX_PIXELS, BadImageError, decode_image
from zscir.errors import ZscirError
from zscir.features.sources import content_key
from zscir.serve.errors import RequestError
from zscir.serve.live_index import IndexState, LiveIndex
from zscir.serve.metrics import Metrics
from zscir.serve.ranking import REFUSED, Ranked, by_rule, query_kind, query_rule, query_vector, rank, rank_by_rule
from zscir.serve.search_options import check_dedupe, check_filter, check_offset
from zscir.serve.sessions import SessionStore
from zscir.serve.thumbnails import THUMB_SIZES, Thumbnail, ThumbnailCache, file_etag, make_thumbnail
from zscir.serve.timing import MappingTimer

__all__ = ["RequestError", "ServeConfig", "Reference", "SearchService", "IndexState", "STAGES", "THUMB_SIZES"]

log = logging.getLogger("zscir.serve")

STAGES = ("decode", "image_encoder", "mapping_network", "text_encoder", "search", "generation")


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
    show_paths: bool = False                 # absolute server paths in results and /healthz (--show-paths)
    dedupe_threshold: float = 0.95           # cosine at or above which a lower hit is a near duplicate
    max_batch: int = 32                      # queries in one POST /search/batch
    cors_origins: tuple[str, ...] = ()       # origins allowed to call the API from a browser (--cors-origin)
    access_log: bool = False                 # one log line per request (--access-log)


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



class SearchService:
    def __init__(self, retrievers: dict[str, Any], config: ServeConfig | None = None, metrics=None):
        if not retrievers:
            raise ZscirError("serve needs at least one model (option --model)")
        self.config = config or ServeConfig()
        self.metrics = metrics or Metrics()
        self.default_model = next(iter(retrievers))
        self.encoders = {name: r.encoder for name, r in retrievers.items()}
        self._timers = {name: MappingTimer(enc) for name, enc in self.encoders.items()}
        self.live = LiveIndex(retrievers, self.config.reload_interval, self._index_gauges, self.metrics)
        self.root = self.live.root
        self.sessions = SessionStore(self.config.max_sessions)
        self._thumbs = ThumbnailCache(self.config.thumb_cache_bytes)
        self.stopping = False
        self.started = time.time()
        self._index_gauges()

    # --- the live index --------------------------------------------------------------------------
    @property
    def state(self) -> IndexState:
        return self.live.state

    def reload_if_changed(self) -> bool:
        """Open the index again if ``index.json`` changed; swap it in whole. True when a new generation came in."""
        return self.live.reload_if_changed()

    def start_watching(self) -> None:
        self.live.start_watching()

    def stop_watching(self) -> None:
        self.live.stop_watching()

    @property
    def _watcher(self):  # the index watcher thread (None until started), as before the split
        return self.live._watcher

    def readiness(self) -> str:
        """ready | loading (a changed index is being opened) | stopping (shutdown has begun)."""
        return "stopping" if self.stopping else "loading" if self.live.loading else "ready"

    def _index_gauges(self) -> None:
        s = self.state
        self.metrics.gauge("zscir_index_images", "Images in the served index", len(s.index))
        self.metrics.gauge("zscir_index_generation", "Generation of the served index", s.generation)

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

    def search(self, reference: Reference | None, text: Any, k: Any = 10, model: Any = None,
               session: str | None = None, offset: Any = 0, filter: Any = None, dedupe: Any = None,
               record: bool = True) -> dict:
        """One turn: rank the gallery for ``reference`` + ``text``; a new session unless ``session`` is given.

        No ``reference``: a text-only search; no ``text`` (None): an image-only search (:mod:`zscir.serve.ranking`).
        ``record=False`` answers without a session (batch queries).
        """
        state = self.state  # this request's snapshot of the index
        if reference is None and text is None:
            raise RequestError(422, "image", "no query: give a text, a reference image (image, image_base64 or "
                                             "image_id), or both")
        text = None if text is None else self.check_text(text)
        k = self.check_k(k, state)
        name = self.check_model(model)
        offset = check_offset(offset, len(state.index))
        conditions = check_filter(filter, state.metadata)
        threshold = check_dedupe(dedupe, self.config.dedupe_threshold)
        kind = query_kind(reference is not None, text is not None)
        why = REFUSED.get(kind, {}).get(self.encoders[name].name)
        if why:
            raise RequestError(422, "image" if kind == "text" else "text", f"model {name!r}: {why}")
        retriever = state.retrievers[name]
        image = None
        if reference is not None:
            image = reference.image if reference.image is not None else self.gallery_path(state, reference.id,
                                                                                          "image_id")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._timers[name].take()  # drop anything a failed earlier call left on this thread
        # the model's own rule (a language-model method, a BLIP-2 model's max over query tokens), not the cosine
        ruled = by_rule(retriever, kind)
        searched = ruled and kind == "composed"   # the Retriever's search: generations made or read, its rule
        if ruled and (conditions or threshold is not None):
            raise RequestError(422, "filter" if conditions else "dedupe",
                               f"model {name!r}: filter and dedupe are not available for a model that ranks by its "
                               "own scoring rule (a language-model method, a BLIP-2 model)")
        try:
            if searched:
                ranked = self._ranked_by_rule(state, retriever, image, text, k, offset, timings)
            else:
                q, key, _ = query_vector(retriever, kind, image, text, timings)
        except ZscirError as e:
            if reference is not None and reference.kind == "id":  # the gallery file went missing or unreadable
                raise RequestError(404 if "does not exist" in str(e) else 422, "image_id", f"field 'image_id': {e}")
            raise
        if not searched:
            # the reference itself is left out: its own content (an upload's gallery copies) or file
            exclude: set[int] = set()
            if image is not None:
                exclude = retriever._own_rows(image, key or reference.key)  # the rule Retriever.search applies
            if reference is not None and reference.key:
                exclude |= {state.row_of_id[i] for i in state.ids_of_key.get(reference.key, [])}
            allowed = state.metadata.rows_matching(conditions, state.row_of_id) if conditions else None
            t_search = time.perf_counter()
            if ruled:
                ranked = rank_by_rule(state.index, query_rule(retriever.encoder, kind), q, k, offset, exclude,
                                      retriever.columns)
            else:
                ranked = rank(state.index, q, k, offset, exclude, allowed, threshold)
            timings["search"] = time.perf_counter() - t_search
        if ranked.dropped_missing:
            self.metrics.counter("zscir_missing_files_total", "Hits dropped because their file is gone from disk",
                                 ranked.dropped_missing)
        total = time.perf_counter() - t0 + (reference.decode_seconds if reference is not None else 0.0)
        mapping = self._timers[name].take()
        stages = {
            "decode": (reference.decode_seconds if reference is not None else 0.0) + timings.get("decode", 0.0),
            "image_encoder": timings.get("image_encoder", 0.0),
            "mapping_network": mapping,
            "text_encoder": timings.get("query_encoder", 0.0) - (mapping or 0.0),
            "search": timings.get("search", 0.0),
        }
        if searched:  # captions and edits made (or read) for a language-model method
            stages["generation"] = timings.get("generation", 0.0)
        for stage, seconds in stages.items():
            if seconds is not None:
                self.metrics.observe("zscir_stage_seconds", "Seconds per search stage", max(seconds, 0.0), stage=stage)
        turn = {
            "model": name, "k": k, "text": text, "query": kind,
            "reference": reference.describe() if reference is not None else None,
            "index_generation": state.generation, "offset": offset,
            "results": [self._result(state, offset + n, row, score) for n, (row, score) in enumerate(ranked.hits, 1)],
            "dropped": {"missing_files": ranked.dropped_missing, "duplicates": ranked.dropped_duplicates},
            "timings_ms": {s: (None if v is None else round(max(v, 0.0) * 1000, 3)) for s, v in stages.items()}
                          | {"total": round(total * 1000, 3)},
        }
        if not record:
            return turn
        return self._record(session, turn)

    @staticmethod
    def _ranked_by_rule(state: IndexState, retriever, image, text: str, k: int, offset: int, timings: dict) -> Ranked:
        """The retriever's own scoring rule over its columns (Retriever.search_many: generations made or read,
        the reference left out), the hits ``offset + 1`` to ``offset + k``."""
        (result,) = retriever.search_many([(image, text)], offset + k, timings=timings)
        return Ranked([(state.row_of_id[h.id], h.score) for h in result.hits][offset:])

    def _result(self, state: IndexState, rank_: int, row: int, score: float) -> dict:
        image_id = state.index.ids[row]
        out = {"rank": rank_, "score": round(score, 6), "id": image_id,
               "thumbnail": "images/" + urllib.parse.quote(image_id)}
        if self.config.show_paths:
            out["path"] = state.index.paths[row]
        if state.metadata is not None:
            out["metadata"] = state.metadata.get(image_id) or {}
        return out

    def refine(self, session: Any, choice: Any, text: Any, k: Any = None, model: Any = None) -> dict:
        """The next turn of ``session``: the chosen result (a gallery id shown in an earlier turn) is the reference."""
        if not isinstance(session, str) or not session:
            raise RequestError(422, "session", "field 'session' is missing: expected the session id a search returned")
        if not isinstance(choice, str) or not choice:
            raise RequestError(422, "choice", "field 'choice' is missing: expected the id of a result to refine from")
        turns = self.sessions.get(session)
        if turns is None:
            raise RequestError(404, "session", f"field 'session': no session {session!r} (unknown, or expired: "
                                               f"the server keeps the last {self.config.max_sessions})")
        shown = {r["id"] for t in turns for r in t["results"]}
        if choice not in shown:
            raise RequestError(422, "choice", f"field 'choice': {choice!r} is not among this session's results")
        if len(turns) >= self.config.max_turns:
            raise RequestError(422, "session", f"field 'session': at most {self.config.max_turns} turns per session")
        if choice not in self.state.row_of_id:
            raise RequestError(409, "choice", f"field 'choice': {choice!r} is no longer in the gallery (the index "
                                              "was updated since); start a new search")
        last = turns[-1]
        return self.search(Reference.from_id(choice), self.check_text(text), last["k"] if k in (None, "") else k,
                           last["model"] if model in (None, "") else model, session=session)

    def session(self, session: str) -> list[dict] | None:
        return self.sessions.get(session)

    def delete_session(self, session: str) -> bool:
        gone = self.sessions.delete(session)
        self.metrics.gauge("zscir_sessions", "Refinement sessions held in memory", len(self.sessions))
        return gone

    def _record(self, session: str | None, turn: dict) -> dict:
        session, turn, all_turns = self.sessions.record(session, turn)
        self.metrics.gauge("zscir_sessions", "Refinement sessions held in memory", len(self.sessions))
        return {"session": session, **turn, "turns": [_summary(t) for t in all_turns]}

    # --- images ----------------------------------------------------------------------------------
    def thumbnail(self, image_id: str, size: int | None = None) -> Thumbnail:
        size = self.config.thumb_size if size is None else size
        if size not in THUMB_SIZES:
            raise RequestError(422, "size", f"field 'size' must be one of {', '.join(map(str, THUMB_SIZES))}, "
                                            f"got {size}")
        path = self.gallery_path(self.state, image_id, "id")
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
                data = make_thumbnail(path, image_id, size)
            except OSError as e:
                raise RequestError(422, "id", f"field 'id': gallery image {image_id!r} is unreadable "
                                              f"({e.strerror or type(e).__name__})") from None
            except BadImageError as e:
                raise RequestError(422, "id", f"field 'id': gallery image {image_id!r} is unreadable "
                                              f"({e.reason})") from None
            self._thumbs.put(key, data)
        return Thumbnail(data, file_etag(path, st, size))

    def gallery(self, offset: int = 0, limit: int = 24) -> dict:
        state = self.state
        offset, limit = max(0, int(offset)), max(1, min(int(limit), 200))
        return {"count": len(state.index), "generation": state.generation, "offset": offset,
                "ids": state.index.ids[offset:offset + limit]}

    def health(self) -> dict:
        s = self.state
        index = {"images": len(s.index), "generation": s.generation, "kind": s.index.meta.get("kind"),
                 "metadata_fields": s.metadata.fields if s.metadata is not None else []}
        if self.config.show_paths:
            index["root"] = str(self.root)
        return {"status": "ok", "state": self.readiness(),
                "models": {n: _model_info(r) for n, r in self.live.models.items()},
                "default_model": self.default_model, "index": index, "warnings": list(s.notices),
                "limits": {"max_k": min(self.config.max_k, len(s.index)),
                           "max_upload_bytes": self.config.max_upload_bytes, "max_pixels": self.config.max_pixels,
                           "max_text_chars": self.config.max_text_chars, "max_batch": self.config.max_batch},
                "uptime_s": round(time.time() - self.started, 3)}


def _summary(turn: dict) -> dict:
    return {"turn": turn["turn"], "reference": turn["reference"], "text": turn["text"], "k": turn["k"],
            "model": turn["model"], "results": [{"id": r["id"], "score": r["score"]} for r in turn["results"]]}


def _model_info(retriever) -> dict:
    ident = retriever.encoder.identity
    rerank = {"itm_rerank": retriever.itm_rerank.describe()} if retriever.itm_rerank is not None else {}
    return json.loads(json.dumps({"method": ident.get("method"), "checkpoint_sha256": ident.get("checkpoint_sha256"),
                                  "backbone": ident.get("backbone", {}).get("model"), **rerank}, default=str))
