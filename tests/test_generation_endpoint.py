"""The OpenAI-compatible endpoint client against a small HTTP server on 127.0.0.1: retries on 429/5xx,
timeouts and malformed answers, then one line; bounded concurrency; image input as a data URL; the cache."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from zscir.data.caption_cache import caption_images
from zscir.data.sources import open_image_source
from zscir.errors import ZscirError
from zscir.generation import Decoding, EditInput, GenerationUnavailable, build_captioner, build_editor
from zscir.generation.edits import edit_pairs
from zscir.generation.openai_client import ChatEndpoint


class Script:
    """What the server answers, request by request; every request is recorded."""

    def __init__(self, answers=None, default="ok", gate: threading.Barrier | None = None):
        self.answers, self.default, self.gate = list(answers or []), default, gate
        self.requests, self.headers = [], []
        self.lock, self.in_flight, self.max_in_flight = threading.Lock(), 0, 0
        self.release = threading.Event()  # a "hang" answer waits for this (set when the test ends)


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(body)
                script.headers.append(dict(self.headers))
                answer = script.answers.pop(0) if script.answers else script.default
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                if script.gate is not None:
                    script.gate.wait(timeout=30)
                self.respond(answer, body)
            finally:
                with script.lock:
                    script.in_flight -= 1

        def respond(self, answer, body):
            if answer == "hang":
                script.release.wait(timeout=30)
                return
            if isinstance(answer, int):
                self.send_response(answer)
                if answer == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(b'{"error": "busy"}')
                return
            if answer == "malformed":
                payload = b"<html>not json</html>"
            else:
                text = answer if answer != "ok" else echo(body)
                payload = json.dumps({"model": "served-" + body["model"],
                                      "choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def echo(body) -> str:
    """A deterministic answer that depends on the request: the last user text, reversed, and the seed."""
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    return f"{text[::-1][:20]}|{body.get('seed', '-')}"


@pytest.fixture
def server():
    servers = []

    def start(script: Script) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append((httpd, script))
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd, script in servers:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()


def client(url, **kw) -> ChatEndpoint:
    return ChatEndpoint(url, "tiny", **{"backoff": 0.0, "retries": 2, "timeout": 10.0, **kw})


MESSAGES = [{"role": "user", "content": "hello"}]


def test_429_then_success_is_retried_and_the_key_comes_from_the_environment(server, monkeypatch):
    script = Script([429, 429])
    url = server(script)
    monkeypatch.setenv("MY_KEY", "secret-123")
    waits = []
    endpoint = ChatEndpoint(url, "tiny", key_env="MY_KEY", retries=2, backoff=0.5, sleep=waits.append)
    assert endpoint.complete(MESSAGES, temperature=0) == "olleh|-"
    assert len(script.requests) == 3 and waits == [0.5, 1.0]  # exponential backoff
    assert script.headers[0]["Authorization"] == "Bearer secret-123"
    assert script.requests[0] == {"model": "tiny", "messages": MESSAGES, "temperature": 0}
    assert endpoint.served_models == {"served-tiny"}


@pytest.mark.parametrize("answer, reason", [(500, "HTTP 500"), ("malformed", "malformed answer"),
                                            ("hang", "no answer within 0.3 s")])
def test_persistent_failures_are_retried_then_one_line(server, answer, reason):
    script = Script(default=answer)
    url = server(script)
    endpoint = client(url, timeout=0.3)
    with pytest.raises(GenerationUnavailable) as e:
        endpoint.complete(MESSAGES)
    message = str(e.value)
    assert "\n" not in message and reason in message and "after 3 attempts" in message and url in message
    assert len(script.requests) == 3


def test_malformed_then_success_and_a_client_error_is_not_retried(server):
    script = Script(["malformed", 503])
    assert client(server(script)).complete(MESSAGES) == "olleh|-" and len(script.requests) == 3
    script = Script(default=404)
    with pytest.raises(GenerationUnavailable, match="HTTP 404") as e:
        client(server(script)).complete(MESSAGES)
    assert len(script.requests) == 1 and "\n" not in str(e.value)


def test_unreachable_endpoint_is_one_line_saying_how_to_supply_it(server):
    script = Script()
    url = server(script)
    port_gone = url.replace(url.split(":")[2].split("/")[0], "9")  # port 9 (discard): nothing listens
    with pytest.raises(GenerationUnavailable) as e:
        client(port_gone).complete(MESSAGES)
    assert "unreachable" in str(e.value) and "openai:MODEL@URL" in str(e.value) and "\n" not in str(e.value)


def test_concurrency_is_bounded_and_used(server):
    script = Script(gate=threading.Barrier(2))  # each request waits for a second one to arrive
    endpoint = client(server(script), concurrency=2)
    answers = endpoint.map([([{"role": "user", "content": f"m{i}"}], {}) for i in range(6)])
    assert answers == [f"{i}m|-" for i in range(6)]  # in input order
    assert script.max_in_flight == 2


def test_editor_over_the_endpoint_greedy_sampled_and_cached(server, tmp_path):
    script = Script()
    url = server(script)
    editor = build_editor(f"openai:tiny@{url}", backoff=0.0)
    assert editor.identity.startswith(f"openai:tiny@{url}|greedy,new<=60|prompt=")
    pairs = [("a", EditInput("a cat", "add a dog")), ("b", EditInput("a red ball", "make it blue"))]
    first = edit_pairs(pairs, editor, tmp_path / "e.jsonl", progress=False)
    assert len(script.requests) == 2 and script.requests[0]["temperature"] == 0
    assert sorted(r["messages"][-1]["content"].splitlines()[0] for r in script.requests) == [
        "Image description: a cat", "Image description: a red ball"]
    again = edit_pairs(pairs, editor, tmp_path / "e.jsonl", progress=False)
    assert len(script.requests) == 2 and dict(again) == dict(first)  # no request on rerun

    sampled = build_editor(f"openai:tiny@{url}", decoding=Decoding("sample", n=3, seed=4), concurrency=3)
    outputs = sampled.edit([p for _, p in pairs])
    seeds = [r["seed"] for r in script.requests[2:]]
    assert len(seeds) == 6 and len(set(seeds)) == 6 and all(len(o) == 3 for o in outputs)
    assert sampled.edit([p for _, p in pairs]) == outputs  # the same seeds again: reproducible
    with_params = build_editor(f"openai:tiny@{url}", params={"repeat_penalty": 1.0})
    with_params.edit([pairs[0][1]])
    assert script.requests[-1]["repeat_penalty"] == 1.0 and with_params.identity.endswith('|params={"repeat_penalty":1.0}')
    with pytest.raises(ZscirError, match="beam search is not available"):
        build_editor(f"openai:tiny@{url}", decoding=Decoding("beam", n=2))
    with pytest.raises(ZscirError, match="expected openai:MODEL@BASE_URL"):
        build_editor("openai:tiny")


def test_captioner_sends_the_image_as_a_data_url_and_caches(server, tmp_path):
    script = Script()
    url = server(script)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (13, 7), (200, 10, 10)).save(folder / "red.png")
    Image.new("RGB", (9, 5), (10, 10, 200)).save(folder / "blue.png")
    captioner = build_captioner(f"openai:tiny@{url}", prompt="What is this?")
    result = caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", progress=False)
    assert result == {"blue.png": "?siht si tahW|-", "red.png": "?siht si tahW|-"}
    sizes = []
    for request in script.requests:
        image_part = request["messages"][0]["content"][1]["image_url"]["url"]
        assert image_part.startswith("data:image/png;base64,")
        sizes.append(Image.open(io.BytesIO(base64.b64decode(image_part.split(",", 1)[1]))).size)
    assert sorted(sizes) == [(9, 5), (13, 7)]
    caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", progress=False)
    assert len(script.requests) == 2


def test_an_endpoint_down_stops_the_caption_run_instead_of_skipping_images(server, tmp_path):
    script = Script(default=503)
    url = server(script)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (5 + i, 5)).save(folder / f"{i}.png")
    captioner = build_captioner(f"openai:tiny@{url}", retries=1, backoff=0.0, concurrency=1)
    with pytest.raises(GenerationUnavailable, match="HTTP 503 after 2 attempts"):
        caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", progress=False)
    assert len(script.requests) == 2  # the first request's attempts, then the run stopped
