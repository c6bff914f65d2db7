"""The multi-turn split: sequences, ground truth re-derived from the specs, the closed loop, Retriever.refine."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir.benchmarks import load_splits
from zscir.world.build import MULTITURN_LIST, WorldConfig, generate_world, read_scenes
from zscir.world.edits import apply_edits
from zscir.world.matching import coarse_templates, satisfies
from zscir.world.multiturn import MAX_TURNS, MIN_TURNS, TURN_KINDS
from zscir.world.spec import Scene, spec_part

CONFIG = replace(WorldConfig.tiny(seed=5), num_multiturn=8)


def _build(root: Path, config: WorldConfig) -> Path:
    return generate_world(root, config, workers=1, progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("mt") / "world", CONFIG)


def _records(world, name):
    return json.loads((world / "annotations" / f"{name}.json").read_text())


def test_sequences_chain_their_turns(world):
    recs = _records(world, "multiturn")
    scenes = read_scenes(world)
    by_seq = {}
    for r in recs:
        by_seq.setdefault(r["sequence"], []).append(r)
    assert len(by_seq) == CONFIG.num_multiturn
    for seq in by_seq.values():
        assert [r["turn"] for r in seq] == list(range(1, len(seq) + 1)) and MIN_TURNS <= len(seq) <= MAX_TURNS
        for prev, r in zip([None] + seq[:-1], seq):
            assert len(r["edits"]) == 1 and r["edits"][0]["kind"] in TURN_KINDS
            if prev is not None:   # the true previous scene is the previous turn's target image
                assert r["reference_img_id"] == prev["target_img_id"]
            ref = Scene.from_json(scenes[r["reference_img_id"]])
            target = Scene.from_json(scenes[r["target_img_id"]])
            assert apply_edits(ref, r["edits"]) == target and spec_part(target) == "eval"
        keys = [Scene.from_json(scenes[r["target_img_id"]]).key for r in seq]
        assert len(set(keys)) == len(keys)   # no state visited twice
    coarse = _records(world, "multiturn_coarse")
    assert [(r["sequence"], r["turn"], r["reference_img_id"]) for r in coarse] == \
           [(r["sequence"], r["turn"], r["reference_img_id"]) for r in recs]


def test_ground_truth_rederived_from_every_gallery_scene(world):
    """Brute force over the whole multi-turn gallery, without the world's index: the same sets."""
    scenes = read_scenes(world)
    gallery = [e["id"] for e in json.loads((world / MULTITURN_LIST).read_text())["images"]]
    specs = {i: Scene.from_json(scenes[i]) for i in gallery}
    assert {scenes[i]["split"] for i in gallery} == {"multiturn"}
    sizes = []
    for fine, coarse in zip(_records(world, "multiturn"), _records(world, "multiturn_coarse")):
        ref = specs[fine["reference_img_id"]]
        want = apply_edits(ref, fine["edits"]).key
        assert set(fine["gt_img_ids"]) == {i for i in gallery if specs[i].key == want}
        templates = coarse_templates(ref, coarse["edits"])
        assert set(coarse["gt_img_ids"]) == {i for i in gallery if any(satisfies(t, specs[i]) for t in templates)}
        assert fine["gt_img_ids"][0] == coarse["gt_img_ids"][0] == fine["target_img_id"]
        sizes.append(len(coarse["gt_img_ids"]) - len(fine["gt_img_ids"]))
    assert max(sizes) > 0   # coarse texts have more answers somewhere


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("world.json", "scenes.jsonl")}


def test_adding_the_split_leaves_every_other_split_byte_identical(tmp_path, world):
    without = _build(tmp_path / "none", replace(CONFIG, num_multiturn=0))
    old, new = _digests(without), _digests(world)
    assert old and all(new[k] == v for k, v in old.items())
    assert {k.split("/")[0] for k in set(new) - set(old)} == {"annotations", "multiturn_gallery"}
    assert (world / "scenes.jsonl").read_bytes().startswith((without / "scenes.jsonl").read_bytes())


