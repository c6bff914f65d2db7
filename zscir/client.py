"""A small Python client of `zscir serve`.

    from zscir.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        turn = c.search(image="ref.jpg", text="make it red", k=10)          # a file, bytes, or image_id=...
        turn = c.refine(turn["session"], choice=turn["results"][0]["id"], text="and shorter")
        c.search(text="a red dress", filter={"category": "dress"}, dedupe=True, offset=10)
        c.batch([{"image_id": "a.jpg", "text": "in blue"}, {"text": "a red circle"}])
        c.health(); c.ready(); c.delete_session(turn["session"])

A 4xx/5xx answer raises :class:`ClientError` with the server's status, field and message.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from zscir.errors import ZscirError


class ClientError(ZscirError):
    """An error answer of the server: ``status``, the request ``field`` at fault and its ``message``."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{status} ({field}): {message}")
        self.status, self.field, self.message = status, field, message


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0, headers: dict | None = None,
                 transport=None):
        import httpx  # deferred: only clients need it

        auth = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers={**auth, **(headers or {})},
                                 transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _answer(self, res) -> Any:
        if res.status_code >= 400:
            try:
                err = res.json()["error"]
                raise ClientError(res.status_code, err.get("field", "request"), err.get("message", res.text))
            except (ValueError, KeyError, TypeError):
                raise ClientError(res.status_code, "request", res.text[:200]) from None
        if res.status_code == 204 or not res.content:
            return None
        return res.json()

    @staticmethod
    def query(image: str | os.PathLike | bytes | None = None, image_id: str | None = None, text: str | None = None,
              k: int | None = None, model: str | None = None, offset: int | None = None,
              filter: dict | None = None, dedupe: bool | float | None = None) -> dict:
        """One /search JSON body (an image file or bytes travel as base64); None fields are left out."""
        if image is not None:
            data = image if isinstance(image, bytes) else open(image, "rb").read()
            image = base64.b64encode(data).decode("ascii")
        body = {"image_base64": image, "image_id": image_id, "text": text, "k": k, "model": model,
                "offset": offset, "filter": filter, "dedupe": dedupe}
        return {name: value for name, value in body.items() if value is not None}

    def search(self, image=None, image_id=None, text=None, k=None, model=None, offset=None, filter=None,
               dedupe=None) -> dict:
        """POST /search: a turn ({"session", "results": [{"rank", "score", "id", ...}], ...})."""
        return self._answer(self.http.post("/search", json=self.query(image, image_id, text, k, model, offset,
                                                                       filter, dedupe)))

    def batch(self, queries: list[dict]) -> list[dict]:
        """POST /search/batch: one answer per query, a turn or {"error": {...}} each (nothing raised per query)."""
        return self._answer(self.http.post("/search/batch", json={"queries": list(queries)}))["results"]

    def refine(self, session: str, choice: str, text: str, k: int | None = None, model: str | None = None) -> dict:
        body = {"session": session, "choice": choice, "text": text, "k": k, "model": model}
        return self._answer(self.http.post("/refine", json={n: v for n, v in body.items() if v is not None}))

    def session(self, session: str) -> dict:
        return self._answer(self.http.get(f"/sessions/{session}"))

    def delete_session(self, session: str) -> None:
        self._answer(self.http.delete(f"/sessions/{session}"))

    def health(self) -> dict:
        return self._answer(self.http.get("/healthz"))

    def ready(self) -> bool:
        """True when /readyz says ready (503 while an index loads or the server stops: False, nothing raised)."""
        res = self.http.get("/readyz")
        return res.status_code == 200 and bool(res.json().get("ready"))

    def live(self) -> bool:
        return self.http.get("/livez").status_code == 200

    def thumbnail(self, image_id: str, size: int | None = None) -> bytes:
        res = self.http.get(f"/images/{image_id}", params={"size": size} if size else None)
        if res.status_code >= 400:
            self._answer(res)
        return res.content
