"""Request ids, the access log and JSON logs, and the CORS policy: the outer layers of the app.

- ``X-Request-ID``: a client's id (1 to 128 characters of ``A-Za-z0-9._:-``) is echoed; otherwise one is
  made. Every response carries it; the access log line and the log records of the request name it.
- Access log (``--access-log``): one line per request on the ``zscir.access`` logger: method, path,
  status, milliseconds, bytes, client, request id.
- ``--log-format json``: every log record as one JSON object a line (:class:`JsonFormatter`).
- CORS (``--cors-origin``, repeatable): browsers on those origins may call the API; none by default.
  Preflights are answered before the API-key check (a browser sends no key with them).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from zscir.serve.process_metrics import InFlight

access_log = logging.getLogger("zscir.access")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("zscir_request_id", default=None)
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line: time, level, logger, message, the request id, and any ``extra`` fields."""

    FIELDS = ("method", "path", "status", "duration_ms", "bytes", "client")

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for name in self.FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(fmt: str, level: str = "info") -> dict | None:
    """Our loggers' handler for ``fmt``; returns the uvicorn log config to match (None: uvicorn's default)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("zscir.serve", "zscir.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    if fmt != "json":
        return None
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                     "stream": "ext://sys.stderr"}},
            "loggers": {"uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
                        "uvicorn.error": {"level": level.upper()}}}


class RequestContext:
    """ASGI middleware: the request id (echoed or made), requests in flight, and the access log line."""

    def __init__(self, app, in_flight: InFlight, log_requests: bool):
        self.app, self.in_flight, self.log_requests = app, in_flight, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if VALID_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0, status, size = time.perf_counter(), [500], [0]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                size[0] += len(message.get("body", b""))
            await send(message)

        self.in_flight.add(1)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.in_flight.add(-1)
            request_id_var.reset(token)
            if self.log_requests:
                client = scope.get("client") or ("", 0)
                ms = round((time.perf_counter() - t0) * 1000, 3)
                access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], ms,
                                extra={"request_id": rid, "method": scope["method"], "path": scope["path"],
                                       "status": status[0], "duration_ms": ms, "bytes": size[0],
                                       "client": f"{client[0]}:{client[1]}"})


def install(app, origins: tuple[str, ...], in_flight: InFlight, log_requests: bool) -> None:
    """Add CORS (when origins are given) and the request context around everything added before."""
    if origins:
        from starlette.middleware.cors import CORSMiddleware  # deferred: `zscir serve` only

        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID",
                                          "If-None-Match"],
                           expose_headers=["X-Request-ID", "ETag", "Retry-After"], max_age=600)
    app.add_middleware(RequestContext, in_flight=in_flight, log_requests=log_requests)
