"""Bounded cost for every input: extreme images through every entry point, typed fields, and the server's limits."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from _serve_world import build_world, strip_png

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STRIPS = {"wide.png": (100_000, 1), "tall.png": (1, 100_000), "wide40k.png": (40_000, 1)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve-limits"))


@pytest.fixture(scope="module")
def app_factory(world):
    from zscir.serve import create_app
    from zscir.serve.app import load_retrievers

    retrievers = load_retrievers(world["index"], [world["fti"]], progress=False)

    def make(limits=None, **options):
        options.setdefault("reload_interval", 0)
        return create_app(retrievers=retrievers, limits=limits, **options)
    return make


CHILD = textwrap.dedent('''
    import json, resource, sys
    from pathlib import Path
    from PIL import Image
    from starlette.testclient import TestClient
    from zscir.backbone import load_backbone
    from zscir.backbone.preprocess import make_preprocess
    from zscir.benchmarks.base import EvalSplit
    from zscir.errors import ZscirError
    from zscir.evaluation.features import CacheReport, gallery_features
    from zscir.index.gallery import GalleryIndex, build_index
    from zscir.index.retriever import Retriever
    from zscir.models.query import load_query_encoder
    from zscir.serve import create_app

    root, folder = Path(sys.argv[1]), Path(sys.argv[2])
    names = sorted(p.name for p in folder.glob("*.png"))
    bb = load_backbone("zscir-tiny-test", sys.argv[3])
    app = create_app(root / "index", [sys.argv[4]], reload_interval=0)
    out = {}
    with TestClient(app) as client:
        good = (folder / "good.png").read_bytes()
        assert client.post("/search", files={"image": ("g.png", good)}, data={"text": "x"}).status_code == 200
        build_index(root / "warm-index", bb, images=root / "gallery", progress=False)
        # from here on: at most 3 GB more address space, and the peak RSS is compared with the warm one
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2 ** 30, resource.RLIM_INFINITY))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["serve"] = {}
        for name in names:
            res = client.post("/search", files={"image": (name, (folder / name).read_bytes())}, data={"text": "x"})
            out["serve"][name] = [res.status_code, res.json().get("error", {}).get("message")]
    summary = build_index(root / "strip-index", bb, images=folder, progress=False)
    out["index"] = {c["id"]: c["reason"] for c in summary["features"]["corrupt"]}
    retriever = Retriever(GalleryIndex.open(root / "strip-index"), load_query_encoder("image", bb))
    out["retrieve"] = {}
    for name in names:
        try:
            retriever.search(folder / name, "x", k=1)
            out["retrieve"][name] = "ok"
        except ZscirError as e:
            out["retrieve"][name] = str(e)
    split = EvalSplit("cirr", "val", "cirr", names, {n: folder / n for n in names}, [])
    report = CacheReport()
    gallery_features(bb, split, root / "eval-cache", report, progress=False)
    out["eval"] = {c["id"]: c["reason"] for c in report.corrupt}
    out["preprocess"] = {}
    for pre in ("targetpad", "clip", "lincir"):  # a PIL image handed over directly, not through the decoder
        for w, h in [(100000, 1), (1, 100000), (40000, 1)]:
            out["preprocess"][f"{pre} {w}x{h}"] = list(make_preprocess(pre, 224).pixels(Image.new("RGB", (w, h))).shape)
    out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps(out))
''')


def test_extreme_strips_cost_little_through_serve_index_retrieve_and_eval(world, tmp_path):
    """The 372-byte 100000x1 PNG (and 1x100000, 40000x1): a clear 4xx or skip line everywhere, peak RSS bounded."""
    from PIL import Image

    folder = tmp_path / "strips"
    folder.mkdir()
    for name, (w, h) in STRIPS.items():
        (folder / name).write_bytes(strip_png(w, h))
    assert len((folder / "wide.png").read_bytes()) < 400
    Image.open(world["images"] / "g01.png").save(folder / "good.png")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = subprocess.run([sys.executable, str(script), str(world["root"]), str(folder), str(world["weights"]),
                          world["fti"]], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in STRIPS:
        status, message = out["serve"][name]
        assert status == 422 and "extreme aspect ratio" in message and "\n" not in message, (name, status, message)
        assert out["index"][name].startswith("extreme aspect ratio"), out["index"]
        assert "extreme aspect ratio" in out["retrieve"][name], out["retrieve"]
        assert out["eval"][name].startswith("extreme aspect ratio"), out["eval"]
    assert out["serve"]["good.png"][0] == 200 and out["retrieve"]["good.png"] == "ok"
    assert "good.png" not in out["index"] and "good.png" not in out["eval"]
    assert all(shape == [3, 224, 224] for shape in out["preprocess"].values()), out["preprocess"]
    # the old pipeline padded 100000x1 to a 100000x79999 canvas (24 GB); bounded now to a few MB
    assert out["growth_mb"] < 150, out["growth_mb"]


def test_pixel_cap_is_zscirs_own_above_pils_limit():
    from PIL import Image

    from zscir.data.images import BadImageError, decode_image

    data = strip_png(20_000, 10_000)  # 200 MP: above PIL's hard limit of ~179 MP
    with pytest.raises(BadImageError, match=r"20000x10000 > 89478485 pixels"):
        decode_image(data, "big.png")
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImageError, match="extreme aspect ratio"):  # past the pixel cap, the aspect cap speaks
        decode_image(strip_png(30_000, 100), "x.png", max_pixels=10 ** 10)
    assert Image.MAX_IMAGE_PIXELS == saved


def _client(app):
    from starlette.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


def test_every_field_is_checked_by_type(app_factory):
    from zscir.serve.limits import Limits

    bad_json = {
        "Infinity": b'{"image_id": "g01.png", "text": "x", "k": Infinity}',
        "-Infinity": b'{"image_id": "g01.png", "text": "x", "k": -Infinity}',
        "NaN": b'{"image_id": "g01.png", "text": "x", "k": NaN}',
        "1e400": b'{"image_id": "g01.png", "text": "x", "k": 1e400}',
        "5000 digits": b'{"image_id": "g01.png", "text": "x", "k": ' + b"9" * 5000 + b"}",
        "deep": b'{"image_id": "g01.png", "text": "x", "k": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep 9": b'{"image_id": "g01.png", "text": "x", "m": ' + b"[" * 9 + b"]" * 9 + b"}",
        "twice": b'{"image_id": "g01.png", "text": "x", "text": "y"}',
    }
    typed = [
        ("k", "٣", "integer"), ("k", "5_0", "integer"), ("k", True, "integer"), ("k", 2.5, "integer"),
        ("k", [3], "integer"), ("k", "9" * 40, "integer"),
        ("model", ["fti"], "expected a string"), ("model", {"a": 1}, "expected a string"),
        ("model", 5, "expected a string"), ("text", 5, "expected a string"), ("text", ["x"], "expected a string"),
        ("text", {"x": 1}, "expected a string"), ("image_id", 7, "expected a string"),
    ]
    app = app_factory(Limits(rate=0))
    with _client(app) as c:
        for name, body in bad_json.items():
            res = c.post("/search", content=body, headers={"Content-Type": "application/json"})
            assert res.status_code == 400, (name, res.status_code, res.text[:300])
            assert len(res.json()["error"]["message"]) < 300 and "\n" not in res.json()["error"]["message"]
        for field, value, words in typed:
            body = {"image_id": "g01.png", "text": "x", field: value}
            res = c.post("/search", json=body)
            err = res.json()["error"]
            assert res.status_code == 422 and err["field"] == field and words in err["message"], (field, value, err)
        for form_k in ("٣", "5_0", "1e3", "inf"):
            res = c.post("/search", data={"image_id": "g01.png", "text": "x", "k": form_k})
            assert res.status_code == 422 and res.json()["error"]["field"] == "k", (form_k, res.text)
        png = (strip_png(8, 8), strip_png(9, 9))
        res = c.post("/search", files=[("image", ("a.png", png[0])), ("image", ("b.png", png[1]))], data={"text": "x"})
        assert res.status_code == 422 and "twice" in res.json()["error"]["message"], res.text
        res = c.post("/search", content=b"image_id=g01.png&text=x&text=y",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert res.status_code == 422 and "twice" in res.json()["error"]["message"]
        assert c.post("/search", json={"image_id": "g01.png", "text": "x", "k": 3.0}).status_code == 200
        assert c.post("/search", data={"image_id": "g01.png", "text": "x", "k": " 3 "}).status_code == 200
        res = c.post("/refine", json={"session": ["a"], "choice": "g01.png", "text": "x"})
        assert res.status_code == 422 and res.json()["error"]["field"] == "session"


def test_security_headers_head_and_bounded_method_labels(app_factory):
    app = app_factory()
    with _client(app) as c:
        for path in ("/", "/healthz", "/images/g01.png", "/nope"):
            res = c.get(path)
            assert res.headers["x-content-type-options"] == "nosniff" and res.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in res.headers["content-security-policy"], path
            head = c.head(path)
            assert head.status_code == res.status_code and head.content == b"", path
            assert head.headers.get("content-type") == res.headers.get("content-type"), path
        for i in range(30):
            assert c.request(f"M{i}X", "/healthz").status_code in (400, 405)
        metrics = c.get("/metrics").text
    methods = {line.split('method="')[1].split('"')[0] for line in metrics.splitlines() if 'method="' in line}
    assert methods <= {"GET", "HEAD", "POST", "other"} and "other" in methods, methods
    assert 'zscir_limit{limit="max_queue"} 16' in metrics


def test_rate_limit_answers_429_with_retry_after(app_factory):
    from zscir.serve.limits import Limits

    app = app_factory(Limits(rate=0.001, burst=2))  # a token per 1000 s: the third request is over, at any speed
    with _client(app) as c:
        body = {"image_id": "g01.png", "text": "x", "k": 2}
        assert [c.post("/search", json=body).status_code for _ in range(2)] == [200, 200]
        res = c.post("/search", json=body)
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1, res.text
        assert "--rate-limit" in res.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200  # reads are not rate limited
        assert 'zscir_refused_total{reason="rate_limit"} 1' in c.get("/metrics").text


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=600)
    return s


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_queue_cap_503_and_body_timeout_408_and_early_413_closes(app_factory):
    import httpx

    from zscir.serve.limits import Limits
    from zscir.serve.runner import serve_in_thread

    app = app_factory(Limits(max_queue=0, body_timeout=1.0, rate=0), workers=1, max_upload_bytes=4096)
    metrics = app.state.service.metrics
    with serve_in_thread(app) as url:
        slow = _raw(url)  # holds the only place: its body never completes
        slow.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                     b"\r\n{\"text\"")
        _wait_for(lambda: metrics.value("zscir_search_requests_held") == 1, "the slow request was not admitted")
        res = httpx.post(url + "/search", json={"image_id": "g01.png", "text": "x"}, timeout=600)
        assert res.status_code == 503 and res.headers["retry-after"] == "1", res.text
        answer = _read_all(slow)  # after --body-timeout: 408, and closed
        assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower(), answer[:300]
        slow.close()
        assert metrics.value("zscir_refused_total", reason="queue_full") == 1
        assert metrics.value("zscir_refused_total", reason="body_timeout") == 1
        big = _raw(url)  # declared over the cap: refused before reading, the connection closed, not drained
        big.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000000\r\n\r\n")
        answer = _read_all(big)
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), answer[:300]
        big.close()
        assert httpx.post(url + "/search", json={"image_id": "g01.png", "text": "x"}, timeout=600).status_code == 200


def test_header_timeout_and_connection_cap(app_factory):
    from zscir.serve.limits import Limits
    from zscir.serve.runner import serve_in_thread

    app = app_factory(Limits(header_timeout=1.0, max_connections=4))
    metrics = app.state.service.metrics
    with serve_in_thread(app) as url:
        trickle = _raw(url)
        trickle.settimeout(0.2)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0, answer = time.monotonic(), b""
        while time.monotonic() - t0 < 60:  # one byte every 0.2 s would hold it forever without a header deadline
            try:
                trickle.sendall(b"X")
                data = trickle.recv(65536)
                if not data:
                    break
                answer += data
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert time.monotonic() - t0 < 60 and answer.startswith(b"HTTP/1.1 408"), answer[:200]
        trickle.close()
        assert metrics.value("zscir_refused_total", reason="header_timeout") >= 1
        held = [_raw(url) for _ in range(6)]
        closed = []
        for s in held:
            s.settimeout(0.5)
            try:
                closed.append(s.recv(1) == b"")
            except socket.timeout:
                closed.append(False)
        assert sum(closed) >= 2, closed  # over the cap of 4: closed at once (the rest by the header timeout)
        for s in held:
            s.close()


def test_connection_stays_usable_after_errors(app_factory):
    from zscir.serve.limits import Limits
    from zscir.serve.runner import serve_in_thread

    app = app_factory(Limits(rate=0))
    with serve_in_thread(app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        bodies = [b'{"k": Infinity}', b'{"model": ["a"], "text": "x", "image_id": "g01.png"}', b"[" * 50_000,
                  b'{"image_id": "nope", "text": "x"}', b'{"image_id": "g01.png", "text": "x", "k": 2}']
        sock = None
        for body in bodies * 3:
            conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
            res = conn.getresponse()
            res.read()
            assert res.status < 500 and res.getheader("connection") != "close", (body[:40], res.status)
            sock = sock or conn.sock
            assert conn.sock is sock  # the same connection throughout
        conn.close()


def test_api_key_with_spaces_and_bad_limits_refused_at_start():
    from zscir.errors import ZscirError
    from zscir.serve.auth import check_bind
    from zscir.serve.limits import Limits

    for key in (" k1", "k1 ", "k\t1", "k\n1"):
        with pytest.raises(ZscirError, match="--api-key"):
            check_bind("127.0.0.1", key, False)
    check_bind("127.0.0.1", "k1", False)
    for bad, option in ((dict(max_queue=-1), "--max-queue"), (dict(rate=float("nan")), "--rate-limit"),
                        (dict(header_timeout=0), "--header-timeout"), (dict(body_timeout=float("inf")), "--body-timeout"),
                        (dict(max_connections=0), "--max-connections"), (dict(burst=0), "--rate-burst")):
        with pytest.raises(ZscirError, match=option):
            Limits(**bad).check()
    run = subprocess.run([sys.executable, "-m", "zscir.cli", "serve", "--api-key", " k1"], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode != 0 and "--api-key" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
