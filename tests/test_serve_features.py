"""`zscir serve`'s product features through zscir.client over real HTTP: text-only / image-only search, batch,
offset paging, metadata filters (against a brute-force filter over exact scores), near-duplicate collapse,
hidden paths, deleted files, ETags, liveness/readiness, session deletion, CORS, request ids, JSON access
log, process metrics, the offline /docs page and the OpenAPI schema."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import httpx
import numpy as np
import pytest
import torch
from _images import draw_image
from _serve_world import build_world

from zscir.client import Client, ClientError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CATEGORIES = ("dress", "shirt", "shoe")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny backbone, an FTI checkpoint, 20 drawn images (dup.png a byte copy of g05) with a metadata CSV."""
    root = tmp_path_factory.mktemp("features")

    def more_images(images):
        shutil.copyfile(images / "g05.png", images / "dup.png")
        draw_image(images / "gone.png", 40)

    w = build_world(root, 19, more_images)
    index = w["index"]
    csv = root / "items.csv"
    rows = ["path,category,price"] + [f"g{i:02d}.png,{CATEGORIES[i % 3]},{i}" for i in range(19)]
    csv.write_text("\n".join(rows + ["dup.png,shirt,5", "nowhere.png,dress,1"]) + "\n")
    from zscir.index.cli import _import_metadata

    report = _import_metadata(index, csv)
    assert report["matched"] == 20 and report["unmatched"] == 1
    return w


@pytest.fixture(scope="module")
def served(world, caplog_module):
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    app = create_app(world["index"], [world["fti"], "image", "text"], max_k=5, reload_interval=0,
                     cors_origins=("https://app.example",), access_log=True)
    with serve_in_thread(app) as url, Client(url) as client:
        yield {"url": url, "client": client, "service": app.state.service}


@pytest.fixture(scope="module")
def caplog_module():
    """Records of the zscir.access logger, formatted by the JSON formatter (module-wide)."""
    from zscir.serve.request_log import JsonFormatter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(JsonFormatter().format(record))

    logger = logging.getLogger("zscir.access")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def exact_scores(service, q: np.ndarray) -> np.ndarray:
    from zscir.serve.ranking import vectors_of

    return np.asarray(vectors_of(service.state.index), dtype=np.float32) @ q[0]


def query_of(service, model, image_id, text):
    from zscir.serve.ranking import query_kind, query_vector

    state = service.state
    path = None if image_id is None else state.index.paths[state.row_of_id[image_id]]
    return query_vector(state.retrievers[model], query_kind(path is not None, text is not None), path, text, {})[0]


def test_text_only_image_only_and_refusals(world, served):
    c, service = served["client"], served["service"]
    ids = service.state.index.ids
    text_only = c.search(text="a red square", k=5)
    assert text_only["query"] == "text" and text_only["reference"] is None and len(text_only["results"]) == 5
    # the text path of the model's backbone: the text baseline's ranking
    assert [r["id"] for r in text_only["results"]] == [r["id"] for r in c.search(text="a red square", k=5,
                                                                                   model="text")["results"]]
    q = query_of(service, "text", None, "a red square")
    scores = exact_scores(service, q)
    assert [r["id"] for r in text_only["results"]] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    image_only = c.search(image_id="g03.png", k=5)
    assert image_only["query"] == "image" and "g03.png" not in [r["id"] for r in image_only["results"]]
    assert [r["id"] for r in image_only["results"]] == [r["id"] for r in c.search(
        image_id="g03.png", text="anything", k=5, model="image")["results"]]  # the image baseline ignores text
    with pytest.raises(ClientError) as e:
        c.search(text="red", k=3, model="image")
    assert e.value.status == 422 and e.value.field == "image" and "needs an image" in e.value.message
    with pytest.raises(ClientError) as e:
        c.search(image_id="g03.png", k=3, model="text")
    assert e.value.status == 422 and e.value.field == "text"


def test_offset_pages_past_max_k_and_batch(world, served):
    c, service = served["client"], served["service"]
    pages = [c.search(image_id="g02.png", text="make it blue", k=5, offset=o)["results"] for o in (0, 5, 10)]
    ranks = [r["rank"] for p in pages for r in p]
    assert ranks == list(range(1, 16))
    q = query_of(service, "fti", "g02.png", "make it blue")
    scores = exact_scores(service, q)
    scores[service.state.row_of_id["g02.png"]] = -np.inf
    got = [r["score"] for p in pages for r in p]
    assert np.allclose(got, np.sort(scores)[::-1][:15], atol=2e-3)
    with pytest.raises(ClientError) as e:
        c.search(image_id="g02.png", text="x", k=3, offset=-1)
    assert e.value.field == "offset"
    answers = c.batch([{"image_id": "g02.png", "text": "make it blue", "k": 5}, {"text": "a red square", "k": 2},
                       {"image_id": "nope.png", "text": "x", "k": 3}, {"text": "x", "k": 0}])
    assert [r["id"] for r in answers[0]["results"]] == [r["id"] for r in pages[0]]
    assert len(answers[1]["results"]) == 2 and "session" not in answers[0]
    assert answers[2]["error"]["status"] == 404 and answers[3]["error"]["field"] == "k"
    with pytest.raises(ClientError) as e:
        c.batch([])
    assert e.value.field == "queries"