def test_refine_turns_feeds_each_top1_to_the_next_turn():
    from zscir.index.refine import refine_turns

    calls = []

    def search(refs, texts):
        calls.append(list(zip(refs, texts)))
        return [[f"{r}+{t}", "other"] if t != "stop" else [] for r, t in zip(refs, texts)]

    out = refine_turns(search, ["a", "b"], [["x", "y", "z"], ["stop", "never"]])
    assert calls == [[("a", "x"), ("b", "stop")], [("a+x", "y")], [("a+x+y", "z")]]
    assert out == [[["a+x", "other"], ["a+x+y", "other"], ["a+x+y+z", "other"]], []]


def test_closed_loop_eval_matches_a_brute_force_loop(tmp_path, world):
    """`zscir eval shapes --split multiturn` with the sum baseline, against the loop written out by hand."""
    from zscir.data.images import decode_image
    from zscir.evaluation import metrics
    from zscir.evaluation.run import EvalRequest, evaluate
    from zscir.world.shipped import shapes_backbone

    res = evaluate(EvalRequest("shapes", root=world, splits=["multiturn"], models=["sum"], out_dir=tmp_path / "run",
                               cache_root=tmp_path / "cache", progress=False, oracles=False))
    got = res["models"][0]["splits"]["shapes/multiturn"]["multiturn"]["turns"]
    split = load_splits("shapes", world, "multiturn")[0]
    bb = shapes_backbone()
    with torch.no_grad():
        feats = bb.encode_image(torch.stack([bb.preprocess(decode_image(split.images[g].read_bytes()))
                                             for g in split.gallery])).pooled
    img = F.normalize(feats.half().float(), dim=-1)   # the feature cache stores fp16
    row = split.gallery_index
    notes = split.notes["multiturn"]
    turns = np.array(notes["turn"])
    for mode in ("true_previous", "closed_loop"):
        ranked = np.zeros((len(split.queries), 10), dtype=np.int64)
        current = {}
        for i in np.argsort(turns, kind="stable"):
            q = split.queries[i]
            seq = notes["sequence"][i]
            ref = q.reference if mode == "true_previous" or notes["turn"][i] == 1 else current[seq]
            text = F.normalize(bb.encode_text([q.captions[0]]), dim=-1)
            scores = ((img[row[ref]] + text) @ img.T).numpy()[0]
            ranked[i] = np.argsort(-scores, kind="stable")[:10]
            current[seq] = split.gallery[ranked[i][0]]
        for t, m in got.items():
            idx = np.nonzero(turns == int(t))[0]
            want = metrics.circo_metrics(ranked[idx], [[row[g] for g in split.queries[j].targets] for j in idx])
            assert m[mode]["R@10"] == pytest.approx(want["R@10"]) and m[mode]["mAP@10"] == pytest.approx(want["mAP@10"])
    md = (tmp_path / "run/results.md").read_text()
    assert "shapes/multiturn per turn" in md and "closed_loop" in md


def test_retriever_refine_searches_from_each_top_hit(tmp_path, world):
    from zscir.index.gallery import build_index
    from zscir.resolve import load_retriever
    from zscir.world.build import MULTITURN_DIR
    from zscir.world.shipped import shapes_backbone

    build_index(tmp_path / "idx", shapes_backbone(), images=world / MULTITURN_DIR, progress=False)
    r = load_retriever(tmp_path / "idx", "sum")
    rec = [x for x in _records(world, "multiturn") if x["sequence"] == 0]
    start = world / MULTITURN_DIR / f"{rec[0]['reference_img_id']:012d}.png"
    texts = [x["relative_caption"] for x in rec]
    out = r.refine(str(start), texts, k=5)
    assert [o.text for o in out] == texts and all(len(o.hits) == 5 for o in out)
    for prev, nxt in zip(out, out[1:]):   # each turn searched from the previous turn's top hit
        assert nxt.hits == r.search(prev.hits[0].path, nxt.text, k=5)
