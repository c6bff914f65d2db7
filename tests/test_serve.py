"""`zscir serve` over real HTTP on 127.0.0.1: same rankings as Retriever.search, 4xx per bad input, API key, reload."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from _images import draw_image
from _serve_world import build_world

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

UPLOAD_CAP = 64 * 1024


def png_claiming(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width x height pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny backbone saved as a file, an FTI checkpoint for it, and an index of 18 drawn images."""
    root = tmp_path_factory.mktemp("serve")
    return {**build_world(root, 18), "outside": draw_image(root / "outside.png", 99)}


@pytest.fixture(scope="module")
def server(world):
    """The app (FTI + the sum baseline, one backbone) served on a free loopback port from a thread."""
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    app = create_app(world["index"], [world["fti"], "sum"], max_upload_bytes=UPLOAD_CAP, max_k=12,
                     reload_interval=0.2, show_paths=True)
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=600) as client:
            yield {"url": url, "client": client, "app": app, "service": app.state.service}


def ranking(answer: dict) -> list[tuple[str, float]]:
    return [(r["id"], r["score"]) for r in answer["results"]]


def assert_same(answer: dict, hits, tol=1e-4):
    assert [r["id"] for r in answer["results"]] == [h.id for h in hits]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], [h.score for h in hits], atol=tol)
    assert [r["rank"] for r in answer["results"]] == list(range(1, len(hits) + 1))


def test_search_by_upload_id_and_base64_equals_retriever(world, server):
    from zscir.resolve import load_retriever

    c = server["client"]
    assert server["url"].startswith("http://127.0.0.1:")
    r = load_retriever(world["index"], world["fti"])
    text = "make the square blue"

    # by gallery id: the reference itself is left out, as Retriever.search(path) does
    ref = world["paths"][4]
    by_id = c.post("/search", json={"image_id": "g04.png", "text": text, "k": 6}).json()
    expected = r.search(ref, text, k=6)
    assert_same(by_id, expected)
    assert "g04.png" not in [x["id"] for x in by_id["results"]]
    assert by_id["results"][0]["path"] == str(world["paths"][int(expected[0].id[1:3])].absolute())

    # by upload (multipart) and by base64 (JSON and form field) of an image outside the gallery
    data = world["outside"].read_bytes()
    expected = r.search(world["outside"], text, k=8)
    up = c.post("/search", files={"image": ("outside.png", data, "image/png")}, data={"text": text, "k": "8"}).json()
    assert_same(up, expected)
    b64 = c.post("/search", json={"image_base64": base64.b64encode(data).decode(), "text": text, "k": 8}).json()
    assert_same(b64, expected)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    form = c.post("/search", data={"image_base64": uri, "text": text, "k": "8"}).json()
    assert_same(form, expected)
    assert up["reference"]["kind"] == "upload" and b64["reference"]["kind"] == "base64"

    # an upload of a gallery image's bytes is that image: left out of its answer, as by id or by path
    copy = c.post("/search", files={"image": ("copy.png", ref.read_bytes(), "image/png")},
                  data={"text": text, "k": "6"}).json()
    assert_same(copy, r.search(ref, text, k=6))
    assert "g04.png" not in [x["id"] for x in copy["results"]]

    # a second model by name: the sum baseline over the same backbone and index
    r_sum = load_retriever(world["index"], "sum", backbone=r.backbone)
    by_sum = c.post("/search", json={"image_id": "g04.png", "text": text, "k": 6, "model": "sum"}).json()
    assert by_sum["model"] == "sum" and by_sum["timings_ms"]["mapping_network"] is None
    assert_same(by_sum, r_sum.search(ref, text, k=6))

    t = by_id["timings_ms"]
    assert set(t) == {"decode", "image_encoder", "mapping_network", "text_encoder", "search", "total"}
    assert all(v >= 0 for v in t.values()) and t["image_encoder"] > 0 and t["mapping_network"] > 0
    assert sum(v for k, v in t.items() if k != "total") <= t["total"] + 0.5


