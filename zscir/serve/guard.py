"""The request guard: ASGI middleware every HTTP request passes first.

In order:
- HEAD is answered as the GET of the same path, without the body;
- the API key (when one is set), 401 otherwise;
- a search request (any POST) must pass the client's rate limit (429) and find room among
  ``workers + max_queue`` held requests (503), both with ``Retry-After``; its body must arrive
  within ``body_timeout`` seconds (408); an upload (multipart, or a body over 64 KB) waits, without
  a thread, for one of ``workers - 1`` upload places, so a decode of a large image never takes
  the last worker from the searches by gallery id;
- every answer carries ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, a
  Content-Security-Policy (unless the route set its own) and ``Referrer-Policy``; an answer
  sent before the request's body was read to its end says ``Connection: close``, and the
  connection is closed (nothing unread is left in it);
- an exception that escapes a handler is logged and answered as a one-line JSON 500 on a
  connection that stays usable;
- counts and latencies go to /metrics with bounded labels (a method outside the standard
  ones is "other", a path outside the routes is "other").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from zscir.serve.auth import key_matches, presented_key
from zscir.serve.routes import OPEN_PATHS
from zscir.serve.limits import Admission, Limits, RateLimiter

log = logging.getLogger("zscir.serve")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))


class BodyTimeout(Exception):
    """The request's body did not arrive within the body timeout."""


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def error_body(status: int, field: str, message: str) -> bytes:
    return json.dumps({"error": {"field": field, "message": message, "status": status}}).encode()


class Guard:
    """The middleware; ``route_label(path)`` maps a path to a bounded label for /metrics."""

    def __init__(self, app, service, api_key: str | None, limits: Limits | None = None, workers: int = 1,
                 route_label=lambda path: "other"):
        self.app, self.service, self.route_label = app, service, route_label
        self.key = api_key.encode("utf-8") if api_key else None
        self.limits = limits or Limits()
        self.admission = Admission(max(1, workers) + self.limits.max_queue)
        self.rates = RateLimiter(self.limits.rate, self.limits.burst, self.limits.max_clients)
        self.uploads = asyncio.Semaphore(max(1, workers - 1))
        for name, value in self.limits.as_metrics(workers).items():
            service.metrics.gauge("zscir_limit", "The server's limits (options of `zscir serve`)", value, limit=name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.service.start_watching()  # also when mounted in another app, whose lifespan does not reach us
        t0 = time.perf_counter()
        root, path = scope.get("root_path", ""), scope["path"]
        if root and path.startswith(root):  # mounted under a prefix
            path = path[len(root):]
        method = scope["method"]
        state = {"status": 500, "started": False, "body_done": not _has_body(scope)}
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                if not state["body_done"] and b"connection" not in names:
                    headers.append((b"connection", b"close"))  # the unread rest of the body is not drained
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await self._answer(guarded_send, *refusal)
            elif method == "POST":
                if not self.admission.enter():
                    self._count_refusal("queue_full")
                    await self._answer(guarded_send, 503, "request", "the server is busy (all workers and the "
                                       f"queue of {self.limits.max_queue} are taken); retry shortly",
                                       retry=True)
                else:
                    self._inside_gauge()
                    try:
                        if _is_upload(scope):
                            async with self.uploads:
                                await self.app(scope, self._timed(receive, state), guarded_send)
                        else:
                            await self.app(scope, self._timed(receive, state), guarded_send)
                    finally:
                        self.admission.leave()
                        self._inside_gauge()
            else:
                await self.app(scope, receive, guarded_send)
        except BodyTimeout:
            self._count_refusal("body_timeout")
            if not state["started"]:
                await self._answer(guarded_send, 408, "body", f"the request body did not arrive within "
                                   f"{self.limits.body_timeout:g} seconds (--body-timeout)")
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the connection
            log.exception("unhandled error answering %s %s", method_label(method), self.route_label(path))
            if not state["started"]:
                await self._answer(guarded_send, 500, "request", "internal error (logged on the server)")
        finally:
            m = self.service.metrics
            labels = {"route": self.route_label(path), "method": method_label(method)}
            m.counter("zscir_requests_total", "HTTP requests answered", status=str(state["status"]), **labels)
            if state["status"] >= 400:
                m.counter("zscir_request_errors_total", "HTTP requests answered with a 4xx or 5xx status",
                          status=str(state["status"]), **labels)
            m.observe("zscir_request_seconds", "Seconds from request to response, per route",
                      time.perf_counter() - t0, route=labels["route"])

    def _refusal(self, scope, path: str) -> tuple | None:
        headers = dict(scope["headers"])
        if self.key is not None and path not in OPEN_PATHS and not key_matches(presented_key(headers), self.key):
            return (401, "api_key", "missing or wrong API key: send X-API-Key: KEY or Authorization: Bearer KEY",
                    False, [(b"www-authenticate", b'Basic realm="zscir", charset="UTF-8"')])
        if scope["method"] == "POST":
            client = scope.get("client")
            wait = self.rates.wait(client[0] if client else "?")
            if wait > 0:
                self._count_refusal("rate_limit")
                return (429, "request", f"too many requests from this client: at most {self.limits.rate:g} a "
                                        f"second, bursts of {self.limits.burst} (--rate-limit, --rate-burst)",
                        True, [], wait)
        return None

    async def _answer(self, send, status: int, field: str, message: str, retry: bool = False,
                      headers: list | None = None, wait: float | None = None) -> None:
        body = error_body(status, field, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *(headers or [])]
        if retry:
            seconds = max(self.limits.retry_after, int(wait + 0.999) if wait else 0)
            headers.append((b"retry-after", str(seconds).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _timed(self, receive, state):
        """``receive`` with one deadline for the whole body; after its last part, ``receive`` as it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout

        async def timed_receive():
            if state["body_done"]:
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        return timed_receive

    def _count_refusal(self, reason: str) -> None:
        self.service.metrics.counter("zscir_refused_total", "Requests refused by a limit, per limit", reason=reason)

    def _inside_gauge(self) -> None:
        self.service.metrics.gauge("zscir_search_requests_held", "Search requests held: being answered or queued",
                                   self.admission.inside)


UPLOAD_BYTES = 64 * 1024


def _is_upload(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type" and value.lower().startswith(b"multipart/"):
            return True
        if name == b"content-length" and (not value.strip().isdigit() or int(value) > UPLOAD_BYTES):
            return True
        if name == b"transfer-encoding":
            return True
    return False


def _has_body(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