def test_filter_equals_brute_force_and_metadata_returned(world, served):
    c, service = served["client"], served["service"]
    state = service.state
    for conditions in ({"category": "dress"}, {"category": ["shoe", "shirt"]}, {"category": "dress", "price": "3"}):
        res = c.search(image_id="g01.png", text="make it green", k=5, filter=conditions)["results"]
        q = query_of(service, "fti", "g01.png", "make it green")
        scores = exact_scores(service, q)
        ok = [n for n, i in enumerate(state.index.ids) if i != "g01.png" and all(
            (state.metadata.get(i) or {}).get(f) in (v if isinstance(v, list) else [v]) for f, v in conditions.items())]
        expect = sorted(ok, key=lambda n: -scores[n])[:5]
        assert [r["id"] for r in res] == [state.index.ids[n] for n in expect], conditions
        assert all(r["metadata"]["category"] in str(conditions["category"]) for r in res)
    with pytest.raises(ClientError) as e:
        c.search(text="x", k=3, filter={"colour": "red"})
    assert e.value.field == "filter" and "category" in e.value.message
    assert set(c.health()["index"]["metadata_fields"]) == {"category", "price"}


def test_ranking_under_ann_equals_brute_force_filter():
    """rank() over an IVF index (re-ranked) with a filter and with the exact-list path off: brute-force equal."""
    from zscir.index import search_index
    from zscir.serve import ranking

    rng = np.random.default_rng(0)
    vectors = search_index.normalized_fp16(rng.standard_normal((3000, 32)).astype(np.float32))
    built, _ = search_index.build(vectors, kind="ivf-sq8", normalised=True)
    search_index.set_search_knob(built, 1)  # a deliberately poor ANN: the widening must make up for it

    class Index:
        index, searcher, paths = built.index, built.searcher(), [None] * len(vectors)

        def __len__(self):
            return len(vectors)

        def search(self, q, k):
            return self.searcher.search(q, k)

    category = rng.integers(0, 50, len(vectors))
    allowed = np.flatnonzero(category == 7)
    for exact_max in (ranking.FILTER_EXACT_MAX, 0):
        ranking.FILTER_EXACT_MAX, before = exact_max, ranking.FILTER_EXACT_MAX
        try:
            for seed in range(5):
                q = rng.standard_normal((1, 32)).astype(np.float32)
                q /= np.linalg.norm(q)
                got = ranking.rank(Index(), q, 10, offset=3, allowed=allowed)
                scores = np.asarray(vectors[allowed], dtype=np.float32) @ q[0]
                expect = allowed[np.argsort(-scores, kind="stable")][3:13]
                assert [r for r, _ in got.hits] == expect.tolist(), (exact_max, seed)
        finally:
            ranking.FILTER_EXACT_MAX = before


