"""The routes beyond search and refine: liveness and readiness, batch search, session deletion, /docs.

    GET    /livez              200 while the process answers (no API key needed)
    GET    /readyz             200 {"ready": true, "state": "ready"}; 503 while an index is loading or
                               the server is stopping (no API key needed: for load balancers)
    POST   /search/batch       {"queries": [{...a /search JSON body...}, ...]} -> {"results": [turn | {"error"}]}
                               (at most --max-batch queries; answered without sessions; one bad query is
                               its own error, the others are answered)
    DELETE /sessions/{id}      forget a session (204; 404 when unknown)
    GET    /docs               Swagger UI, served from this server (the swagger-ui-bundle package)
"""

from __future__ import annotations

import json
from typing import Any, Callable

from fastapi import Request
from starlette.responses import HTMLResponse, Response

from zscir.serve import docs, schema
from zscir.serve.body import Body, parse_body, read_body
from zscir.serve.errors import RequestError
from zscir.serve.process_metrics import InFlight, update as update_process_metrics

OPEN_PATHS = ("/livez", "/readyz")   # answered without the API key
ROUTES = ("/livez", "/readyz", "/search/batch", "/docs")


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def register(app, service, in_pool: Callable, answer_search: Callable, errors: dict, body_cap: int) -> None:
    config = service.config

    @app.get("/livez", summary="Liveness: the process answers (no API key needed)")
    async def livez():
        return _json({"live": True})

    @app.get("/readyz", summary="Readiness: 503 while an index is loading or the server is stopping (no API key)",
             responses={503: {"description": "not ready: state is loading or stopping"}})
    async def readyz():
        state = service.readiness()
        ready = state == "ready"
        return _json({"ready": ready, "state": state}, 200 if ready else 503,
                     None if ready else {"Retry-After": "1"})

    def answer_batch(body: Body) -> dict:
        body.check_names(("queries",))
        queries = body.fields.get("queries")
        if not isinstance(queries, list) or not queries:
            raise RequestError(422, "queries", "field 'queries' must be a non-empty list of /search JSON bodies")
        if len(queries) > config.max_batch:
            raise RequestError(422, "queries", f"field 'queries' has {len(queries)} queries; at most "
                                               f"{config.max_batch} are accepted (--max-batch)")
        results = []
        for n, item in enumerate(queries):
            if not isinstance(item, dict):
                results.append(RequestError(422, f"queries[{n}]", f"field 'queries[{n}]' must be an object").to_dict())
                continue
            try:
                results.append(answer_search(Body(fields=dict(item)), record=False))
            except RequestError as e:
                results.append(e.to_dict())
        return {"results": results}

    @app.post("/search/batch", summary="Several searches in one request (no sessions)", responses=errors,
              openapi_extra=schema.request_body(("application/json", schema.BatchRequest)))
    async def search_batch(request: Request):
        data = await read_body(request, body_cap, "queries")
        ctype = request.headers.get("content-type")
        return _json(await in_pool(lambda: answer_batch(parse_body(data, ctype))))

    @app.delete("/sessions/{session}", summary="Forget a session", status_code=204, responses=errors)
    async def delete_session(session: str):
        if not service.delete_session(session):
            raise RequestError(404, "session", f"field 'session': no session {session[:80]!r}")
        return Response(status_code=204)

    @app.get("/docs", include_in_schema=False)
    async def docs_page():
        return HTMLResponse(docs.PAGE)

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        data = docs.asset(name)
        if data is None:
            raise RequestError(404, "name", f"no docs file {name[:80]!r}")
        return Response(data, media_type=docs.media_type(name), headers={"Cache-Control": "public, max-age=86400"})


def metrics_text(service, in_flight: InFlight, queued: InFlight) -> str:
    """/metrics: the service's series plus the process gauges, read now."""
    update_process_metrics(service.metrics, in_flight.value, queued.value)
    return service.metrics.render()
