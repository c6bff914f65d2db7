"""`zscir explain`: the nearest vocabulary words of each pseudo-word, and the world's true caption."""

from __future__ import annotations

import json

import pytest
import torch

from zscir.cli import main
from zscir.models.explain import nearest_words
from zscir.models.explain_cli import explain
from zscir.world.build import GALLERY_DIR, WorldConfig, generate_world, read_scenes
from zscir.world.captions import canonical_caption
from zscir.world.plugins_models import world_caption, world_vocabulary
from zscir.world.spec import Scene


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("explain") / "world", WorldConfig.tiny(seed=2), workers=1,
                          progress=False, log=lambda *_: None)


def test_nearest_words_against_the_token_table(tiny_backbone):
    tok = tiny_backbone.tokenizer
    table = tiny_backbone.model.token_embedding.weight
    circle, red = tok.encode("circle")[0], tok.encode("red")[0]
    words = torch.stack([table[circle] * 3.0, table[red] + 1e-3 * table[circle], table[tok.eot_token_id]])
    out = nearest_words(tiny_backbone, words, k=3)
    assert out[0][0]["word"] == "circle" and out[0][0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert out[1][0]["word"] == "red"
    assert tok.eot_token_id not in [w["token_id"] for w in out[2]]   # special tokens are no words
    # brute force for the first row: cosines sorted, the same ids
    sims = torch.nn.functional.cosine_similarity(words[1:2], table, dim=-1)
    sims[[tiny_backbone.placeholder_token_id, *tok.all_special_ids]] = -2
    assert [w["token_id"] for w in out[1]] == sims.topk(3).indices.tolist()
    vocab = world_vocabulary(tiny_backbone)
    restricted = nearest_words(tiny_backbone, words, k=2, vocabulary=vocab)
    assert all(w["token_id"] in vocab for row in restricted for w in row) and restricted[0][0]["word"] == "circle"


def test_explain_a_world_image_with_the_shipped_fti(world):
    image_id = json.loads((world / "annotations/val.json").read_text())[0]["reference_img_id"]
    path = world / GALLERY_DIR / f"{image_id:012d}.png"
    report = explain(str(path), k=4, vocabulary="world")
    assert report["method"] == "fti" and report["model"].endswith("shapes_fti.safetensors")
    slots = [p["slot"] for p in report["pseudo_words"]]
    assert slots[0] == "subject" and slots[1:] == [f"attribute {n}" for n in range(1, len(slots))]
    assert all(len(p["nearest"]) == 4 for p in report["pseudo_words"])
    cos = [w["cosine"] for w in report["pseudo_words"][0]["nearest"]]
    assert cos == sorted(cos, reverse=True)
    truth = canonical_caption(Scene.from_json(read_scenes(world)[image_id]))
    assert report["true_caption"]["caption"] == truth.text and report["true_caption"]["subject"] == truth.subject
    assert world_caption(world / "world.json") is None


def test_cli_json_and_one_line_errors(world, capsys):
    path = next((world / GALLERY_DIR).iterdir())
    with pytest.raises(SystemExit) as e:
        main(["explain", "--ref", str(path), "--model", "checkpoints/shapes_single.safetensors", "--json", "-k", "2"])
    assert e.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "single" and [p["slot"] for p in report["pseudo_words"]] == ["subject"]
    for args, message in ((["--model", "sum"], "explain needs a pseudo-word model"),
                          (["-k", "0"], "-k must be at least 1")):
        with pytest.raises(SystemExit) as e:
            main(["explain", "--ref", str(path), *args])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
