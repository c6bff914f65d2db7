"""The ASGI app: a JSON API over :class:`SearchService` and the web page at ``/``.

    from zscir.serve import create_app
    app = create_app("my_index", "checkpoints/shapes_fti.safetensors")   # or create_app() for the shapes world
    # uvicorn.run(app), or mount it in your own FastAPI/Starlette service: parent.mount("/cir", app)

Routes: POST /search, POST /refine, GET /sessions/{id}, GET /images/{id}, GET /gallery,
GET /healthz, GET /metrics, GET / (the page), GET /openapi.json (the schema); and from
:mod:`zscir.serve.routes`: /livez, /readyz, POST /search/batch, DELETE /sessions/{id}, /docs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response

from zscir import __version__
from zscir.errors import ZscirError
from zscir.resolve import open_retrievers
from zscir.serve import request_log, routes, schema
from zscir.serve.body import Body, decode_base64, parse_body, read_body
from zscir.serve.guard import Guard
from zscir.serve.limits import Limits
from zscir.serve.metrics import CONTENT_TYPE
from zscir.serve.process_metrics import InFlight
from zscir.serve.service import Reference, RequestError, SearchService, ServeConfig

SEARCH_FIELDS = ("image", "image_base64", "image_id", "text", "k", "model", "offset", "filter", "dedupe")
REFINE_FIELDS = ("session", "choice", "text", "k", "model")
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
FORM_OVERHEAD = 64 * 1024  # other fields and multipart headers around an upload
ROUTES = ("/", "/search", "/refine", "/healthz", "/metrics", "/gallery", "/openapi.json", *routes.ROUTES)


def load_retrievers(index_dir=None, models: Sequence[str] = (), clip=None, pretrained=None, preprocess=None,
                    device: str = "cpu", progress: bool = True, generations=None,
                    itm_rerank: int | None = None) -> dict[str, Any]:
    """name -> Retriever, all over one opened index and one backbone (each model loaded once, by zscir.resolve).

    No ``index_dir``: the shapes world's gallery; no ``models``: the index's default model
    (the shipped FTI checkpoint), as `zscir retrieve` does. ``generations``: a
    :class:`zscir.resolve.GenerationSources` for the language-model methods. ``itm_rerank``: each model's
    composed answers get their top K re-ordered by ITM (:mod:`zscir.models.itm_rerank`; BLIP-2 backbones).
    Names are the methods (fti, sum, ...), or the checkpoint files' names when two models share a method.
    """
    retrievers = open_retrievers(index_dir, models, clip, pretrained, preprocess, device, progress, log=_stderr,
                                 generations=generations)
    methods = [r.encoder.name for _, r in retrievers]
    out: dict[str, Any] = {}
    for spec, r in retrievers:
        name = r.encoder.name
        if methods.count(name) > 1:
            name = Path(spec).stem if spec else name
        if name in out:
            raise ZscirError(f"--model {spec!r} is given twice (as {name!r})")
        r.use_itm_rerank(itm_rerank)
        out[name] = r
    return out


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _route_label(path: str) -> str:
    if path.startswith("/images/"):
        return "/images/{id}"
    if path.startswith("/sessions/"):
        return "/sessions/{id}"
    if path.startswith("/static/"):
        return "/static/{file}"
    if path.startswith("/docs/"):
        return "/docs/{file}"
    return path if path in ROUTES else "other"


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def create_app(index=None, model: str | Sequence[str] | None = None, *, retrievers: dict[str, Any] | None = None,
               config: ServeConfig | None = None, limits: Limits | None = None, **config_options):
    """The FastAPI app for ``index`` (default: the shapes world's gallery) and ``model`` (one or several).

    Give ``retrievers`` ({name: Retriever} over one index) to serve models you loaded yourself.
    Options of :class:`ServeConfig` may be passed by name (``max_k=50, workers=4, api_key=...``);
    ``limits`` (:class:`zscir.serve.limits.Limits`): queue, rate and time limits (default: their defaults).
    """
    config = config or ServeConfig(**config_options)
    limits = (limits or Limits()).check()
    if retrievers is None:
        models = [model] if isinstance(model, str) else list(model or [])
        retrievers = load_retrievers(index, models)
    service = SearchService(retrievers, config)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="zscir-search")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start_watching()
        try:
            yield
        finally:  # graceful shutdown: uvicorn has let running requests finish; the workers end after theirs
            service.stopping = True
            service.stop_watching()
            pool.shutdown(wait=True)

    # FastAPI's /docs and /redoc load their scripts from a CDN, and zscir works offline: our /docs serves
    # Swagger UI from the swagger-ui-bundle package (zscir.serve.routes)
    app = FastAPI(title="zscir", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Composed image retrieval: a reference image plus a modification text -> a ranked "
                              "gallery; refine by choosing a result as the next reference.")
    app.state.service = service
    app.state.limits = limits  # the runner reads the connection and header limits here

    in_flight, queued = InFlight(), InFlight()

    def started(fn):  # a search leaves the queue when a worker starts it
        queued.add(-1)
        return fn()

    async def in_pool(fn, *args):
        queued.add(1)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(started,
                                                                                         functools.partial(fn, *args)))

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return _json(exc.to_dict(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": ["body"], "msg": "invalid request"}
        name = str(first["loc"][-1]) if first.get("loc") else "body"
        return _json(RequestError(422, name, f"field {name!r}: {first['msg']}").to_dict(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):  # unknown route, wrong method
        what = "path" if exc.status_code == 404 else "method" if exc.status_code == 405 else "request"
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return _json(RequestError(exc.status_code, what, f"{request.method} {request.url.path}: {detail}").to_dict(),
                     exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(ZscirError)
    async def zscir_error(request, exc: ZscirError):
        return _json(RequestError(422, "request", str(exc)).to_dict(), 422)

    errors = {code: {"model": schema.ErrorResponse} for code in (400, 401, 404, 408, 409, 413, 415, 422, 429, 503)}
    upload_cap = config.max_upload_bytes
    # uploads are draft-decoded (JPEG DCT scaling) to the largest input size among the models, as the indexer does
    draft = max((getattr(e.backbone.preprocess, "size", 0) for e in service.encoders.values()), default=0) or None

    def answer_search(body: Body, record: bool = True) -> dict:
        body.check_names(SEARCH_FIELDS)
        given = [n for n in ("image", "image_base64", "image_id")
                 if n in body.files or body.fields.get(n) not in (None, "")]
        f = body.fields
        if not given:  # a text-only search
            return service.search(None, f.get("text"), f.get("k", 10), f.get("model"), offset=f.get("offset"),
                                  filter=f.get("filter"), dedupe=f.get("dedupe"), record=record)
        if len(given) > 1:
            raise RequestError(422, given[1], f"give one reference image, not {' and '.join(given)}")
        if given[0] == "image":
            upload = body.files.get("image")
            if upload is None:
                raise RequestError(422, "image", "field 'image' must be an uploaded file (multipart/form-data); "
                                                 "send text as image_base64")
            if len(upload.data) > upload_cap:
                raise RequestError(413, "image", f"field 'image': the upload is {len(upload.data)} bytes, over the "
                                                 f"{upload_cap}-byte cap (--max-upload-mb)")
            ref = Reference.from_bytes(upload.data, "upload", "image", config.max_pixels, min_size=draft)
        elif given[0] == "image_base64":
            data = decode_base64(body.fields["image_base64"], "image_base64", upload_cap)
            ref = Reference.from_bytes(data, "base64", "image_base64", config.max_pixels, min_size=draft)
        else:
            image_id = body.fields["image_id"]
            if not isinstance(image_id, str):
                raise RequestError(422, "image_id", "field 'image_id' must be a string")
            ref = Reference.from_id(image_id)
        return service.search(ref, f.get("text"), f.get("k", 10), f.get("model"), offset=f.get("offset"),
                              filter=f.get("filter"), dedupe=f.get("dedupe"), record=record)

    def answer_refine(body: Body) -> dict:
        body.check_names(REFINE_FIELDS)
        f = body.fields
        return service.refine(f.get("session"), f.get("choice"), f.get("text"), f.get("k"), f.get("model"))

    @app.post("/search", summary="Rank the gallery for a reference image plus a modification text",
              response_model=schema.TurnResponse, responses=errors,
              openapi_extra=schema.request_body(("multipart/form-data", schema.SearchForm),
                                                ("application/json", schema.SearchJSON)))
    async def search(request: Request):
        ctype = request.headers.get("content-type", "")
        field = "image" if ctype.startswith("multipart/") else "image_base64"  # where a big body's bytes are
        data = await read_body(request, upload_cap * 4 // 3 + FORM_OVERHEAD, field)
        # parsed and answered in one hop to a search worker (each thread hop costs a wake-up on a busy CPU)
        return _json(await in_pool(lambda: answer_search(parse_body(data, ctype))))

    @app.post("/refine", summary="Continue a session: a chosen result becomes the next reference",
              response_model=schema.TurnResponse, responses=errors,
              openapi_extra=schema.request_body(("application/json", schema.RefineRequest)))
    async def refine(request: Request):
        data = await read_body(request, FORM_OVERHEAD, "body")
        ctype = request.headers.get("content-type")
        return _json(await in_pool(lambda: answer_refine(parse_body(data, ctype))))

    @app.get("/sessions/{session}", summary="The turns of a session so far", responses=errors)
    async def session_turns(session: str):
        turns = service.session(session)
        if turns is None:
            raise RequestError(404, "session", f"field 'session': no session {session!r}")
        return _json({"session": session, "turns": turns})

    @app.get("/images/{image_id:path}", summary="A gallery image's JPEG thumbnail (cached in memory)",
             responses={200: {"content": {"image/jpeg": {}}}, **errors})
    async def image(request: Request, image_id: str,
                    size: int | None = Query(None, description="longest side in pixels")):
        thumb = await run_in_threadpool(service.thumbnail, image_id, size)  # not behind the searches' queue
        headers = {"Cache-Control": "private, no-cache", "ETag": thumb.etag}  # revalidated: an update shows at once
        if thumb.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(thumb.data, media_type="image/jpeg", headers=headers)

    @app.get("/gallery", summary="Gallery ids, a page at a time (to pick a reference from)")
    async def gallery(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=200)):
        return _json(service.gallery(offset, limit))

    @app.get("/healthz", summary="Liveness, the loaded models and the served index")
    async def healthz():
        return _json(service.health())

    @app.get("/metrics", summary="Prometheus metrics: requests, errors, latency histograms per route and stage",
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        return Response(routes.metrics_text(service, in_flight, queued), media_type=CONTENT_TYPE)

    page = resources.files("zscir.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    static = {name: resources.files("zscir.serve").joinpath(f"static/{name}").read_bytes() for name in STATIC}

    @app.get("/", include_in_schema=False)
    async def index_page():
        return HTMLResponse(page)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in static:
            raise RequestError(404, "name", f"no static file {name!r}")
        return Response(static[name], media_type=STATIC[name])

    routes.register(app, service, in_pool, answer_search, errors, upload_cap * 4 // 3 + FORM_OVERHEAD)
    app.add_middleware(Guard, service=service, api_key=config.api_key, limits=limits, workers=config.workers,
                       route_label=_route_label)
    request_log.install(app, config.cors_origins, in_flight, config.access_log)  # outside the key check
    return app