def test_dedupe_hidden_paths_missing_files_and_etag(world, served):
    c, service = served["client"], served["service"]
    plain = c.search(image_id="g11.png", text="make it yellow", k=5, offset=0)
    both = {"g05.png", "dup.png"}
    full = [r["id"] for p in (0, 5, 10, 15) for r in c.search(image_id="g11.png", text="make it yellow", k=5,
                                                                  offset=p)["results"]]
    assert both <= set(full)  # the byte copy is ranked next to its original without dedupe
    deduped = [r["id"] for p in (0, 5, 10, 15) for r in c.search(image_id="g11.png", text="make it yellow", k=5,
                                                                     offset=p, dedupe=0.9999)["results"]]
    assert len(both & set(deduped)) == 1 and set(full) - both <= set(deduped)
    assert all("path" not in r for r in plain["results"])
    health = c.health()
    assert "root" not in health["index"] and str(world["root"]) not in json.dumps(health)
    assert str(world["root"]) not in json.dumps(plain)
    # a gallery file deleted after indexing: never offered, its thumbnail a 404 without the server path
    (world["images"] / "gone.png").unlink()
    ids = [r["id"] for p in range(0, 20, 5) for r in c.search(text="a square", k=5, offset=p)["results"]]
    assert "gone.png" not in ids and len(ids) == 20  # 21 indexed, one gone
    res = httpx.get(served["url"] + "/images/gone.png")
    assert res.status_code == 404 and str(world["root"]) not in res.text
    first = httpx.get(served["url"] + "/images/g01.png")
    etag = first.headers["etag"]
    again = httpx.get(served["url"] + "/images/g01.png", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content


def test_sessions_delete_health_probes_cors_request_ids_and_metrics(world, served, caplog_module):
    c, url = served["client"], served["url"]
    turn = c.search(image_id="g04.png", text="make it red", k=3)
    assert c.session(turn["session"])["turns"][0]["turn"] == 1
    c.delete_session(turn["session"])
    with pytest.raises(ClientError) as e:
        c.refine(turn["session"], turn["results"][0]["id"], "and smaller")
    assert e.value.status == 404
    with pytest.raises(ClientError):
        c.delete_session(turn["session"])
    assert c.live() and c.ready()
    res = httpx.get(url + "/healthz", headers={"X-Request-ID": "abc-123", "Origin": "https://app.example"})
    assert res.headers["x-request-id"] == "abc-123"
    assert res.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in httpx.get(url + "/healthz", headers={"Origin": "https://evil"}).headers
    pre = httpx.options(url + "/search", headers={"Origin": "https://app.example", "Access-Control-Request-Method":
                                                  "POST", "Access-Control-Request-Headers": "x-api-key"})
    assert pre.status_code == 200 and "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    made = httpx.get(url + "/livez", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert len(made) == 32 and " " not in made
    logged = [json.loads(line) for line in caplog_module]
    mine = [r for r in logged if r.get("request_id") == "abc-123"]
    assert mine and mine[0]["path"] == "/healthz" and mine[0]["status"] == 200 and mine[0]["duration_ms"] >= 0
    text = httpx.get(url + "/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "zscir_requests_in_flight", "zscir_search_queue"):
        line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
        assert float(line.split()[1]) >= 0, name
    assert float(next(ln for ln in text.splitlines() if ln.startswith("zscir_requests_in_flight ")).split()[1]) >= 1


def test_readyz_loading_and_probes_open_without_key(world, tmp_path, monkeypatch):
    from zscir.resolve import load_retriever
    from zscir.serve import create_app, live_index
    from zscir.serve.runner import serve_in_thread

    index = tmp_path / "index"
    shutil.copytree(world["index"], index)
    app = create_app(retrievers={"fti": load_retriever(index, world["fti"])}, api_key="k3y", reload_interval=0)
    service = app.state.service
    opening, release = threading.Event(), threading.Event()
    real_open = live_index.GalleryIndex.open

    def slow_open(root):
        opening.set()
        release.wait(30)
        return real_open(root)

    monkeypatch.setattr(live_index.GalleryIndex, "open", staticmethod(slow_open))
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/livez").status_code == 200 and httpx.get(url + "/healthz").status_code == 401
        assert httpx.get(url + "/readyz").json() == {"ready": True, "state": "ready"}
        (index / "index.json").write_text((index / "index.json").read_text() + " ")
        reload = threading.Thread(target=service.reload_if_changed)
        reload.start()
        assert opening.wait(30)
        res = httpx.get(url + "/readyz")
        assert res.status_code == 503 and res.json()["state"] == "loading" and res.headers["retry-after"]
        release.set()
        reload.join(30)
        assert Client(url).ready() and Client(url, api_key="k3y").health()["state"] == "ready"


def test_docs_offline_and_openapi_lists_every_new_route(served):
    url = served["url"]
    page = httpx.get(url + "/docs")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    assert "//" not in "".join(a for a in page.text.split('"') if a.startswith(("http", "//")))
    for asset in ("docs/swagger-ui-bundle.js", "docs/swagger-ui.css", "docs/init.js"):
        assert httpx.get(f"{url}/{asset}").status_code == 200, asset
    assert httpx.get(url + "/docs/../index.html").status_code == 404
    schema = httpx.get(url + "/openapi.json").json()
    for path, method in (("/livez", "get"), ("/readyz", "get"), ("/search/batch", "post"),
                         ("/sessions/{session}", "delete")):
        assert method in schema["paths"][path], path
    props = schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"offset", "filter", "dedupe"} <= set(props)


def test_world_clip_notice_only_for_photos():
    from zscir.serve import notices

    assert notices.world_clip_notice({"backbone": {"model": "ViT-L-14"}, "images_root": "/photos"}) is None
