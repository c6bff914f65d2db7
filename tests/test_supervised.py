"""Supervised heads (Combiner, FineCIR-style): formulas, loss vs brute force, training, checkpoints, CLI, eval."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir.backbone import ImageFeatures, load_backbone
from zscir.errors import ZscirError
from zscir.models.supervised import (Combiner, FineCIRHead, create_head, head_config, load_supervised_checkpoint,
                                     pack_entities, project_patches)
from zscir.training.supervised import (SupervisedConfig, Trainable, build_triplet_data, in_batch_loss,
                                       in_batch_loss_reference, load_train_splits, train)

D = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zscir.world.build import WorldConfig, generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig.tiny(seed=5), workers=1,
                          progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("zscir-tiny-test", pretrained=None)


@pytest.fixture(scope="module")
def data(world, backbone, tmp_path_factory):
    splits = load_train_splits("shapes", "train", world)
    return build_triplet_data(splits, backbone, tmp_path_factory.mktemp("cache"), with_entities=True,
                              progress=False, log=lambda m: None)


# ---------------------------------------------------------------- the heads
def test_combiner_is_clip4cir_formula():
    torch.manual_seed(1)
    head = Combiner(D).eval()
    image, text = torch.randn(5, D), torch.randn(5, D)
    i, t = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    joint = torch.cat([torch.relu(head.text_projection[0](t)), torch.relu(head.image_projection[0](i))], -1)
    lam = torch.sigmoid(head.gate[3](torch.relu(head.gate[0](joint))))
    residual = head.combiner[3](torch.relu(head.combiner[0](joint)))
    expected = F.normalize(residual + lam * t + (1 - lam) * i, dim=-1)
    out = head(image, text)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert head.text_projection[0].out_features == 4 * D and head.combiner[0].out_features == 8 * D
    assert ((lam > 0) & (lam < 1)).all()


def test_finecir_entities_padding_and_grounding():
    torch.manual_seed(2)
    head = FineCIRHead(D).eval()
    image, text, patches = torch.randn(3, D), torch.randn(3, D), torch.randn(3, 9, D)
    ents = torch.randn(3, 4, D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = head(image, text, ents, mask, patches)
    # masked slots do not matter: garbage there gives the same output
    garbage = ents.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D) * 50
    assert torch.allclose(head(image, text, garbage, mask, patches), out, atol=1e-6)
    # brute force: each query's entities grounded one at a time, mean over the real ones
    for b in range(3):
        real = ents[b][mask[b]]
        if len(real):
            g = head.grounding(F.normalize(real, dim=-1)[None], F.normalize(patches[b], dim=-1)[None])[0]
            pooled = head.entity_projection(g).mean(0, keepdim=True)
        else:
            pooled = torch.zeros(1, head.entity_projection[0].out_features)   # no entity: a zero third input
        ref = head.compose(image[b:b + 1], text[b:b + 1], [pooled])
        assert torch.allclose(ref, out[b:b + 1], atol=1e-5)
    # the entity features depend on the reference patches (query 0 has entities)
    moved = head(image, text, ents, mask, torch.randn(3, 9, D))
    assert not torch.allclose(moved[0], out[0], atol=1e-4)
    assert torch.allclose(moved[2], out[2], atol=1e-6)        # query 2 has none: patches are not looked at
    with pytest.raises(ZscirError, match="needs entity features"):
        head(image, text)


def test_head_config_and_pack():
    cfg = head_config("finecir-clip", {"dropout": 0.1, "max_entities": None})
    assert cfg["dropout"] == 0.1 and cfg["max_entities"] == 6
    assert isinstance(create_head(cfg, D), FineCIRHead)
    with pytest.raises(ZscirError, match="unknown supervised head 'clip4cir'"):
        head_config("clip4cir")
    with pytest.raises(ZscirError, match="unknown head option 'width'"):
        head_config("combiner", {"width": 3})
    feats = {"a": torch.ones(D), "b": 2 * torch.ones(D)}
    e, m = pack_entities([["a", "b", "a"], [], ["b"]], feats, D, max_entities=2)
    assert e.shape == (3, 2, D) and m.tolist() == [[True, True], [False, False], [True, False]]
    assert e[0, 1, 0] == 2 and e[1].abs().sum() == 0


def test_project_patches_is_the_backbones_own_head(backbone):
    """ln_post + proj applied to the CLS token gives back the pooled feature: the patches share its space."""
    torch.manual_seed(3)
    feats = backbone.encode_image(torch.randn(2, 3, 32, 32), with_tokens=True)
    cls_and_patches = project_patches(backbone, torch.cat([feats.tokens[:, :1], feats.tokens], 1))
    assert torch.allclose(cls_and_patches[:, 0], feats.pooled, atol=1e-5)
    visual = backbone.model.visual
    p = project_patches(backbone, feats.tokens)
    assert p.shape == (2, feats.tokens.shape[1] - 1, backbone.embed_dim)
    assert torch.allclose(p[1, 3], visual.ln_post(feats.tokens[1, 4]) @ visual.proj, atol=1e-5)


# ---------------------------------------------------------------- the loss
def test_in_batch_loss_equals_brute_force():
    torch.manual_seed(4)
    model = Trainable(FineCIRHead(D).eval(), temperature=0.05, learn=False)
    targets = F.normalize(torch.randn(10, D), dim=-1)
    rows = torch.tensor([0, 1, 2, 2, 5, 7])   # two queries share a target
    positives = torch.tensor([[0, 5, -1], [1, -1, -1], [2, -1, -1], [2, 9, -1], [5, 0, 1], [7, -1, -1]])
    batch = {"image": torch.randn(6, D), "text": torch.randn(6, D), "entities": torch.randn(6, 2, D),
             "entity_mask": torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [1, 0], [1, 1]], dtype=torch.bool),
             "patches": torch.randn(6, 4, D), "target_rows": rows, "positives": positives}
    fast = in_batch_loss(model, batch, targets)
    slow = in_batch_loss_reference(model, batch, targets)
    assert torch.allclose(fast, slow, atol=1e-5)
    # without the ground-truth masking the loss differs (query 0's positive 5 is another query's target)
    plain = dict(batch, positives=rows[:, None])
    assert not torch.allclose(in_batch_loss(model, plain, targets), fast, atol=1e-4)


# ---------------------------------------------------------------- data, training, checkpoints
def test_triplet_data_from_a_world(data, world):
    train = json.loads((world / "annotations" / "train.json").read_text())
    assert len(data) == len(train) == 16 and data.record["skipped_triplets"] == 0
    assert data.ref_patches.shape[1:] == (16, D)           # 32 px / 8 px patches, projected to the joint space
    assert data.record["parser"] == "rules" and data.record["texts_without_entities"] == 0
    # row bookkeeping: each triplet's target row holds its target's own feature
    b = data.batch(np.arange(4), np.zeros(4, dtype=np.int64))
    assert b["entities"].shape[0] == 4 and b["entity_mask"][:, 0].all()
    assert torch.allclose(b["positives"][:, 0], b["target_rows"])


def test_training_learns_and_checkpoint_round_trip(data, backbone, tmp_path):
    from zscir.models.query import load_query_encoder

    cfg = SupervisedConfig(out=str(tmp_path / "run"), head="finecir-clip", epochs=30, batch_size=8, lr=1e-3, seed=0)
    path = train(cfg, backbone, data, progress_bar=False, log=lambda m: None)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]                    # it fits the 16 training triplets
    head, meta = load_supervised_checkpoint(path)
    assert meta["kind"] == "supervised" and meta["head"] == "finecir-clip" and meta["parser"] == "rules"
    # the query encoder reproduces the head on the training data (the same parse, phrases and patches)
    qe = load_query_encoder(str(path), backbone)
    assert qe.needs_tokens and qe.identity["parser"] == "rules"
    splits = load_train_splits("shapes", "train", data.record["sources"][0].rsplit("/annotations", 1)[0])
    q = splits[0].queries[:4]
    feats = backbone.encode_image(torch.stack([backbone.preprocess(_rgb(splits[0].images[x.reference]))
                                               for x in q]), with_tokens=True)
    got = qe.encode_queries(feats, [x.captions[0] for x in q])
    b = data.batch(np.arange(4), np.zeros(4, dtype=np.int64))
    with torch.no_grad():
        want = head(feats.pooled, b["text"], b["entities"], b["entity_mask"], project_patches(backbone, feats.tokens))
    assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ZscirError, match="needs reference-image tokens"):
        qe.encode_queries(ImageFeatures(feats.pooled), ["make it red"] * 4)
    torch.manual_seed(99)
    other = load_backbone("zscir-tiny-test", pretrained=None)
    with pytest.raises(ZscirError, match="was trained on backbone"):
        load_query_encoder(str(path), other)


def _rgb(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_resume_gives_the_same_weights(data, backbone, tmp_path):
    kw = dict(head="combiner", epochs=4, batch_size=8, lr=1e-3, seed=1)
    straight = train(SupervisedConfig(out=str(tmp_path / "a"), **kw), backbone, data, progress_bar=False)
    train(SupervisedConfig(out=str(tmp_path / "b"), max_steps=3, **kw), backbone, data, progress_bar=False)
    resumed = train(SupervisedConfig(out=str(tmp_path / "b"), **kw), backbone, data, resume=True, progress_bar=False,
                    log=lambda m: None)
    a, _ = load_supervised_checkpoint(straight)
    b, meta = load_supervised_checkpoint(resumed)
    assert meta["training"]["steps"] == 8
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


def test_bad_checkpoint_and_config(tmp_path, data, backbone):
    from zscir.checkpoint import save_checkpoint
    from zscir.models.query import load_query_encoder

    save_checkpoint(tmp_path / "odd", {"x": torch.zeros(1)}, {"kind": "supervised"})
    with pytest.raises(ZscirError, match="has no field 'config'"):
        load_query_encoder(str(tmp_path / "odd.safetensors"), backbone)
    with pytest.raises(ZscirError, match="--texts 'coarse' is not available for --dataset cirr"):
        SupervisedConfig(dataset="cirr", texts="coarse").split_name()
    with pytest.raises(ZscirError, match="fewer than one batch"):
        train(SupervisedConfig(out=str(tmp_path / "r"), batch_size=64), backbone, data, progress_bar=False)


# ---------------------------------------------------------------- CLI and zscir eval
def test_cli_and_eval_end_to_end(world, tmp_path, monkeypatch, capsys):
    from zscir.cli import main
    from zscir.evaluation.run import EvalRequest, evaluate

    out = tmp_path / "run"
    torch.manual_seed(0)   # the random-init tiny CLIP the CLI loads is the one of the fixtures (same seed)
    with pytest.raises(SystemExit) as e:
        main(["train-supervised", "--dataset", "shapes", "--root", str(world), "--clip", "zscir-tiny-test",
              "--pretrained", "none", "--head", "finecir-clip", "--epochs", "2", "--batch-size", "8", "--out", str(out),
              "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert e.value.code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["triplets"] == 16 and record["checkpoint"] == str(out / "model.safetensors")
    torch.manual_seed(0)
    results = evaluate(EvalRequest("shapes", root=world, splits=["val"], models=[record["checkpoint"]],
                                   clip="zscir-tiny-test", out_dir=tmp_path / "eval", cache_root=tmp_path / "cache",
                                   progress=False))
    metrics = results["models"][0]["splits"]["shapes/val"]["metrics"]
    assert 0.0 <= metrics["mAP@10"] <= 100.0 and results["models"][0]["identity"]["method"] == "supervised-finecir-clip"
    with pytest.raises(SystemExit) as e:
        main(["train-supervised", "--dataset", "cirr", "--root", str(tmp_path)])
    assert e.value.code == 1
    assert "--dataset cirr needs a backbone" in capsys.readouterr().err


def test_retrieve_with_a_supervised_checkpoint(world, backbone, data, tmp_path):
    """`zscir retrieve --model` path: the retriever encodes reference tokens for the FineCIR-style head."""
    from zscir.index.gallery import build_index
    from zscir.resolve import load_retriever

    path = train(SupervisedConfig(out=str(tmp_path / "run"), head="finecir-clip", epochs=1, batch_size=8), backbone, data,
                 progress_bar=False)
    gallery = world / "train_gallery" / "images"
    build_index(tmp_path / "index", backbone, images=gallery, progress=False, log=lambda m: None)
    r = load_retriever(tmp_path / "index", str(path), backbone=backbone)
    assert r.encoder.needs_tokens
    ref = sorted(gallery.iterdir())[0]
    hits = r.search(str(ref), "make the red circle blue", k=5)
    assert len(hits) == 5 and all(h.path != str(ref) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _fashioniq_look_alike(root, n=8):
    """FashionIQ's train layout (three categories), coloured placeholder images, FineCIR's fine texts beside it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    for category in ("dress", "shirt", "toptee"):
        asins = [f"{category}{k:03d}" for k in range(2 * n)]
        for a in asins:
            Image.new("RGB", (16, 16), tuple(int(c) for c in rng.integers(0, 255, 3))).save(root / "images" / f"{a}.png")
        rows = [{"candidate": asins[2 * k], "target": asins[2 * k + 1], "captions": [f"is red {k}", "has long sleeves"]}
                for k in range(n)]
        (root / "captions" / f"cap.{category}.train.json").write_text(json.dumps(rows))
        (root / "image_splits" / f"split.{category}.train.json").write_text(json.dumps(asins))
        fine = [{"candidate": r["candidate"], "target": r["target"],
                 "finemt": "1. Change the color of the dress to red.\n2. Make the sleeves long."} for r in rows]
        (root / "captions" / f"fiq.fine.{category}.train.jsonl").write_text("".join(json.dumps(f) + "\n" for f in fine))
    return root