def test_refine_continues_the_session(world, server):
    from zscir.resolve import load_retriever

    c = server["client"]
    r = load_retriever(world["index"], world["fti"])
    first = c.post("/search", files={"image": ("o.png", world["outside"].read_bytes(), "image/png")},
                   data={"text": "make it red", "k": "5"}).json()
    assert first["turn"] == 1 and len(first["turns"]) == 1
    choice = first["results"][2]["id"]
    second = c.post("/refine", json={"session": first["session"], "choice": choice, "text": "add a green square"})
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["session"] == first["session"] and second["turn"] == 2 and second["k"] == 5
    assert second["reference"] == {"kind": "id", "id": choice}
    assert_same(second, r.search(world["images"] / choice, "add a green square", k=5))
    assert choice not in [x["id"] for x in second["results"]]
    third = c.post("/refine", json={"session": first["session"], "choice": second["results"][0]["id"],
                                    "text": "smaller", "k": 3}).json()
    assert [t["turn"] for t in third["turns"]] == [1, 2, 3]
    assert [t["text"] for t in third["turns"]] == ["make it red", "add a green square", "smaller"]
    assert third["turns"][1]["results"] == [{"id": x["id"], "score": x["score"]} for x in second["results"]]
    got = c.get(f"/sessions/{first['session']}").json()
    assert [t["turn"] for t in got["turns"]] == [1, 2, 3]

    bad = [({"session": "nope", "choice": choice, "text": "x"}, 404, "session"),
           ({"session": first["session"], "choice": "g17.png" if "g17.png" not in
             {x["id"] for t in third["turns"] for x in t["results"]} else "zz", "text": "x"}, 422, "choice"),
           ({"session": first["session"], "choice": choice, "text": " "}, 422, "text"),
           ({"session": first["session"], "choice": choice}, 422, "text")]
    for body, status, field in bad:
        res = c.post("/refine", json=body)
        assert res.status_code == status and res.json()["error"]["field"] == field, (body, res.text)


