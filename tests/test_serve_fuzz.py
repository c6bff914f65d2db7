"""Generated input for the API (hypothesis): thousands of requests, never a 500, the server healthy afterwards."""

from __future__ import annotations

import json

import pytest
from _serve_world import build_world, strip_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FIELDS = ["image", "image_base64", "image_id", "text", "k", "model", "session", "choice", "offset", "filter", "x"]
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10 ** 30, max_value=10 ** 30), st.floats(allow_nan=False),
    st.text(max_size=40), st.sampled_from(["g01.png", "fti", "make it red", "٣", "5_0", "1e3", "", " ", "AAAA",
                                           "data:image/png;base64,AAAA", "../../etc/passwd", "\u0000", "9" * 60]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=8)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=6)
RAW = [b"", b"{", b"[]", b"null", b'{"k": Infinity}', b'{"k": 1e400}', b'{"k": -0.0}', b'{"text": "\\ud800"}',
       b"[" * 5000, b'{"a": ' * 3000, b"\xff\xfe", b'{"k": ' + b"1" * 5000 + b"}", b"{}" * 1000]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from zscir.serve import create_app
    from zscir.serve.limits import Limits

    world = build_world(tmp_path_factory.mktemp("serve-fuzz"), n_images=8)
    return create_app(world["index"], [world["fti"], "sum"], limits=Limits(rate=0), reload_interval=0,
                      max_upload_bytes=64 * 1024, max_k=6)


@pytest.fixture(scope="module")
def client(app):
    from starlette.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _ok(res, what) -> None:
    assert res.status_code < 500, (what, res.status_code, res.text[:400])
    if res.status_code >= 400 and res.content and res.headers.get("content-type", "").startswith("application/json"):
        message = res.json()["error"]["message"]
        assert "\n" not in message and "Traceback" not in message, (what, message)


@settings(max_examples=1500, **SETTINGS)
@given(body=bodies, route=st.sampled_from(["/search", "/refine"]))
def test_generated_json_bodies_never_500(client, body, route):
    res = client.post(route, content=json.dumps(body), headers={"Content-Type": "application/json"})
    _ok(res, body)


@settings(max_examples=600, **SETTINGS)
@given(fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), st.text(max_size=30), max_size=5),
       image=st.one_of(st.none(), st.binary(max_size=300), st.sampled_from([strip_png(8, 8), strip_png(100_000, 1),
                                                                           strip_png(1, 40_000)])),
       twice=st.booleans())
def test_generated_forms_and_uploads_never_500(client, fields, image, twice):
    files = [] if image is None else [("image", ("x.png", image))] * (2 if twice else 1)
    res = client.post("/search", data=fields, files=files or None)
    _ok(res, (fields, image[:20] if image else None))


@settings(max_examples=500, **SETTINGS)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO", "get"]),
       path=st.sampled_from(["/", "/search", "/refine", "/healthz", "/metrics", "/gallery", "/images/g01.png",
                             "/images/../../etc/passwd", "/sessions/x", "/static/app.js", "/static/x", "/openapi.json",
                             "/%00", "/images/%ff"]),
       query=st.text(max_size=30), ctype=st.sampled_from(["application/json", "multipart/form-data",
                                                          "multipart/form-data; boundary=x", "text/plain", "",
                                                          "application/x-www-form-urlencoded"]),
       raw=st.sampled_from(RAW) | st.binary(max_size=200))
def test_generated_requests_never_500(client, method, path, query, ctype, raw):
    res = client.request(method, path, params={"q": query, "size": query, "offset": query}, content=raw,
                         headers={"Content-Type": ctype} if ctype else {})
    _ok(res, (method, path, query, ctype, raw[:30]))


def test_a_real_server_survives_generated_requests_and_stays_healthy(app):
    """A short run against uvicorn on 127.0.0.1 over a few kept-alive connections, then ordinary service."""
    import random

    import httpx

    from zscir.serve.runner import serve_in_thread

    rng = random.Random(7)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=600) as c:
        for i in range(300):
            body = rng.choice(RAW) if i % 3 == 0 else json.dumps(
                {rng.choice(FIELDS): rng.choice([None, 1e308, -1, "g01.png", ["a"], {"b": 2}, "x" * 5000, 3])
                 for _ in range(rng.randint(0, 5))}).encode()
            res = c.post(rng.choice(["/search", "/refine"]), content=body, headers={"Content-Type": "application/json"})
            _ok(res, body[:60])
        assert c.get("/healthz").json()["status"] == "ok"
        res = c.post("/search", json={"image_id": "g01.png", "text": "make it red", "k": 3})
        assert res.status_code == 200 and len(res.json()["results"]) == 3
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics
