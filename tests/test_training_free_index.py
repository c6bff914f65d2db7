"""Language-model methods over an index: `zscir index --captioner` stores a caption column (resumable, checksummed),
and `zscir retrieve` (and the server) rank with cvsi and seize exactly as `zscir eval`'s scorer does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from zscir import resolve
from zscir.benchmarks import get_benchmark, load_splits
from zscir.cli import main
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.run import EvalRequest, evaluate_split
from zscir.evaluation.submission import read_rankings
from zscir.generation import registry
from zscir.importers.released_generations import read_released
from zscir.index.caption_column import column_row
from zscir.index.gallery import GalleryIndex, verify_index
from zscir.models.training_free.generations import Stacked, TableGenerations
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

from test_eval import TINY, make_world, tiny_weights  # noqa: F401  (tiny_weights: the module's fixture)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
N = 3
WORDS = ["red", "blue", "green", "round", "square", "small", "large", "striped"]

BACKENDS = '''
from zscir.generation.base import Captioner, Editor
from zscir.utils.testpoint import testpoint


class FakeEditor(Editor):
    """Deterministic edits: the caption with the instruction appended; CVSI's second question: the last word."""

    name = "fake-editor"

    def __init__(self, template=None):
        self.template = template
        self.identity = f"fake-editor|{template.tag()}"

    def edit(self, pairs):
        if "Objects most likely added" in self.template.text:
            return [f"Objects most likely added: a {p.instruction.split()[-1]} thing" for p in pairs]
        return [f"Edited Description: {p.caption}, {p.instruction}" for p in pairs]


class FakeCaptioner(Captioner):
    """Cacheable; logs every image it captions (one id a line)."""

    name, identity, needs_images, cacheable = "fake-captioner", "fake-captioner-v1", True, True

    def __init__(self, log):
        self.log = log

    def caption(self, items, images):
        with open(self.log, "a") as f:
            f.write("".join(it.id + "\\n" for it in items))
        return [f"a thing {it.id[:4]} of width {im.size[0]} mean {sum(im.resize((1, 1)).getpixel((0, 0)))}"
                for it, im in zip(items, images)]
