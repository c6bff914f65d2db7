"""The training-free methods on generation backends: `zscir eval --captioner --editor` on a tiny shapes world
generates every caption and edit once (model calls counted), a rerun makes no model call and ranks identically,
the filled cache drives a model-free eval, and CVSI's fusion equals a straightforward implementation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _cli import one_line_error, run
from _generation import save_blip2, save_causal_lm
from zscir.benchmarks import load_splits
from zscir.cli import main
from zscir.generation.hf_captioners import Blip2Captioner
from zscir.generation.hf_editors import HFEditor
from zscir.models.prompts import PLACEHOLDER, clean_text
from zscir.models.training_free.templates import ADDED_OBJECTS, STRUCTURAL, instruction_of
from zscir.world.build import WorldConfig, generate_world

ROOT = Path(__file__).resolve().parents[1]
LINCIR = ROOT / "checkpoints" / "shapes_lincir.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfb")
    world = generate_world(tmp / "world", WorldConfig.tiny(seed=0), workers=1, progress=False, log=lambda m: None)
    return tmp, world, save_blip2(tmp / "blip2"), save_causal_lm(tmp / "lm")


@pytest.fixture
def calls(monkeypatch):
    """Inputs each generator's model is asked for, per call."""
    counted = {"caption": [], "edit": []}

    def counting(cls, method, key):
        original = getattr(cls, method)

        def wrapped(self, batch, *rest):
            counted[key].append(len(batch))
            return original(self, batch, *rest)
        monkeypatch.setattr(cls, method, wrapped)

    counting(Blip2Captioner, "caption", "caption")
    counting(HFEditor, "edit", "edit")
    return counted


