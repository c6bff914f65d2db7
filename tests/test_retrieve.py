"""Retriever and `zscir retrieve`: brute-force agreement, batch queries, HTML, bad input, defaults."""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from zscir.cli import cli, main
from zscir.errors import ZscirError
from _images import draw_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tiny backbones saved as files (A, B), an FTI checkpoint for each, and an index of 18 images built with A."""
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone
    from zscir.index.gallery import build_index
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint

    root = tmp_path_factory.mktemp("retrieve")
    out = {"root": root}
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        model = load_backbone("zscir-tiny-test", None).model
        weights = root / f"clip_{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        bb = load_backbone("zscir-tiny-test", str(weights))
        cfg = get_mapping_config("fti4cir-tiny")
        torch.manual_seed(seed)
        net = create_mapping_network(cfg, backbone_dims(bb))
        out[f"fti_{name}"] = str(save_mapping_checkpoint(root / f"fti_{name}", net, cfg, bb))
        out[f"bb_{name}"] = bb
    images = root / "gallery"
    images.mkdir()
    out["paths"] = [draw_image(images / f"g{i:02d}.png", i) for i in range(18)]
    out["index"] = root / "index"
    build_index(out["index"], out["bb_A"], images=images, progress=False)
    out["outside_ref"] = draw_image(root / "outside.png", 99)
    return out


def brute_force(bb, encoder, gallery_paths, ref_path, text, k, exclude_ref=True):
    """Every gallery image encoded alone in fp32, cosine to the encoded query, sorted: the reference ranking."""
    gallery = torch.stack([bb.encode_image(bb.preprocess(Image.open(p).convert("RGB")).unsqueeze(0)).pooled[0]
                           for p in gallery_paths])
    ref = bb.encode_image(bb.preprocess(Image.open(ref_path).convert("RGB")).unsqueeze(0),
                          with_tokens=encoder.needs_tokens)
    q = encoder.encode_queries(ref, [text])[0]
    scores = (F.normalize(gallery, dim=-1) @ q).numpy()
    ranked = [(float(scores[i]), str(gallery_paths[i].absolute())) for i in np.argsort(-scores, kind="stable")
              if not (exclude_ref and os.path.realpath(gallery_paths[i]) == os.path.realpath(ref_path))]
    return ranked[:k]


def assert_same_ranking(hits, expected, tol=3e-3):
    assert [h.rank for h in hits] == list(range(1, len(expected) + 1))
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], atol=tol)
    exp_scores = [s for s, _ in expected]
    for n, (h, (s, p)) in enumerate(zip(hits, expected)):
        gaps = [abs(s - o) for m, o in enumerate(exp_scores) if m != n]
        if min(gaps, default=1) > 2 * tol:  # a clear winner at this rank must be the same image
            assert h.path == p, (n, h, p)


@pytest.mark.parametrize("model", ["fti_A", "sum", "text"])
def test_search_matches_brute_force(env, model):
    from zscir.resolve import load_retriever

    spec = env[model] if model.startswith("fti") else model
    r = load_retriever(env["index"], spec, backbone=None if model.startswith("fti") else env["bb_A"])
    assert r.encoder.needs_tokens == model.startswith("fti")
    for ref in (env["paths"][4], env["outside_ref"]):
        hits = r.search(ref, "make the square blue", k=6)
        assert_same_ranking(hits, brute_force(r.backbone, r.encoder, env["paths"], ref, "make the square blue", 6))
        assert all(h.path != str(Path(ref).absolute()) for h in hits)


def test_reference_excluded_unless_kept_and_baseline_uses_index_backbone(env):
    from zscir.resolve import load_retriever

    r = load_retriever(env["index"], "image")  # no backbone given: the one recorded in the index (file A)
    assert r.backbone.identity == env["bb_A"].identity
    ref = env["paths"][7]
    kept = r.search(ref, "anything", k=3, exclude_reference=False)
    assert kept[0].id == "g07.png" and kept[0].score > 0.998
    dropped = r.search(ref, "anything", k=3)
    assert "g07.png" not in [h.id for h in dropped] and dropped[0].id == kept[1].id
    # batches of 2 over 3 queries answer as the queries alone do
    queries = [(env["paths"][i], "anything") for i in (1, 2, 3)]
    batched = r.search_many(queries, k=4, batch_size=2)
    for (image, text), res in zip(queries, batched):
        alone = r.search(image, text, k=4)
        assert [h.id for h in res.hits] == [h.id for h in alone] and res.ref == str(image)


def test_cli_json_queries_and_html(env, tmp_path):
    runner = CliRunner()
    ref, text = str(env["paths"][2]), "add a yellow circle"
    res = runner.invoke(cli, ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"], "--ref", ref,
                              "--text", text, "-k", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    from zscir.models.query import load_query_encoder

    enc = load_query_encoder(env["fti_A"])
    expected = brute_force(enc.backbone, enc, env["paths"], ref, text, 4)
    got = data["queries"][0]["results"]
    np.testing.assert_allclose([g["score"] for g in got], [s for s, _ in expected], atol=3e-3)
    assert data["model"]["method"] == "fti" and data["index_kind"] == "flat" and data["k"] == 4

    # a batch: two good rows, a missing image and an empty text (skipped and reported), relative paths
    qfile = tmp_path / "q.jsonl"
    shutil.copy(env["paths"][5], tmp_path / "ref5.png")
    rows = [{"ref": "ref5.png", "text": text}, {"ref": "missing.png", "text": "x"},
            {"ref": ref, "text": "  "}, {"ref": str(env["outside_ref"]), "text": "make it green"}]
    qfile.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    page = tmp_path / "page.html"
    res = runner.invoke(cli, ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"], "--queries",
                              str(qfile), "-k", "3", "--json", "--html", str(page)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [s["line"] for s in data["skipped"]] == [2, 3] and len(data["queries"]) == 2
    single = runner.invoke(cli, ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"],
                                 "--ref", str(env["outside_ref"]), "--text", "make it green", "-k", "3", "--json"])
    alone, batched = json.loads(single.stdout)["queries"][0]["results"], data["queries"][1]["results"]
    assert [h["id"] for h in alone] == [h["id"] for h in batched]
    np.testing.assert_allclose([h["score"] for h in alone], [h["score"] for h in batched], atol=1e-5)

    html = page.read_text()
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    assert len(uris) == 2 * (1 + 3) and "http" not in html.replace("http-equiv", "")
    first_hit = Image.open(io.BytesIO(base64.b64decode(uris[1])))  # query 1's rank-1 thumbnail
    hit_path = data["queries"][0]["results"][0]["path"]
    want = np.asarray(Image.open(hit_path).convert("RGB"), dtype=float).mean(axis=(0, 1))
    assert np.abs(np.asarray(first_hit, dtype=float).mean(axis=(0, 1)) - want).max() < 12
    assert "add a yellow circle" in html and "make it green" in html

    table = runner.invoke(cli, ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"], "--ref", ref,
                                "--text", text, "-k", "2"])
    assert table.exit_code == 0 and re.search(r"^\s+1\s+[-0-9.]+\s+\S+g\d\d\.png$", table.stdout, re.M)


def test_the_text_table_names_the_model_that_ranked(env):
    """Issue 27: without --model, on a backbone that ships no checkpoint, the sum baseline ranks: the table says so."""
    runner = CliRunner()
    args = ["retrieve", "--index", str(env["index"]), "--ref", str(env["paths"][0]), "--text", "make it red", "-k", "2"]
    for extra, name in (([], "sum"), (["--model", env["fti_A"]], "fti")):
        res = runner.invoke(cli, args + extra)
        assert res.exit_code == 0, res.output
        assert res.stdout.splitlines()[0].startswith(f"model {name}, index "), res.stdout


def _main(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, err


def test_bad_input_is_one_line_error(env, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    base = ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"]]
    cases = [
        (base + ["--ref", str(tmp_path / "nope.png"), "--text", "x"], r"reference image .*nope\.png' does not exist"),
        (base + ["--ref", str(corrupt), "--text", "x"], r"corrupt\.png' is not a readable image"),
        (base + ["--ref", str(env["paths"][0]), "--text", "   "], r"modification text .* is empty"),
        (["retrieve", "--index", str(tmp_path / "no_index"), "--ref", str(env["paths"][0]), "--text", "x"],
         r"no zscir index at .*no_index"),
        (base[:3] + ["--model", env["fti_B"], "--ref", str(env["paths"][0]), "--text", "x"],
         r"was built with zscir-tiny-test@sha256:\w+ .* but the query model \(fti\) uses zscir-tiny-test@sha256"),
        (base + ["--ref", str(env["paths"][0])], r"missing query"),
    ]
    runner = CliRunner()
    for args, pattern in cases:
        code, err = _main(args, capsys)
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert re.search(pattern, err), (pattern, err)
        res = runner.invoke(cli, args)  # the click command itself raises ZscirError for main() to print
        assert res.exit_code != 0 and isinstance(res.exception, ZscirError) and re.search(pattern, str(res.exception))


def test_bad_input_through_the_installed_command(env, tmp_path):
    # one process start costs seconds: the realistic case (an index from another backbone than the model)
    cases = [
        (["retrieve", "--index", str(env["index"]), "--model", env["fti_B"], "--ref", str(env["paths"][0]),
          "--text", "make it red"], "was built with"),
    ]
    exe = shutil.which("zscir") or None
    for args, needle in cases:
        cmd = [exe, *args] if exe else [sys.executable, "-c", "from zscir.cli import main; main()", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1 and proc.stdout == "", proc
        assert proc.stderr.startswith("error: ") and needle in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr


def count_checkpoint_reads(monkeypatch, checkpoint) -> collections.Counter:
    """Reads of ``checkpoint``'s sidecar (any read of the .json file) and loads of its weights, counted from now on."""
    import zscir.checkpoint

    weights = Path(checkpoint).with_suffix(".safetensors").resolve()
    sidecar = weights.with_suffix(".json")
    reads = collections.Counter()
    real = {"read_bytes": Path.read_bytes, "read_text": Path.read_text}
    for name, fn in real.items():
        def counted(self, *a, _fn=fn, **kw):
            if Path(self).resolve() == sidecar:
                reads["sidecar"] += 1
            return _fn(self, *a, **kw)

        monkeypatch.setattr(Path, name, counted)
    real_weights = zscir.checkpoint.read_safetensors

    def read_weights(path, *a, **kw):
        if Path(path).resolve() == weights:
            reads["weights"] += 1
        return real_weights(path, *a, **kw)

    monkeypatch.setattr(zscir.checkpoint, "read_safetensors", read_weights)
    return reads