'''


def caption_of(gid: int) -> str:
    return f"a {WORDS[gid % 8]} {WORDS[(gid // 8) % 8]} thing with {WORDS[(gid // 64) % 8]} parts"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_weights):
    from zscir.backbone import load_backbone
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint

    tmp = tmp_path_factory.mktemp("tfindex")
    (tmp / "fake_backends.py").write_text(BACKENDS)
    root = make_world(tmp / "world", n_gallery=30, n_queries=8)
    split = load_splits("circo", root, "val")[0]
    folder = root / "COCO2017_unlabeled" / "unlabeled2017"
    name = {g: Path(split.images[g]).name for g in split.gallery}
    # gallery captions, as the file captioner reads them (by index id) and as eval's generations hold them
    (tmp / "caps.jsonl").write_text("".join(json.dumps({"id": name[g], "caption": caption_of(int(g))}) + "\n"
                                            for g in split.gallery))
    # an LDRE/SEIZE-format file, once keyed by the benchmark's ids (eval) and once by the index's ids (retrieve)
    for key, out in ((str, "released_eval.json"), (lambda g: name[g], "released_index.json")):
        recs = [{"reference_img_id": key(q.reference), "relative_caption": q.captions[0], "id": int(q.qid),
                 "multi_caption_opt": [f"{caption_of(int(q.reference))} view {k}" for k in range(N)],
                 "multi_gpt-3.5_opt": [f"{WORDS[(int(q.reference) + k) % 8]} thing, {q.captions[0]}" for k in range(N)]}
                for q in split.queries]
        (tmp / out).write_text(json.dumps(recs))
    torch.manual_seed(0)
    bb = load_backbone(TINY, tiny_weights, preprocess="targetpad")
    cfg = get_mapping_config("lincir-tiny")
    mapping = save_mapping_checkpoint(tmp / "lincir", create_mapping_network(cfg, backbone_dims(bb)), cfg, bb)
    index = tmp / "index"
    cli(["index", "--images", str(folder), "--out", str(index), "--clip", TINY, "--pretrained", tiny_weights,
         "--captioner", f"file:{tmp / 'caps.jsonl'}", "--no-progress"])
    queries = tmp / "queries.jsonl"
    queries.write_text("".join(json.dumps({"ref": str(split.images[q.reference]), "text": q.captions[0]}) + "\n"
                               for q in split.queries))
    return {"tmp": tmp, "root": root, "split": split, "weights": tiny_weights, "mapping": str(mapping),
            "index": index, "queries": queries, "backbone": bb, "folder": folder}


@pytest.fixture
def fake_editor(env, monkeypatch):
    monkeypatch.syspath_prepend(str(env["tmp"]))
    monkeypatch.setitem(registry.EDITORS, "fake", registry.Entry("fake_backends:FakeEditor", None))
    monkeypatch.setenv("ZSCIR_CACHE", str(env["tmp"] / "zscir-cache"))


def cli(args, capsys=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as e:
            main(args)
    assert e.value.code == 0
    return json.loads(capsys.readouterr().out) if capsys is not None else None


def eval_ranking(env, model: str, generations, name: str) -> list[list[str]]:
    """`zscir eval`'s scorer (evaluate_split) on the split: each query's ranking as gallery ids."""
    from zscir import resolve

    split, tmp = env["split"], env["tmp"]
    protocol = Protocol(remove_reference=True).resolved(get_benchmark("circo"))
    req = EvalRequest("circo", root=env["root"], clip=TINY, pretrained=env["weights"], progress=False)
    qe = resolve.eval_query_encoder(model, env["backbone"], protocol.preprocess)
    out = tmp / f"eval-{name}"
    evaluate_split(qe, split, protocol, req, tmp / "eval-cache", out, out / "rankings", generations)
    ranked, _ = read_rankings(split, out / "rankings")
    return [[split.gallery[i] for i in row if i >= 0] for row in ranked]


def retrieve_ranking(env, capsys, model: str, *options) -> list[list[str]]:
    data = cli(["retrieve", "--index", str(env["index"]), "--model", model, "--queries", str(env["queries"]),
                "-k", "29", "--json", *options], capsys)
    assert data["skipped"] == []
    # index ids are the files' names; the benchmark's ids are their numbers
    return [[str(int(Path(h["id"]).stem)) for h in q["results"]] for q in data["queries"]]


def test_caption_column_is_recorded_checksummed_and_cvsis_rule(env):
    index = GalleryIndex.open(env["index"])
    files, meta = index.meta["files"], index.meta
    assert meta["columns"]["caption"]["captioner"].startswith("file:sha256:")
    assert {"captions", "caption_vectors"} <= set(files) and {"captions", "caption_vectors"} <= set(meta["sha256"])
    rows = json.loads((env["index"] / files["captions"]).read_text())["captions"]
    vectors = np.load(env["index"] / files["caption_vectors"])
    bb = env["backbone"]
    for row, (image_id, caps) in enumerate(zip(index.ids, rows)):
        assert caps == [caption_of(int(Path(image_id).stem))]
        with torch.no_grad():
            want = column_row(bb.encode_text(caps).float().numpy())
        np.testing.assert_allclose(vectors[row], want, atol=1e-5)
    assert verify_index(env["index"])["ok"]
    # a damaged caption file is one line on open, naming it
    path = env["index"] / files["captions"]
    good = path.read_bytes()
    try:
        path.write_bytes(good.replace(b"thing", b"thong", 1))
        with pytest.raises(Exception, match="captions.g"):
            GalleryIndex.open(env["index"])
    finally:
        path.write_bytes(good)


def test_seize_through_index_and_retrieve_equals_eval(env, capsys):
    expected = eval_ranking(env, f"seize:n={N}", read_released(str(env["tmp"] / "released_eval.json")), "seize")
    got = retrieve_ranking(env, capsys, f"seize:n={N}", "--generations", str(env["tmp"] / "released_index.json"))
    assert got == expected


def test_cvsi_through_index_and_retrieve_equals_eval(env, capsys, fake_editor):
    split = env["split"]
    gallery = TableGenerations({g: [caption_of(int(g))] for g in split.gallery})
    model = f"cvsi:{env['mapping']}"
    expected = eval_ranking(env, model, resolve.GenerationSources(gallery, editor="fake").build(), "cvsi")
    got = retrieve_ranking(env, capsys, model, "--captioner", f"file:{env['tmp'] / 'caps.jsonl'}",
                           "--editor", "fake")
    assert got == expected
    # the edits were made once, by the editor, into the one generation cache; a rerun reads them back
    edits = list((env["tmp"] / "zscir-cache" / "edits").glob("*.jsonl"))
    assert len(edits) == 2   # one editor identity per task (the edit template, CVSI's "objects likely added")


def test_cvsi_without_a_caption_column_or_generations_is_one_line(env, tmp_path, capsys):
    plain = tmp_path / "plain"
    cli(["index", "--images", str(env["folder"]), "--out", str(plain), "--clip", TINY, "--pretrained",
         env["weights"], "--no-progress"])
    with pytest.raises(SystemExit) as e:
        main(["retrieve", "--index", str(plain), "--model", f"cvsi:{env['mapping']}", "--queries",
              str(env["queries"])])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "no 'caption' column" in err and "--captioner" in err
    with pytest.raises(SystemExit) as e:
        main(["retrieve", "--index", str(env["index"]), "--model", f"seize:n={N}", "--queries", str(env["queries"])])
    assert e.value.code != 0 and "--generations" in capsys.readouterr().err


def test_serve_app_answers_as_retrieve(env, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from zscir import resolve
    from zscir.serve.app import create_app

    expected = retrieve_ranking(env, capsys, f"seize:n={N}", "--generations", str(env["tmp"] / "released_index.json"))
    sources = resolve.GenerationSources(Stacked([read_released(str(env["tmp"] / "released_index.json"))]))
    [(_, retriever)] = resolve.open_retrievers(env["index"], [f"seize:n={N}"], generations=sources)
    app = create_app(retrievers={"seize": retriever})
    client = TestClient(app)
    split = env["split"]
    for q, want in zip(split.queries, expected):
        r = client.post("/search", json={"image_id": Path(split.images[q.reference]).name, "text": q.captions[0],
                                         "k": 29})
        assert r.status_code == 200, r.text
        assert [str(int(Path(h["id"]).stem)) for h in r.json()["results"]] == want
    # the server's next index generation gets the same model with its generations (zscir.serve.live_index)
    again = retriever.over(GalleryIndex.open(env["index"]))
    assert again.generations is retriever.generations
    q = split.queries[0]
    (result,) = again.search_many([(split.images[q.reference], q.captions[0])], 29)
    assert [str(int(Path(h.id).stem)) for h in result.hits] == expected[0]


RUN = '''
import sys
sys.path.insert(0, {tmp!r})
from fake_backends import FakeCaptioner
import zscir.index.caption_column as cc
from zscir.backbone import load_backbone
from zscir.index.gallery import build_index

