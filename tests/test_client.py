"""zscir.client.Client against a scripted transport: request bodies, the API key, errors and probes.
(tests/test_serve_features.py uses it against the real server.)"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from zscir.client import Client, ClientError
from zscir.errors import ZscirError


def scripted(answers: dict):
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answers[(request.method, request.url.path)]
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status)

    return httpx.MockTransport(handle), seen


def test_bodies_key_and_answers(tmp_path):
    transport, seen = scripted({("POST", "/search"): (200, {"session": "s", "results": []}),
                                ("POST", "/search/batch"): (200, {"results": [{"results": []}]}),
                                ("POST", "/refine"): (200, {"turn": 2}),
                                ("DELETE", "/sessions/s"): (204, None),
                                ("GET", "/readyz"): (503, {"ready": False, "state": "loading"}),
                                ("GET", "/livez"): (200, {"live": True})})
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG fake")
    with Client("http://server/", api_key="k", transport=transport) as c:
        assert c.search(image=image, text="red", k=3, filter={"category": "dress"})["session"] == "s"
        assert c.batch([{"text": "a"}]) == [{"results": []}]
        assert c.refine("s", "g1.png", "smaller")["turn"] == 2
        assert c.delete_session("s") is None
        assert c.ready() is False and c.live() is True
    body = json.loads(seen[0].content)
    assert body == {"image_base64": base64.b64encode(b"\x89PNG fake").decode(), "text": "red", "k": 3,
                    "filter": {"category": "dress"}}
    assert all(r.headers["x-api-key"] == "k" for r in seen)
    assert json.loads(seen[2].content) == {"session": "s", "choice": "g1.png", "text": "smaller"}


def test_errors_carry_status_field_and_message():
    transport, _ = scripted({("POST", "/search"): (422, {"error": {"field": "k", "message": "k must be 1..5",
                                                                    "status": 422}}),
                             ("GET", "/healthz"): (502, None)})
    c = Client("http://server", transport=transport)
    with pytest.raises(ClientError) as e:
        c.search(text="x", k=9)
    assert (e.value.status, e.value.field, e.value.message) == (422, "k", "k must be 1..5")
    assert isinstance(e.value, ZscirError)
    with pytest.raises(ClientError) as e:
        c.health()
    assert e.value.status == 502 and e.value.field == "request"