def test_a_checkpoint_is_read_once_per_command(env, tmp_path, monkeypatch):
    """`zscir retrieve --index I --model CKPT` and `zscir index --model CKPT`: one read of the sidecar, one of the weights."""
    runner = CliRunner()
    reads = count_checkpoint_reads(monkeypatch, env["fti_A"])
    res = runner.invoke(cli, ["retrieve", "--index", str(env["index"]), "--model", env["fti_A"],
                              "--ref", str(env["paths"][2]), "--text", "add a yellow circle", "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert reads == {"sidecar": 1, "weights": 1}
    reads.clear()
    res = runner.invoke(cli, ["index", "--images", str(env["paths"][0].parent), "--out", str(tmp_path / "idx"),
                              "--model", env["fti_A"], "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert reads == {"sidecar": 1, "weights": 1}


def test_default_gallery_is_the_world_indexed_on_first_use(env, tmp_path, monkeypatch):
    """No --index: the (default) world's gallery is indexed into the cache dir on first use, then reused."""
    import zscir.world.build as world_build
    from zscir.resolve import open_retriever
    from zscir.world.build import GALLERY_DIR, WorldConfig, generate_world

    world = generate_world(tmp_path / "world", WorldConfig.tiny(), workers=1, progress=False, log=lambda m: None)
    monkeypatch.setattr(world_build, "default_world", lambda **kw: world)
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    r = open_retriever(None, env["fti_A"], None, None, None, "cpu", progress=False)
    assert Path(r.index.root).parent == tmp_path / "cache" / "indexes"
    gallery = sorted((world / GALLERY_DIR).glob("*.png"))
    assert len(r.index) == len(gallery)
    record = json.loads((world / "annotations" / "val.json").read_text())[0]
    ref = world / GALLERY_DIR / f"{record['reference_img_id']:012d}.png"
    if not ref.is_file():
        ref = next(p for p in gallery if p.stem.lstrip("0") == str(record["reference_img_id"]))
    hits = r.search(ref, record["relative_caption"], k=5)
    expected = brute_force(r.backbone, r.encoder, gallery, ref, record["relative_caption"], 5)
    assert_same_ranking(hits, expected)
    again = open_retriever(None, env["fti_A"], None, None, None, "cpu", progress=False)
    assert again.index.meta["generation"] == r.index.meta["generation"]  # reused, not rebuilt
    # `zscir retrieve --model CKPT` without --index: the same answer, the checkpoint read once
    reads = count_checkpoint_reads(monkeypatch, env["fti_A"])
    res = CliRunner().invoke(cli, ["retrieve", "--model", env["fti_A"], "--ref", str(ref), "--text",
                                   record["relative_caption"], "-k", "5", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert reads == {"sidecar": 1, "weights": 1}
    assert [h["id"] for h in json.loads(res.stdout)["queries"][0]["results"]] == [h.id for h in hits]


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="headless Chromium not installed (/usr/bin/chromium)")
def test_html_page_renders_in_headless_chromium(tmp_path):
    from zscir.index.html import write_html
    from zscir.index.retriever import Hit, QueryResult

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    files = {}
    for name, rgb in colours.items():
        files[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (64, 48), rgb).save(files[name])
    result = QueryResult(str(files["red"]), "make it green or blue", [
        Hit(1, 0.9, "green.png", str(files["green"])), Hit(2, 0.8, "blue.png", str(files["blue"]))])
    page = tmp_path / "page.html"
    write_html(page, [result])
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           "--hide-scrollbars", "--window-size=900,700", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=600)
    assert shot.is_file(), proc.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def where(rgb):
        mask = (np.abs(px - np.array(rgb)).sum(axis=-1) < 40)
        return mask.sum(), np.argwhere(mask)

    n_red, red = where(colours["red"])
    n_green, green = where(colours["green"])
    n_blue, blue = where(colours["blue"])
    assert min(n_red, n_green, n_blue) > 5000, (n_red, n_green, n_blue)  # each thumbnail is drawn (192 px wide)
    assert red[:, 0].mean() < green[:, 0].mean()  # the reference above the results
    assert green[:, 1].mean() < blue[:, 1].mean()  # rank 1 left of rank 2


def test_index_remembers_the_model_it_was_built_for(env, tmp_path):
    from zscir.index import build_index
    from zscir.resolve import load_retriever

    out = tmp_path / "idx"
    build_index(out, env["bb_A"], images=env["paths"][0].parent, progress=False, model=env["fti_A"])
    r = load_retriever(out)
    assert r.encoder.name == "fti" and r.encoder.identity["checkpoint_sha256"] == \
        json.loads(Path(env["fti_A"]).with_suffix(".json").read_text())["weights_sha256"]
    res = CliRunner().invoke(cli, ["index", "--images", str(tmp_path), "--out", str(out), "--model", "sum"])
    assert isinstance(res.exception, ZscirError) and "--clip" in str(res.exception)
