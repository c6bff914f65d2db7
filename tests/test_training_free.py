"""Training-free language-model methods: released LDRE/SEIZE files drive `zscir eval` with no model run, and the
scoring rules (SEIZE, LDRE's adaptive ensemble) equal brute-force implementations of their official code."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir.benchmarks import load_splits
from zscir.cli import main
from zscir.errors import ZscirError
from zscir.importers.released_generations import read_released
from zscir.models.composed import COSINE, ImageRef
from zscir.models.training_free.rules import AdaptiveEnsemble, SeizeRule
from zscir.models.training_free.templates import EDIT_TEMPLATES, instruction_of

from test_eval import TINY, make_world, tiny_weights  # noqa: F401  (tiny_weights: the module's fixture)

N = 3


def ldre_file(path, split):
    """An LDRE/SEIZE-format annotation file (the real key names) for every query of ``split``."""
    recs = []
    for q in split.queries:
        caps = [f"a photo {k} of thing {q.reference}" for k in range(N)]
        caps[2] = caps[0]  # sampled captions repeat: each occurrence keeps its own edit
        recs.append({"reference_img_id": int(q.reference), "relative_caption": q.captions[0], "id": int(q.qid),
                     "shared_concept": "a thing", "blip2_caption": caps[0], "gpt-3.5-turbo": f"{caps[0]}, edited",
                     "multi_caption_opt": caps,
                     "multi_gpt-3.5_opt": [f"thing {q.reference} {q.captions[0]} variant {k}" for k in range(N)]})
    path.write_text(json.dumps(recs))
    return recs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tf")
    root = make_world(tmp / "world", n_gallery=30, n_queries=8)
    split = load_splits("circo", root, "val")[0]
    recs = ldre_file(tmp / "ldre_test.json", split)
    return tmp, root, split, recs


def eval_cli(tmp, root, weights, model, out, *extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as e:
            main(["eval", "circo", "--root", str(root), "--clip", TINY, "--pretrained", weights, "--model", model,
                  "--generations", str(tmp / "ldre_test.json"), "--out", str(tmp / out), "--cache-dir",
                  str(tmp / "cache"), "--no-progress", "--no-oracles", *extra])
    assert e.value.code == 0
    return json.loads((tmp / out / "results.json").read_text())


def brute_force_rankings(root, weights, split, query_texts_fn):
    """Encode each query's texts, mean, normalise, cosine with the normalised gallery features (images encoded here),
    stable top-50."""
    from zscir.backbone import load_backbone

    bb = load_backbone(TINY, weights, preprocess="targetpad")
    with torch.no_grad():
        gallery = bb.encode_image(torch.stack([bb.preprocess(__import__("PIL.Image").Image.open(split.images[g])
                                                             .convert("RGB")) for g in split.gallery])).pooled
    g = F.normalize(gallery.half().float(), dim=-1)   # the feature store keeps fp16 gallery features
    out = {}
    for q in split.queries:
        feats = bb.encode_text(query_texts_fn(q)).float()
        query = F.normalize(feats.mean(dim=0), dim=-1)
        scores = (query @ g.T).numpy()
        order = np.argsort(-scores, kind="stable")[:50]
        out[q.qid] = [split.gallery[i] for i in order]
    return out, g


def test_imported_ldre_file_drives_eval_with_no_model_run(world, tiny_weights):
    tmp, root, split, recs = world
    res = eval_cli(tmp, root, tiny_weights, "ldre:n=3,ensemble=mean", "ldre_mean")
    model = res["models"][0]
    card = res["protocol"]["methods"][model["name"]]
    (source,) = card["generations"]
    assert source["source"] == "imported file" and source["captions_key"] == "multi_caption_opt"
    assert source["edits_key"] == "multi_gpt-3.5_opt" and "gpt-3.5-turbo" in source["editor"]
    assert source["sha256"] == hashlib.sha256((tmp / "ldre_test.json").read_bytes()).hexdigest()
    assert card["n"] == 3 and card["backbone"]["model"] == TINY and len(card["prompt"]["sha256"]) == 64
    edits = {str(r["id"]): r["multi_gpt-3.5_opt"] for r in recs}
    expected, _ = brute_force_rankings(root, tiny_weights, split, lambda q: edits[q.qid])
    ranked = json.loads((tmp / "ldre_mean" / "rankings" / model["name"] / "circo_val.json").read_text())
    assert {k: [str(i) for i in v] for k, v in ranked.items()} == expected


def test_cirevl_and_seize_and_adaptive_run_from_the_file(world, tiny_weights):
    tmp, root, split, recs = world
    res = eval_cli(tmp, root, tiny_weights, "cirevl", "cirevl")
    name = res["models"][0]["name"]
    ranked = json.loads((tmp / "cirevl" / "rankings" / name / "circo_val.json").read_text())
    # cirevl reads the multi_caption pair (the file's default): its first caption and that caption's first edit
    first = {str(r["id"]): r["multi_gpt-3.5_opt"][0] for r in recs}
    expected, _ = brute_force_rankings(root, tiny_weights, split, lambda q: [first[q.qid]])
    assert {k: [str(i) for i in v] for k, v in ranked.items()} == expected
    res = eval_cli(tmp, root, tiny_weights, "seize:n=3", "seize")
    assert res["models"][0]["splits"]["circo/val"]["scoring"]["neg_factor"] == 2.1
    res = eval_cli(tmp, root, tiny_weights, "ldre:n=3", "ldre")
    scoring = res["models"][0]["splits"]["circo/val"]["scoring"]
    assert len(scoring["weights"]) == 3 and abs(sum(scoring["weights"]) - 1) < 1e-6
    assert "all 8 queries" in scoring["fitted_over"]


def test_missing_generations_are_one_line(world, tiny_weights, tmp_path, capsys):
    tmp, root, split, recs = world
    (tmp_path / "short.json").write_text(json.dumps(recs[:2]))
    for model, message in (("ldre", "has 3 caption(s) in --generations, expected 15"),
                           ("ldre:n=3", "has 0 caption(s) in --generations")):
        with pytest.raises(SystemExit) as e:
            main(["eval", "circo", "--root", str(root), "--clip", TINY, "--pretrained", tiny_weights, "--model", model,
                  "--generations", str(tmp_path / "short.json"), "--out", str(tmp_path / "r"), "--no-progress"])
        assert e.value.code != 0 and message in capsys.readouterr().err
    with pytest.raises(ZscirError, match="record 0: expected one of the fields"):
        (tmp_path / "bad.json").write_text(json.dumps([{"x": 1, "blip2_caption": "a", "gpt-3.5-turbo": "b"}]))
        read_released(str(tmp_path / "bad.json"))


def test_released_file_keys_and_repeated_captions(world):
    tmp, root, split, recs = world
    gen = read_released(str(tmp / "ldre_test.json"))
    r = recs[0]
    ref = ImageRef(str(r["reference_img_id"]))
    assert gen.captions(ref) == r["multi_caption_opt"]
    # the caption that occurs twice keeps both edits, in order
    assert gen.edits(r["multi_caption_opt"][0], r["relative_caption"]) == [r["multi_gpt-3.5_opt"][0], r["multi_gpt-3.5_opt"][2]]
    single = read_released(f"{tmp / 'ldre_test.json'}#captions=blip2_caption,edits=gpt-3.5-turbo")
    assert single.captions(ref) == [r["blip2_caption"]]
    assert single.provenance()[0]["captioner"].startswith("BLIP-2 OPT")


# ---------------------------------------------------------------- rules against brute force
def brute_seize(after_q, before_q, gallery, neg, pos):
    out = np.zeros((len(after_q), len(gallery)), dtype=np.float64)
    for i in range(len(after_q)):
        for j in range(len(gallery)):
            a = float(np.dot(after_q[i], gallery[j]))
            b = float(np.dot(before_q[i], gallery[j]))
            d = a - b
            out[i, j] = a + neg * (d if d < 0 else 0.0) + pos * (d if d > 0 else 0.0)
    return out


def test_seize_rule_equals_brute_force():
    torch.manual_seed(1)
    e, c, g = (F.normalize(torch.randn(n, 16), dim=-1) for n in (7, 7, 40))
    got = SeizeRule().score({"edited": e, "captioned": c}, {"image": g}).double().numpy()
    want = brute_seize(e.double().numpy(), c.double().numpy(), g.double().numpy(), 2.1, 0.13)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_adaptive_ensemble_equals_brute_force_over_all_queries():
    torch.manual_seed(2)
    q, n, d, gsize, k, t = 300, 4, 16, 50, 5, 0.04   # 300 queries: more than one fitting chunk
    edits = F.normalize(torch.randn(q, n, d), dim=-1)
    caps = F.normalize(torch.randn(q, n, d), dim=-1)
    g = F.normalize(torch.randn(gsize, d), dim=-1)
    E, C, G = (x.double().numpy() for x in (edits, caps, g))
    neg = []
    for i in range(n):   # LDRE: diff = after - before; diff[diff > 0] = 0; -diff; top-k per query; sum over all
        total = 0.0
        for row in range(q):
            diffs = sorted((max(float(np.dot(C[row, i], G[j]) - np.dot(E[row, i], G[j])), 0.0) for j in range(gsize)),
                           reverse=True)
            total += sum(diffs[:k])
        neg.append(total)
    neg = np.array(neg)
    w = np.exp(neg / neg.max() / t)
    w /= w.sum()
    fitted = AdaptiveEnsemble(k, t).fit({"edits": edits, "captions": caps}, {"image": g})
    np.testing.assert_allclose(fitted.negative_change, neg, rtol=1e-5)
    np.testing.assert_allclose(fitted.weights, w, rtol=1e-4)
    got = fitted.score({"edits": edits, "captions": caps}, {"image": g}).double().numpy()
    np.testing.assert_allclose(got, np.einsum("i,qid,gd->qg", w, E, G), atol=1e-5)
    assert fitted.describe()["fitted_over"].startswith("all 300 queries")


def test_one_vector_case_is_plain_cosine():
    torch.manual_seed(3)
    qv, g = torch.randn(5, 8), torch.randn(9, 8)
    assert torch.equal(COSINE.score({"query": qv}, {"image": g}), qv @ g.T)


def test_templates_are_hashed_and_instructions_joined():
    assert len({t.sha256 for t in EDIT_TEMPLATES.values()}) == 3
    assert instruction_of(("is red.", "has long sleeves?")) == "is red and has long sleeves"
    t = EDIT_TEMPLATES["structural"]
    assert t.parse("Sure.\nEdited Description: a red car\nmore", "x") == "a red car"
    assert t.parse("a bare description", "x") == "a bare description"
    assert t.parse("line one\nline two", "the instruction") == "the instruction"