def test_fashioniq_and_fine_fashioniq_training(tmp_path, backbone):
    root = _fashioniq_look_alike(tmp_path / "fiq")
    splits = load_train_splits("fashioniq", "train", root)
    data = build_triplet_data(splits, backbone, tmp_path / "cache", with_entities=False, progress=False,
                              log=lambda m: None)
    assert len(data) == 24 and data.ref_patches is None
    # FashionIQ's two captions give two texts per triplet, both orders (as the evaluation protocol forms them)
    assert all(len(v) == 2 for v in data.text_variants)
    texts = list(dict.fromkeys(t for split in splits for q in split.queries for t in [q.captions[0]]))
    assert len(texts) == 8
    path = train(SupervisedConfig(out=str(tmp_path / "run"), dataset="fashioniq", head="combiner", epochs=1,
                                  batch_size=8), backbone, data, progress_bar=False)
    assert load_supervised_checkpoint(path)[1]["training"]["steps"] == 3
    fine = build_triplet_data(load_train_splits("fine-fashioniq", "train", root), backbone, tmp_path / "cache",
                              with_entities=True, progress=False, log=lambda m: None)
    assert len(fine) == 24 and fine.record["entity_phrases"] == 2      # "dress" and "sleeves", parsed from FineMT
    assert fine.entity_index.shape[1] == 2


def test_checkpoint_of_the_old_finecir_name_loads_as_finecir_clip(tmp_path, backbone):
    """Before FineCIR on BLIP-2 took the name, the CLIP head was "finecir": such checkpoints load as finecir-clip."""
    from zscir.models.supervised import save_supervised_checkpoint

    torch.manual_seed(5)
    cfg = head_config("finecir-clip")
    head = create_head(cfg, backbone.embed_dim)
    path = save_supervised_checkpoint(tmp_path / "old", head, {**cfg, "head": "finecir"}, backbone, "rules")
    loaded, meta = load_supervised_checkpoint(path)
    assert isinstance(loaded, FineCIRHead) and meta["head"] == "finecir-clip" and meta["head_renamed_from"] == "finecir"
    for (k, v), (_, w) in zip(head.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
