"""Oracle rows of `zscir eval shapes` (ceilings, not models) and the benchmark-owned defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zscir.benchmarks import get_benchmark, load_splits
from zscir.world.build import WorldConfig, generate_world, read_scenes
from zscir.world.captions import canonical_caption
from zscir.world.edits import apply_edits
from zscir.world.matching import coarse_templates, satisfies
from zscir.world.oracles import edit_result, oracle_texts
from zscir.world.spec import Scene


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("oracles") / "world", WorldConfig.tiny(seed=3), workers=1,
                          progress=False, log=lambda *_: None)


def _records(world, split):
    return json.loads((world / "annotations" / f"{split}.json").read_text())


def test_oracle_texts_follow_the_scene_specs(world):
    scenes = read_scenes(world)
    scene = lambda i: Scene.from_json(scenes[int(i)])  # noqa: E731
    for name in ("val", "val_coarse"):
        split = load_splits("shapes", world, name)[0]
        texts, records = oracle_texts(world, split), _records(world, name)
        for n, (q, r) in enumerate(zip(split.queries, records)):
            ref, target = scene(q.reference), scene(q.targets[0])
            assert texts["caption"][n] == canonical_caption(target).text
            assert texts["reference"][n] == canonical_caption(ref).text
            assert texts["inversion"][n] == f"a photo of {canonical_caption(ref).text} but {q.captions[0]}"
            if name == "val":   # a fine text fixes the result: the edit oracle is the caption oracle
                assert texts["edit"][n] == texts["caption"][n] == canonical_caption(apply_edits(ref, r["edits"])).text
            else:               # a coarse text: one seeded reading, and it is a valid answer of the query
                reading = edit_result(ref, r["edits"], n)
                assert texts["edit"][n] == canonical_caption(reading).text
                assert any(satisfies(t, reading) for t in coarse_templates(ref, r["edits"]))


def test_coarse_edit_oracle_reading_satisfies_the_query(world):
    for r in _records(world, "val_coarse"):
        ref = Scene.from_json(read_scenes(world)[r["reference_img_id"]])
        for qid in range(5):
            assert any(satisfies(t, edit_result(ref, r["edits"], qid)) for t in coarse_templates(ref, r["edits"]))


def test_eval_reports_oracle_rows_apart_from_models(tmp_path, world):
    """Default backbone from the benchmark spec (the shipped world CLIP); oracles as extra rows; brute-force check."""
    from zscir.evaluation.oracles import encode_texts
    from zscir.evaluation.run import EvalRequest, evaluate

    res = evaluate(EvalRequest("shapes", root=world, models=["text"], out_dir=tmp_path / "run",
                               cache_root=tmp_path / "cache", progress=False))
    assert [m["name"] for m in res["models"]] == ["text"]
    assert [o["name"] for o in res["oracles"]] == [f"[oracle] {k}" for k in ("caption", "edit", "inversion", "reference")]
    assert all(o["oracle"] is True for o in res["oracles"])
    saved = json.loads((tmp_path / "run/results.json").read_text())
    assert saved["oracles"][0]["splits"]["shapes/val"]["metrics"] == pytest.approx(
        res["oracles"][0]["splits"]["shapes/val"]["metrics"])
    md = (tmp_path / "run/results.md").read_text()
    assert "| [oracle] caption |" in md and "mAP@10 / caption oracle" in md and "Oracles (ceilings, not models)" in md

    # brute force: the caption oracle's R@10 from the texts, the shipped CLIP and the gallery images
    from zscir.data.images import decode_image   # the one image decoder
    from zscir.world.shipped import shapes_backbone

    bb = shapes_backbone()
    split = load_splits("shapes", world, "val")[0]
    with torch.no_grad():
        g = torch.cat([bb.encode_image(torch.stack([bb.preprocess(decode_image(split.images[i].read_bytes())) for i in split.gallery]))
                       .pooled])
    g = torch.nn.functional.normalize(g, dim=-1)
    q = encode_texts(bb, oracle_texts(world, split)["caption"])
    top10 = np.argsort(-(q @ g.T).numpy(), axis=1, kind="stable")[:, :10]
    hits = [split.gallery_index[qq.targets[0]] in row for qq, row in zip(split.queries, top10)]
    caption = res["oracles"][0]["splits"]["shapes/val"]["metrics"]
    assert caption["R@10"] == pytest.approx(100 * np.mean(hits), abs=100 / len(hits) + 1e-6)  # fp16 gallery cache
    assert caption["mAP@10"] > res["models"][0]["splits"]["shapes/val"]["metrics"]["mAP@10"] + 20


def test_benchmark_spec_carries_its_defaults():
    from zscir.evaluation.run import BASELINES, default_models
    from zscir.resolve import default_model_for
    from zscir.world.shipped import shapes_backbone

    shapes, circo = get_benchmark("shapes"), get_benchmark("circo")
    assert circo.defaults.backbone is None and circo.defaults.oracles is None
    bb = shapes.defaults.backbone("cpu", "targetpad")
    assert bb.identity == shapes_backbone().identity
    models = default_models(shapes, bb)
    assert models[:3] == list(BASELINES) and any(m.endswith("shapes_fti.safetensors") for m in models)
    assert default_model_for(bb.identity).endswith("shapes_fti.safetensors")
    assert default_model_for({"model": "elsewhere"}) == "sum"