def eval_shapes(tmp, world, out, *extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as e:
            main(["eval", "shapes", "--root", str(world), "--split", "val", "--out", str(tmp / out), "--cache-dir",
                  str(tmp / "features"), "--no-progress", "--no-oracles", "--device", "cpu", *extra])
    assert e.value.code == 0
    return json.loads((tmp / out / "results.json").read_text())


def rankings(tmp, out) -> dict:
    return {p.name: p.read_text() for p in sorted((tmp / out / "rankings").rglob("*")) if p.is_file()}


def cache_tables(path: Path) -> tuple[dict, dict]:
    """A generation cache file read by hand: captions by image sha256; edits by (prompt name, caption, instruction)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    role = {r["c"]: r for r in rows if "h" not in r}
    captions, edits = {}, {}
    for r in rows:
        if "h" not in r:
            continue
        outputs = r.get("outputs") or [r["caption"]]
        declared = role[r["c"]]
        if "captioner" in declared:
            captions[r["h"]] = outputs
        else:
            edits[(declared["about"]["prompt"]["name"], r["input"]["caption"], r["input"]["instruction"])] = outputs
    return captions, edits


def test_cirevl_generates_once_then_reruns_from_the_cache(setup, calls):
    tmp, world, blip2, lm = setup
    cache = tmp / "gen-cirevl.jsonl"
    args = ["--model", "cirevl", "--captioner", f"blip2:{blip2}", "--editor", f"hf-lm:{lm}", "--max-new-tokens", "8",
            "--generation-cache", str(cache), "--generation-batch-size", "4"]
    first = eval_shapes(tmp, world, "r1", *args)
    split = load_splits("shapes", world, "val")[0]
    references = {split.images[q.reference].read_bytes() for q in split.queries}
    captions, edits = cache_tables(cache)
    # every distinct reference picture captioned once, every distinct (caption, instruction) edited once, in batches
    assert sum(calls["caption"]) == len(references) == len(captions) and max(calls["caption"]) <= 4
    assert sum(calls["edit"]) == len(edits) >= 1 and max(calls["edit"]) <= 4
    assert {name for name, _, _ in edits} == {STRUCTURAL.name}   # the shapes family's style picks the template
    card = first["protocol"]["methods"]["cirevl"]["generations"]
    runs = {r["role"]: r for r in card}
    assert runs["captioner"]["source"] == "model run" and runs["captioner"]["generated_now"] == len(references)
    assert runs["editor"]["template"]["sha256"] == STRUCTURAL.sha256 and runs["editor"]["decoding"]["strategy"] == "greedy"
    assert runs["editor"]["prompt"]["name"] == STRUCTURAL.name and runs["editor"]["answered"]["edits"] == 16

    before = {k: len(v) for k, v in calls.items()}
    second = eval_shapes(tmp, world, "r2", *args)
    assert {k: len(v) for k, v in calls.items()} == before                       # no model call on rerun
    assert rankings(tmp, "r1") == rankings(tmp, "r2")
    assert second["models"][0]["splits"]["shapes/val"]["metrics"] == first["models"][0]["splits"]["shapes/val"]["metrics"]
    again = {r["role"]: r for r in second["protocol"]["methods"]["cirevl"]["generations"]}
    assert again["captioner"]["generated_now"] == 0 and again["captioner"]["from_cache"] == len(references)
    assert again["editor"]["generated_now"] == 0 and again["editor"]["from_cache"] == len(edits)

    # the filled cache, copied anywhere, is a source of its own: no model, the same ranking
    copied = tmp / "copied.jsonl"
    copied.write_bytes(cache.read_bytes())
    third = eval_shapes(tmp, world, "r3", "--model", "cirevl", "--generations", str(copied))
    assert rankings(tmp, "r3") == rankings(tmp, "r1") and {k: len(v) for k, v in calls.items()} == before
    (source,) = third["protocol"]["methods"]["cirevl"]["generations"]
    assert source["source"] == "imported file" and len(source["sha256"]) == 64
    assert {g["role"] for g in source["generators"]} == {"captioner", "editor"}


def test_missing_generation_without_a_backend_is_one_line(setup, capsys, monkeypatch):
    tmp, world, blip2, lm = setup
    from zscir.world import shipped

    monkeypatch.setattr(shipped, "GENERATORS_DIR", tmp / "none")   # no world captioner/editor to fall back on
    base = ["eval", "shapes", "--root", str(world), "--split", "val", "--out", str(tmp / "bad"), "--no-progress",
            "--no-oracles", "--cache-dir", str(tmp / "features"), "--model", "cirevl"]
    code, _, err = run(base, capsys)
    one_line_error(code, err, r"--captioner SPEC --editor SPEC")
    code, _, err = run(base + ["--captioner", f"blip2:{blip2}", "--generation-cache", str(tmp / "gen-bad.jsonl")],
                       capsys)
    one_line_error(code, err, r"no edit for caption .* pass --editor SPEC")
    code, _, err = run(base + ["--n", "3", "--decoding", "sample"], capsys)
    one_line_error(code, err, r"also give --captioner SPEC")


@pytest.mark.skipif(not LINCIR.is_file(), reason="checkpoints/shapes_lincir.safetensors not shipped")
def test_cvsi_equals_a_straightforward_fusion(setup, calls):
    from zscir.models.query import PseudoWordQuery
    from zscir.world import shipped

    tmp, world, blip2, lm = setup
    cache = tmp / "gen-cvsi.jsonl"
    res = eval_shapes(tmp, world, "cvsi", "--model", f"cvsi:{LINCIR}", "--captioner", f"blip2:{blip2}",
                      "--editor", f"hf-lm:{lm}", "--max-new-tokens", "8", "--generation-cache", str(cache))
    split = load_splits("shapes", world, "val")[0]
    gallery_pictures = {split.images[g].read_bytes() for g in split.gallery}
    assert sum(calls["caption"]) == len(gallery_pictures | {split.images[q.reference].read_bytes()
                                                           for q in split.queries})
    captions, edits = cache_tables(cache)

    bb = shipped.shapes_backbone()
    mapping = PseudoWordQuery.from_checkpoint(str(LINCIR), bb)

    def image_features(ids):
        with torch.no_grad():
            batch = torch.stack([bb.preprocess(Image.open(split.images[i]).convert("RGB")) for i in ids])
            return bb.encode_image(batch).pooled.half().float()   # the feature store keeps fp16 image features

    def text(texts):
        with torch.no_grad():
            return F.normalize(bb.encode_text(texts).float(), dim=-1)

    def caps_of(image_id):
        return captions[__import__("hashlib").sha256(split.images[image_id].read_bytes()).hexdigest()]

    image = F.normalize(image_features(split.gallery), dim=-1)
    caption_col = torch.stack([F.normalize(text(caps_of(g)).mean(dim=0), dim=-1) for g in split.gallery])
    refs = image_features([q.reference for q in split.queries])
    rows = []
    for q, ref in zip(split.queries, refs):
        joined, instruction = ", ".join(caps_of(q.reference)), instruction_of(q.captions)
        edited = STRUCTURAL.parse(edits[(STRUCTURAL.name, joined, instruction)][0], instruction)
        added = ADDED_OBJECTS.parse(edits[(ADDED_OBJECTS.name, joined, instruction)][0], "")
        prompt = f"a photo of {PLACEHOLDER} that {clean_text(instruction)}. And the photo should have {clean_text(added)}."
        with torch.no_grad():
            subject = mapping.network(ref[None], None).subject
            pseudo = F.normalize(bb.encode_prompts([prompt], subject).float(), dim=-1)[0]
        query = 0.6 * text([edited])[0] + 0.4 * pseudo + 0.0 * F.normalize(ref, dim=-1)
        rows.append(query @ (0.8 * image + 0.2 * caption_col).T)
    scores = torch.stack(rows).numpy()
    ranked = json.loads((tmp / "cvsi" / "results.json").read_text())
    assert ranked["protocol"]["methods"]["cvsi"]["rule"]["terms"][0] == {"vector": "edited", "column": "image",
                                                                          "weight": pytest.approx(0.48)}
    got = ranking_rows(tmp / "cvsi", split)
    for n, q in enumerate(split.queries):
        order = [split.gallery.index(g) for g in got[q.qid]]
        s = scores[n, order]
        assert np.all(np.diff(s) <= 1e-5), q.qid                 # eval's ranking is sorted by the test's scores
        assert s[0] == pytest.approx(scores[n].max(), abs=1e-5)  # and starts at the test's best
    assert res["models"][0]["splits"]["shapes/val"]["metrics"]


def ranking_rows(run_dir: Path, split) -> dict[str, list[str]]:
    """qid -> ranked gallery ids, from the run's rankings file (submission format: JSON qid -> ids)."""
    (path,) = [p for p in (run_dir / "rankings").rglob("*.json")]
    return {str(k): [str(x) for x in v] for k, v in json.loads(path.read_text()).items()}
