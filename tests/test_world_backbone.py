"""The shapes world's tiny CLIP: trainer pieces against references, resume, and the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zscir.backbone.tokenize import WordCachedTokenizer
from zscir.utils.paths import repo_checkpoints_dir
from zscir.world import train_backbone as tb
from zscir.world.captions import canonical_caption, random_caption
from zscir.world.spec import random_scene, spec_part

SHIPPED = repo_checkpoints_dir() / "shapes_clip.safetensors"


@pytest.fixture(scope="module")
def trainer_model_name(tmp_path_factory):
    """A registered open_clip config small enough to train a few steps in a test."""
    import open_clip

    folder = tmp_path_factory.mktemp("model_configs")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "world-trainer-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return "world-trainer-test"


def test_cached_tokenizer_equals_open_clip_tokenizer():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = np.random.default_rng(0)
    texts = [random_caption(random_scene(rng), rng).text for _ in range(150)] + ["a photo of * with * *"]
    ours = WordCachedTokenizer(tokenizer)(texts, 77, truncate=False)
    assert torch.equal(ours, tokenizer(texts))


def test_trimmed_and_bucketed_text_encoding_equal_open_clip(tiny_backbone):
    rng = np.random.default_rng(1)
    texts = [canonical_caption(random_scene(rng, max_objects=2)).text[:60] for _ in range(10)] + ["a red circle"]
    tokens = tiny_backbone.tokenizer(texts)
    model = tiny_backbone.model
    reference = model.encode_text(tokens)
    assert torch.allclose(tb.encode_text_trimmed(model, tokens), reference, atol=1e-5)
    assert torch.allclose(tb.encode_text_bucketed(model, tokens, buckets=3), reference, atol=1e-5)


def test_training_scenes_are_train_part_pairs_with_one_attribute_twins():
    scenes = tb.training_scenes(400, seed=0, twin_fraction=1.0)
    assert all(spec_part(s) == "train" for s in scenes)
    differences = []
    for a, b in zip(scenes[0::2], scenes[1::2]):
        fa = {(o.cell, o.shape, o.color, o.size, o.pattern) for o in a.objects}
        fb = {(o.cell, o.shape, o.color, o.size, o.pattern) for o in b.objects}
        differences.append(len(fa - fb) + (a.background != b.background))
    assert np.mean([d == 1 for d in differences]) > 0.95  # (the rest: no twin fell in the train part)
    assert len({s.key for s in tb.training_scenes(400, seed=0, twin_fraction=0.0)}) > 390


def test_batches_keep_pairs_together_and_cover_every_scene():
    cfg = tb.TrainConfig(num_scenes=64, batch_size=16, steps=8)
    order = tb.batch_order(cfg)
    assert order.shape == (8, 16)
    assert np.all(order[:, 1::2] == order[:, 0::2] + 1) and np.all(order[:, 0::2] % 2 == 0)
    assert sorted(order[:4].ravel().tolist()) == list(range(64))  # one epoch = the first 4 steps


def test_lr_schedule():
    cfg = tb.TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    lrs = [tb.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_prepared_data_is_deterministic_and_matches_the_renderer(trainer_model_name):
    scenes = tb.training_scenes(12, seed=3, twin_fraction=0.5)
    images, tokens = tb.prepare_data(scenes, 3, 24, trainer_model_name, 2, 77, workers=1, chunk=5)
    again, tokens_again = tb.prepare_data(scenes, 3, 24, trainer_model_name, 2, 77, workers=1, chunk=5)
    assert np.array_equal(images, again) and torch.equal(tokens, tokens_again)
    from zscir.world.render import render_array, render_rng

    assert np.array_equal(images[7], render_array(scenes[7], render_rng(tb.RENDER_SEED_OFFSET + 3, 7), 24))
    import open_clip

    first = open_clip.get_tokenizer(trainer_model_name)([canonical_caption(scenes[7]).text])[0, :tokens.shape[2]]
    assert torch.equal(tokens[7, 0].long(), first)  # variant 0 is the canonical caption


def test_killed_training_resumes_to_the_same_weights(trainer_model_name, tmp_path, monkeypatch):
    cfg = tb.TrainConfig(model=trainer_model_name, num_scenes=48, batch_size=16, steps=4, warmup_steps=1,
                         save_every=2, render_workers=1, captions_per_scene=2, text_lock_steps=2)
    quiet = dict(log=lambda m: None, progress=False)
    tb.train_backbone(cfg, tmp_path / "straight.safetensors", tmp_path / "straight", **quiet)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def killed_at_third_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", killed_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        tb.train_backbone(cfg, tmp_path / "resumed.safetensors", tmp_path / "resumed", **quiet)
    assert not (tmp_path / "resumed.safetensors").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    record = tb.train_backbone(cfg, tmp_path / "resumed.safetensors", tmp_path / "resumed", **quiet)

    from safetensors.torch import load_file

    straight, resumed = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(v.dtype == torch.float16 for v in straight.values() if v.is_floating_point())
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert record["final_loss"] > 0


def test_resume_refuses_another_config(trainer_model_name, tmp_path):
    from zscir.errors import ZscirError

    cfg = tb.TrainConfig(model=trainer_model_name, num_scenes=32, batch_size=16, steps=1, warmup_steps=1,
                         render_workers=1, captions_per_scene=1, save_every=1)
    tb.train_backbone(cfg, tmp_path / "a.safetensors", tmp_path / "run", log=lambda m: None, progress=False)
    with pytest.raises(ZscirError, match="another config"):
        tb.train_backbone(tb.TrainConfig(**{**cfg.__dict__, "lr": 5e-4}), tmp_path / "b.safetensors", tmp_path / "run",
                          log=lambda m: None, progress=False)


def test_sensitivity_perturbation_changes_exactly_one_attribute_word():
    from zscir.world.eval_backbone import SENSITIVITY_KINDS, heldout_scenes, perturbed_caption

    scenes = heldout_scenes(50)
    assert len({s.key for s in scenes}) == 50 and all(spec_part(s) == "eval" for s in scenes)
    rng = np.random.default_rng(0)
    for scene in scenes:
        true = canonical_caption(scene).text.split()
        for kind in SENSITIVITY_KINDS:
            wrong = perturbed_caption(scene, kind, rng).split()
            changed = [(a, b) for a, b in zip(true, wrong) if a != b]
            assert wrong != true
            # one word, or a position phrase whose length differs ("at the top" -> "in the center")
            assert len(changed) == 1 or kind == "position", (kind, true, wrong)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="checkpoints/shapes_clip.safetensors not trained yet")
def test_shipped_backbone_knows_the_world():
    from zscir.backbone import load_backbone
    from zscir.world.shipped import shapes_clip_name
    from zscir.world.eval_backbone import evaluate_backbone

    assert SHIPPED.stat().st_size <= 30 * 2**20
    backbone = load_backbone(shapes_clip_name(), str(SHIPPED))
    assert backbone.tokenizer.encode("*") == [backbone.placeholder_token_id]
    result = evaluate_backbone(backbone, num_scenes=200, kinds=("color", "shape", "position", "pattern"))
    # floors ~3 standard errors (200 scenes) under the model card's 1,000-scene numbers (R@1 0.989; color
    # 0.995, shape 0.819, position 0.997, pattern 0.895); a random-init CLIP scores R@1 ~0.005 and ~0.5 on every kind
    assert result["text_to_image"]["R@1"] >= 0.95
    floors = {"color": 0.95, "shape": 0.74, "position": 0.95, "pattern": 0.82}
    for kind, value in result["sensitivity"].items():
        assert value >= floors[kind], (kind, value)


def test_clip_loss_with_text_negatives_against_a_loop():
    """Each image's row spans the captions and the negatives; each caption's row spans the images only."""
    import math

    import torch.nn.functional as F

    torch.manual_seed(0)
    images, texts, negatives = (F.normalize(torch.randn(5, 8), dim=-1) for _ in range(3))
    scale = torch.tensor(10.0)
    loss = tb.clip_loss_with_text_negatives(images, texts, negatives, scale)
    per_image, per_text = [], []
    for i in range(5):
        row = [float(scale * images[i] @ c) for c in list(texts) + list(negatives)]
        per_image.append(-row[i] + math.log(sum(math.exp(v) for v in row)))
        col = [float(scale * texts[i] @ im) for im in images]
        per_text.append(-col[i] + math.log(sum(math.exp(v) for v in col)))
    assert abs(float(loss) - (sum(per_image) + sum(per_text)) / 10) < 1e-5
    from open_clip.loss import ClipLoss

    positive = images.abs()  # all in the positive orthant, so a large negative constant vector scores ~ -inf
    far = torch.full_like(negatives, -1e3)  # negatives that score ~ -inf leave CLIP's loss as it is
    assert torch.allclose(tb.clip_loss_with_text_negatives(positive, texts, far, scale), ClipLoss()(positive, texts, scale),
                          atol=1e-5)