def test_bad_input_gets_a_4xx_naming_the_field(world, server, tmp_path):
    c = server["client"]
    good = world["outside"].read_bytes()
    im = Image.new("RGB", (300, 300))
    im.frombytes(np.random.default_rng(0).integers(0, 255, 300 * 300 * 3, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > UPLOAD_CAP * 4 // 3 + 64 * 1024  # refused from its Content-Length, before it is read
    buf = io.BytesIO()
    im.crop((0, 0, 180, 180)).save(buf, format="PNG")
    over = buf.getvalue()  # read, then refused for the part's size
    assert UPLOAD_CAP < len(over) < UPLOAD_CAP + 64 * 1024 and len(over) * 4 // 3 < UPLOAD_CAP * 4 // 3 + 64 * 1024
    cases = [
        ("text not a string", dict(json={"image_id": "g01.png", "text": 5}), 422, "text", r"'text'"),
        ("empty text", dict(json={"image_id": "g01.png", "text": "   "}), 422, "text", r"'text' is empty"),
        ("non-image upload", dict(files={"image": ("a.png", b"hello, not an image", "image/png")},
                                  data={"text": "x"}), 422, "image", r"not an image"),
        ("corrupt upload", dict(files={"image": ("a.png", good[:60], "image/png")}, data={"text": "x"}),
         422, "image", r"truncated|corrupt"),
        ("over the size cap", dict(files={"image": ("big.png", big, "image/png")}, data={"text": "x"}),
         413, "image", r"over the .*cap"),
        ("base64 over the cap", dict(json={"image_base64": base64.b64encode(big).decode(), "text": "x"}),
         413, "image_base64", r"cap"),
        ("upload part over the cap", dict(files={"image": ("o.png", over, "image/png")}, data={"text": "x"}),
         413, "image", rf"the upload is {len(over)} bytes, over the {UPLOAD_CAP}-byte cap"),
        ("base64 field over the cap", dict(json={"image_base64": base64.b64encode(over).decode(), "text": "x"}),
         413, "image_base64", rf"decodes to {len(over)} bytes, over the {UPLOAD_CAP}-byte upload cap"),
        ("decompression bomb", dict(files={"image": ("bomb.png", png_claiming(100_000, 100_000), "image/png")},
                                    data={"text": "x"}), 413, "image", r"decompression bomb"),
        ("bad base64", dict(json={"image_base64": "@@@not base64", "text": "x"}), 422, "image_base64", r"base64"),
        ("unknown gallery id", dict(json={"image_id": "nope.png", "text": "x"}), 404, "image_id", r"'nope\.png'"),
        ("k too large", dict(json={"image_id": "g01.png", "text": "x", "k": 13}), 422, "k", r"from 1 to 12"),
        ("k zero", dict(json={"image_id": "g01.png", "text": "x", "k": 0}), 422, "k", r"from 1 to 12"),
        ("k not a number", dict(data={"image_id": "g01.png", "text": "x", "k": "ten"}), 422, "k", r"integer"),
        ("no reference, no text", dict(json={"k": 3}), 422, "image", r"no query"),
        ("two references", dict(json={"image_id": "g01.png", "image_base64": "AAAA", "text": "x"}), 422,
         "image_id", r"one reference image, not image_base64 and image_id"),
        ("unknown model", dict(json={"image_id": "g01.png", "text": "x", "model": "gpt"}), 422, "model", r"loaded"),
        ("unknown field", dict(json={"image_id": "g01.png", "text": "x", "topk": 3}), 422, "topk", r"unknown"),
        ("not JSON", dict(content=b"{nope", headers={"Content-Type": "application/json"}), 400, "body", r"JSON"),
        ("wrong content type", dict(content=b"x", headers={"Content-Type": "text/plain"}), 415, "body", r"Content"),
    ]
    for name, kwargs, status, field, pattern in cases:
        res = c.post("/search", **kwargs)
        assert res.status_code == status, (name, res.status_code, res.text)
        err = res.json()["error"]
        assert err["field"] == field and re.search(pattern, err["message"]), (name, err)
    # thumbnails: unknown id, bad size
    assert c.get("/images/nope.png").json()["error"]["field"] == "id"
    assert c.get("/images/g01.png", params={"size": 7}).status_code == 422
    assert c.get("/images/g01.png", params={"size": "big"}).json()["error"]["field"] == "size"
    # nothing on the server was written by all this: the index directory is unchanged
    index_files = sorted(p.name for p in world["index"].rglob("*"))
    c.post("/search", files={"image": ("x.png", good, "image/png")}, data={"text": "x"})
    assert sorted(p.name for p in world["index"].rglob("*")) == index_files


def test_images_healthz_metrics_openapi_and_page(world, server):
    c = server["client"]
    res = c.get("/images/g03.png")
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(res.content))
    src = Image.open(world["paths"][3])
    assert thumb.size == src.size  # 40x32 is below the thumbnail size: kept as is
    assert np.abs(np.asarray(thumb, dtype=int) - np.asarray(src.convert("RGB"), dtype=int)).mean() < 12
    metrics = server["service"].metrics
    cached = metrics.value("zscir_thumbnails_total", result="cached") or 0
    assert c.get("/images/g03.png").content == res.content
    assert metrics.value("zscir_thumbnails_total", result="cached") == cached + 1  # the second one from memory

    health = c.get("/healthz").json()
    assert health["status"] == "ok" and set(health["models"]) == {"fti", "sum"} and health["default_model"] == "fti"
    assert health["index"]["images"] == 18

    c.post("/search", json={"image_id": "g02.png", "text": "red", "k": 3})
    c.post("/search", json={"image_id": "g02.png", "text": ""})
    text = c.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    body = text.text
    for stage in ("decode", "image_encoder", "mapping_network", "text_encoder", "search"):
        m = re.search(rf'zscir_stage_seconds_count{{stage="{stage}"}} (\d+)', body)
        assert m and int(m.group(1)) >= 1, stage
        assert f'zscir_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}' in body
    ok = re.search(r'zscir_requests_total{method="POST",route="/search",status="200"} (\d+)', body)
    bad = re.search(r'zscir_request_errors_total{method="POST",route="/search",status="422"} (\d+)', body)
    assert ok and int(ok.group(1)) >= 1 and bad and int(bad.group(1)) >= 1
    assert 'zscir_request_seconds_bucket{route="/search",le="0.5"}' in body
    assert re.search(r"^# TYPE zscir_stage_seconds histogram$", body, re.M)

    schema = c.get("/openapi.json").json()
    for path in ("/search", "/refine", "/images/{image_id}", "/healthz", "/metrics"):
        assert path in schema["paths"], path
    content = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert "image_id" in content["application/json"]["schema"]["properties"]

    for method, path, status, field in (("GET", "/nope", 404, "path"), ("GET", "/search", 405, "method"),
                                        ("GET", "/static/evil.js", 404, "name")):
        res = c.request(method, path)
        assert res.status_code == status and res.json()["error"]["field"] == field, (path, res.text)
    assert not re.search(r"(src|href)=\"https?://", c.get("/docs").text)  # served here, not from a CDN

    page = c.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for name in ("app.js", "style.css"):
        asset = c.get(f"/static/{name}")
        assert asset.status_code == 200
        assert not re.search(r"https?://", asset.text), name  # offline: nothing loaded from elsewhere
    assert not re.search(r"(src|href)=\"https?://", page.text)


def test_api_key_is_required_on_every_request(world):
    from zscir.resolve import load_retriever
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    r = load_retriever(world["index"], world["fti"])
    app = create_app(retrievers={"fti": r}, api_key="s3cret-key", reload_interval=0)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=600) as c:
        for path in ("/healthz", "/", "/metrics", "/images/g01.png"):
            res = c.get(path)
            assert res.status_code == 401 and res.json()["error"]["field"] == "api_key", path
            assert res.headers["www-authenticate"].startswith("Basic")
        query = {"image_id": "g01.png", "text": "red", "k": 3}
        for headers in ({"X-API-Key": "s3cret-kez"}, {"Authorization": "Bearer s3cret"}, {"X-API-Key": ""},
                        {"Authorization": "Basic " + base64.b64encode(b"me:wrong").decode()}):
            assert c.post("/search", json=query, headers=headers).status_code == 401, headers
        for headers in ({"X-API-Key": "s3cret-key"}, {"Authorization": "Bearer s3cret-key"},
                        {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret-key").decode()}):
            res = c.post("/search", json=query, headers=headers)
            assert res.status_code == 200 and len(res.json()["results"]) == 3, headers


def test_cli_refuses_an_open_bind_without_a_key():
    from click.testing import CliRunner

    from zscir.cli import cli
    from zscir.errors import ZscirError

    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert isinstance(res.exception, ZscirError) and "--api-key" in str(res.exception)
    res = CliRunner().invoke(cli, ["serve", "--host", "::", "--api-key", "k", "--insecure-no-auth"])
    assert isinstance(res.exception, ZscirError) and "not both" in str(res.exception)
    from zscir.serve.auth import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_index_update_is_swapped_in_whole_while_serving(world, tmp_path):
    """The index gets 6 images while served: searches during the rebuild all answer; then the new index is used."""
    import threading

    from zscir.index.gallery import build_index

    # serve a copy, so the other tests' index stays as it was
    from zscir.resolve import load_retriever
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    index = tmp_path / "index"
    shutil.copytree(world["index"], index)
    images = tmp_path / "images"
    shutil.copytree(world["images"], images)
    app = create_app(retrievers={"fti": load_retriever(index, world["fti"])}, reload_interval=0.05)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=600) as c:
        svc = app.state.service
        gen0 = svc.state.generation
        assert c.get("/healthz").json()["index"]["images"] == 18
        for i in range(18, 24):
            draw_image(images / f"g{i:02d}.png", i)
        # (the copied index still names the original files; the rebuilt one names the copies)
        old_answer = [h.id for h in load_retriever(index, world["fti"]).search(world["images"] / "g01.png",
                                                                                "make it red", k=17)]
        statuses, answers, stop = [], [], threading.Event()

        def hammer():
            while not stop.is_set():
                res = c.post("/search", json={"image_id": "g01.png", "text": "make it red", "k": 17})
                statuses.append(res.status_code)
                if res.status_code == 200:
                    answers.append((res.json()["index_generation"], [x["id"] for x in res.json()["results"]]))

        t = threading.Thread(target=hammer)
        t.start()
        build_index(index, world["backbone"], images=images, progress=False)
        deadline = time.monotonic() + 120  # a generous bound: the loop ends as soon as the swap is seen
        while svc.state.generation == gen0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        t.join()
        assert statuses and set(statuses) == {200}, statuses
        assert svc.state.generation == gen0 + 1 and {g for g, _ in answers} == {gen0, gen0 + 1}
        new_answer = [h.id for h in load_retriever(index, world["fti"]).search(images / "g01.png", "make it red", k=17)]
        assert new_answer != old_answer  # the six new images take places in the top 17
        # each answer is the whole old index's or the whole new one's, never a mix
        bad = [(g, ids) for g, ids in answers if ids != (old_answer if g == gen0 else new_answer)]
        assert not bad, (len(bad), len(answers), bad[0])
        assert c.get("/healthz").json()["index"]["images"] == 24
        res = c.post("/search", json={"image_id": "g20.png", "text": "make it red", "k": 23}).json()
        assert len(res["results"]) == 23 and res["index_generation"] == gen0 + 1
        assert_same(res, load_retriever(index, world["fti"]).search(images / "g20.png", "make it red", k=23))
        assert svc.metrics.value("zscir_index_reloads_total") >= 1


def test_serve_command_runs_and_stops_gracefully(world):
    """The installed command: --port 0 --json prints its URL; it answers; on SIGTERM a request in flight finishes."""
    import signal
    import threading

    exe = shutil.which("zscir")
    cmd = [exe] if exe else [sys.executable, "-c", "from zscir.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1])] +
                                                       os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    proc = subprocess.Popen([*cmd, "serve", "--index", str(world["index"]), "--port", "0", "--json",
                             "--log-level", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["url"].startswith("http://127.0.0.1:") and info["images"] == 18 and info["models"] == ["fti"]
        query = {"image_id": "g05.png", "text": "make it blue", "k": 4}
        res = httpx.post(info["url"] + "/search", json=query, timeout=600)
        assert res.status_code == 200 and len(res.json()["results"]) == 4

        # a request in flight when SIGTERM comes: its body is half sent; it must still be answered in full
        payload = json.dumps(query).encode()
        half_sent, resume, outcome = threading.Event(), threading.Event(), {}

        def slow_body():
            yield payload[:10]
            half_sent.set()
            resume.wait(600)
            time.sleep(0.3)  # the server has had the signal for a while
            yield payload[10:]

        def client():
            try:
                r = httpx.post(info["url"] + "/search", content=slow_body(), timeout=600,
                               headers={"Content-Type": "application/json"})
                outcome["status"], outcome["results"] = r.status_code, len(r.json()["results"])
            except httpx.TransportError as e:
                outcome["error"] = repr(e)

        t = threading.Thread(target=client)
        t.start()
        assert half_sent.wait(600)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        resume.set()
        t.join(timeout=600)
        code = proc.wait(timeout=600)
        err = proc.stderr.read()
        assert outcome == {"status": 200, "results": 4}, (outcome, err)
        assert code in (0, -signal.SIGTERM) and "Traceback" not in err, err
        assert "Application shutdown complete" in err, err
        with pytest.raises(httpx.ConnectError):  # and then it is gone
            httpx.post(info["url"] + "/search", json=query, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_several_checkpoints_of_one_method_are_named_by_file(world, tmp_path):
    from zscir.errors import ZscirError
    from zscir.resolve import load_retriever
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint
    from zscir.serve import load_retrievers

    cfg = get_mapping_config("fti4cir-tiny")
    torch.manual_seed(1)
    other = str(save_mapping_checkpoint(tmp_path / "fti_other", create_mapping_network(
        cfg, backbone_dims(world["backbone"])), cfg, world["backbone"]))
    loaded = load_retrievers(world["index"], [world["fti"], other, "image"])
    assert list(loaded) == ["fti", "fti_other", "image"]
    assert len({id(r.backbone) for r in loaded.values()}) == 1  # one backbone load shared by the models
    hits = loaded["fti_other"].search(world["paths"][2], "make it red", k=5)
    assert [h.id for h in hits] == [h.id for h in load_retriever(world["index"], other).search(
        world["paths"][2], "make it red", k=5)]
    with pytest.raises(ZscirError, match="given twice"):
        load_retrievers(world["index"], ["image", "image"])


def test_app_mounts_in_another_service(world):
    """create_app() mounted under a prefix of the user's own FastAPI app: API, thumbnails, page, metrics labels."""
    from fastapi import FastAPI

    from zscir.resolve import load_retriever
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    parent = FastAPI()

    @parent.get("/own")
    def own():
        return {"mine": True}

    app = create_app(retrievers={"fti": load_retriever(world["index"], world["fti"])}, reload_interval=0.1)
    parent.mount("/cir", app)
    with serve_in_thread(parent) as url, httpx.Client(base_url=url, timeout=600, follow_redirects=True) as c:
        assert c.get("/own").json() == {"mine": True}
        res = c.post("/cir/search", json={"image_id": "g02.png", "text": "make it red", "k": 3}).json()
        assert len(res["results"]) == 3
        assert c.get("/cir/" + res["results"][0]["thumbnail"]).headers["content-type"] == "image/jpeg"
        page = c.get("/cir")
        assert str(page.url).endswith("/cir/") and "static/app.js" in page.text
        assert c.get("/cir/static/app.js").status_code == 200
        assert 'route="/search"' in c.get("/cir/metrics").text
        assert app.state.service._watcher is not None  # started on the first request: no lifespan when mounted