cc.TEXT_BATCH = 4
bb = load_backbone({tiny!r}, {weights!r}, preprocess="targetpad")
build_index({out!r}, bb, images={images!r}, progress=False, captioner=FakeCaptioner({log!r}), caption_cache={cache!r},
            caption_batch_size=4)
'''


@pytest.mark.multiprocess
@pytest.mark.parametrize("point, hit", [("caption_cache.write", 3), ("index.caption_features", 2)])
def test_a_kill_loses_no_finished_caption_or_text_feature(env, tmp_path, point, hit):
    log, cache, out = tmp_path / "calls.log", tmp_path / "captions.jsonl", tmp_path / "index"
    script = RUN.format(tmp=str(env["tmp"]), tiny=TINY, weights=env["weights"], out=str(out), images=str(env["folder"]),
                        log=str(log), cache=str(cache))
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **pause_env(marker, {point: hit})},
                            preexec_fn=interruptible)
    try:
        assert wait_paused(proc, marker) == point
    finally:
        proc.kill()
        proc.wait()
    first = log.read_text().split()
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    done = {r["id"] for r in cached if "h" in r}
    shards = list((out / "caption-features").glob("*.npz")) if (out / "caption-features").is_dir() else []
    if point == "caption_cache.write":   # the declaration, batch 1 durable; batch 2 was being written
        assert len(done) == 4 and len(first) == 8 and not shards
    else:                                 # every caption durable, two text-feature shards of 4 texts
        assert len(done) == 30 and len(shards) == 2

    sys.path.insert(0, str(env["tmp"]))
    try:
        from fake_backends import FakeCaptioner
    finally:
        sys.path.remove(str(env["tmp"]))
    import zscir.index.caption_column as cc
    from zscir.index.gallery import build_index

    summary = build_index(out, env["backbone"], images=env["folder"], progress=False,
                          captioner=FakeCaptioner(str(log)), caption_cache=str(cache), caption_batch_size=4)
    calls = Counter(log.read_text().split())
    assert set(calls) == {p.name for p in env["folder"].iterdir()}
    assert all(calls[i] == 1 for i in done)                      # nothing finished was captioned again
    assert summary["captions"]["captioned_now"] == 30 - len(done)
    encoded_before = 4 * len(shards)
    assert summary["captions"]["texts_encoded_now"] == len(set(cc.TextFeatures(out / cc.FEATURES_DIR).rows)) - encoded_before
    # the column equals a clean build's
    clean = tmp_path / "clean"
    build_index(clean, env["backbone"], images=env["folder"], progress=False,
                captioner=FakeCaptioner(str(tmp_path / "clean.log")), caption_cache=str(tmp_path / "clean.jsonl"))
    a, b = GalleryIndex.open(out), GalleryIndex.open(clean)
    np.testing.assert_allclose(np.load(out / a.meta["files"]["caption_vectors"]),
                               np.load(clean / b.meta["files"]["caption_vectors"]), atol=1e-6)
    # a rerun captions and encodes nothing
    again = build_index(out, env["backbone"], images=env["folder"], progress=False,
                        captioner=FakeCaptioner(str(log)), caption_cache=str(cache))
    assert again["captions"]["captioned_now"] == 0 and again["captions"]["texts_encoded_now"] == 0
    assert not again["rebuilt"]
