"""Trainable methods from the registry: Pic2Word and LinCIR losses against hand-written references,
kill/resume for each, and one query encoder for a checkpoint trained here and one imported."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests._cli import run
from zscir.backbone import ImageFeatures
from zscir.data.splitter import rule_tags
from zscir.errors import ZscirError
from zscir.models.factory import backbone_dims, create_mapping_network
from zscir.models.losses import clip_contrastive_loss
from zscir.models.methods import METHODS, get_training, trainable_methods
from zscir.models.objective import lincir_loss, lincir_noise, pic2word_loss
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

DRIVER = str(Path(__file__).parent / "drivers" / "pretrain_driver.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TEXTS = ["is red and has a collar", "shows two dogs instead of one"]


# ----------------------------------------------------------------- the registry
def test_trainable_methods_come_from_the_registry_and_the_cli_takes_exactly_those(capsys):
    from zscir.training import pretrain_cli

    assert trainable_methods() == ["fti", "single", "searle", "lincir", "pic2word", "scot"]
    assert pretrain_cli.TRAINABLE_METHODS == tuple(trainable_methods())
    assert {m: get_training(m).data for m in trainable_methods()} == {
        "fti": "images", "single": "images", "searle": "images", "lincir": "captions", "pic2word": "images",
        "scot": "images"}
    assert {m: get_training(m).network_config for m in trainable_methods()} == {
        "fti": "fti4cir", "single": "single", "searle": "searle", "lincir": "lincir", "pic2word": "pic2word",
        "scot": "scot"}
    with pytest.raises(ZscirError, match=r"--method 'context-i2w' is not a trainable method: expected one of fti, "):
        get_training("context-i2w")
    code, _, err = run(["pretrain", "--method", "context-i2w"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "--method" in lines[0] and "scot" in lines[0], err
    # an option of another method is one line naming it, before any work
    code, _, err = run(["pretrain", "--method", "fti", "--oti-steps", "5"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and lines == ["error: --oti-steps is an option of --method searle, not of --method fti"], err
    code, out, _ = run(["pretrain", "--help"], capsys)
    assert code == 0 and "[fti|single|searle|lincir|pic2word|scot]" in " ".join(out.split())


def test_default_network_configs_build_the_registered_networks(tiny_backbone):
    from zscir.training.pretrain import PretrainConfig

    for m in trainable_methods():
        cfg = PretrainConfig(method=m).resolved_network_config()
        net = create_mapping_network(cfg, backbone_dims(tiny_backbone))
        assert isinstance(net, METHODS[m].network), m
    assert PretrainConfig(method="pic2word").resolved_network_config() == {
        "method": "pic2word", "middle_dim": 512, "n_layer": 2, "dropout": 0.1}
    with pytest.raises(ZscirError, match="is for method 'lincir', not --method pic2word"):
        PretrainConfig(method="pic2word", network_config="lincir").resolved_network_config()


# ----------------------------------------------------------------- Pic2Word
def infonce_reference(a, b, scale):
    """Symmetric CLIP InfoNCE with python loops: mean over i of -log softmax_j(s cos(a_i, b_j))[i], and the same
    from b's side, averaged."""
    n = len(a)
    cos = [[float(F.cosine_similarity(a[i], b[j], dim=0)) for j in range(n)] for i in range(n)]
    a_to_b = sum(-scale * cos[i][i] + math.log(sum(math.exp(scale * cos[i][j]) for j in range(n))) for i in range(n))
    b_to_a = sum(-scale * cos[j][j] + math.log(sum(math.exp(scale * cos[i][j]) for i in range(n))) for j in range(n))
    return (a_to_b + b_to_a) / (2 * n)


def test_clip_contrastive_loss_against_loops_and_a_value_by_hand():
    torch.manual_seed(1)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert float(clip_contrastive_loss(a, b, 3.0)) == pytest.approx(infonce_reference(a, b, 3.0), rel=1e-5)
    # two orthogonal pairs, each matched exactly: every row is log(1 + e^-s)
    eye = torch.eye(2)
    assert float(clip_contrastive_loss(eye, 2 * eye, 4.0)) == pytest.approx(math.log(1 + math.exp(-4.0)), rel=1e-5)
    # swapping the two texts: every row is log(1 + e^s)
    assert float(clip_contrastive_loss(eye, eye.flip(0), 4.0)) == pytest.approx(math.log(1 + math.exp(4.0)), rel=1e-5)


def test_pic2word_loss_against_a_per_image_reference(tiny_backbone):
    bb = tiny_backbone
    torch.manual_seed(2)
    net = create_mapping_network("pic2word-tiny", backbone_dims(bb)).eval()
    pooled = torch.randn(6, bb.embed_dim)
    loss, terms = pic2word_loss(net, bb, pooled)
    scale = float(bb.model.logit_scale.exp())
    # each image on its own: its pseudo-word in "a photo of *"
    with torch.no_grad():
        text = torch.stack([bb.encode_prompts(["a photo of *"], net(pooled[i:i + 1]).subject)[0] for i in range(6)])
    want = infonce_reference(pooled, text, scale)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4) and float(terms["contrastive"]) == float(loss.detach())
    assert want > 0.1  # not a degenerate zero
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ----------------------------------------------------------------- LinCIR
def test_keyword_mask_replaces_each_run_of_keywords_with_one_slot():
    from zscir.training.pretrain_data import keyword_mask, lincir_caption

    assert keyword_mask("a red car parked near a fence", rule_tags) == "* parked near *"
    assert keyword_mask("two dogs running on the grass", rule_tags) == "two * running on *"
    assert keyword_mask("running quickly", rule_tags) == "a photo of *"      # no keyword: the official fallback
    assert lincir_caption("A $5 Red * Car") == "a 5 red car"


def test_lincir_noise_is_a_uniform_scale_times_gaussian():
    t = torch.zeros(4, 3)
    torch.manual_seed(7)
    got = lincir_noise(t)
    torch.manual_seed(7)
    u, n = torch.rand(4, 1), torch.randn(4, 3)
    assert torch.equal(got, u * n)


def test_lincir_loss_against_a_per_caption_reference(tiny_backbone):
    bb = tiny_backbone
    torch.manual_seed(3)
    net = create_mapping_network("lincir-tiny", backbone_dims(bb)).eval()
    captions = ["a red car parked near a fence", "a small cat sleeping", "running quickly"]
    masked = ["* parked near *", "* sleeping", "a photo of *"]
    t = bb.encode_text(captions)
    noise = 0.5 * torch.randn_like(t)
    loss, terms = lincir_loss(net, bb, t, masked, noise)
    total = 0.0
    with torch.no_grad():
        for i, m in enumerate(masked):
            w = net(t[i:i + 1] + noise[i:i + 1]).subject
            pred = bb.encode_prompts([m], w.repeat(m.split().count("*"), 1))[0]
            total += sum((float(pred[d]) - float(t[i, d])) ** 2 for d in range(t.shape[1]))
    want = total / t.numel()
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4) and float(terms["mse"]) == float(loss.detach())
    assert want > 1e-3
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_caption_set_reads_a_text_file_and_caches_text_features(tmp_path, tiny_backbone, monkeypatch):
    from zscir.training.pretrain_data import build_caption_set

    f = tmp_path / "captions.txt"
    f.write_text("A red car parked near a fence\n\na small cat sleeping\n")
    data, record = build_caption_set(str(f), None, tiny_backbone, tmp_path / "cache", "rules", log=lambda *_: None)
    assert len(data) == 2 and data.masked == ["* parked near *", "* sleeping"]
    assert record["num_captions"] == 2 and record["without_keyword"] == 0
    batch = data.batch(np.array([1, 0]))
    want = tiny_backbone.encode_text(["a small cat sleeping", "a red car parked near a fence"])
    torch.testing.assert_close(batch.text_features, want, atol=2e-3, rtol=2e-3)  # fp16 cache
    assert batch.masked == ["* sleeping", "* parked near *"]
    (cached,) = (tmp_path / "cache" / "text").glob("*.npy")
    again, _ = build_caption_set(str(f), None, tiny_backbone, tmp_path / "cache", "rules", log=lambda *_: None)
    assert np.array_equal(np.asarray(again.text_features), np.load(cached))
    with pytest.raises(ZscirError, match="no such file"):
        build_caption_set(str(tmp_path / "missing.txt"), None, tiny_backbone, tmp_path, "rules")
    class NoTagger:  # as the fti4cir-official splitter: a split() but no word tagger (and no spaCy download here)
        name = "fti4cir-official"

    monkeypatch.setattr("zscir.training.pretrain_data.get_splitter", lambda name: NoTagger())
    with pytest.raises(ZscirError, match="--splitter fti4cir-official has no word tagger"):
        build_caption_set(str(f), None, tiny_backbone, tmp_path, "fti4cir-official")


def test_lincir_refuses_images(tmp_path):
    from zscir.training.pretrain import PretrainConfig, run_pretraining

    with pytest.raises(ZscirError, match="--method lincir trains on captions alone: pass --captions FILE, not --images"):
        run_pretraining(PretrainConfig(method="lincir", out=str(tmp_path / "r")), images=str(tmp_path))


# ----------------------------------------------------------------- kill / resume
def _log(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pic2word", "lincir", "searle", "scot"])
def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path, features, method):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, DRIVER, "train", features, str(straight), "--method", method], env=ENV, check=True)
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, DRIVER, "train", features, str(killed), "--method", method],
                            env={**ENV, **pause_env(marker, {"pretrain.step": 4})}, stderr=subprocess.DEVNULL,
                            preexec_fn=interruptible)
    wait_paused(proc, marker)  # the child waits after its 4th step until the signal, however fast the machine
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode != 0 and not (killed / "model.safetensors").exists(), "the run finished first"
    subprocess.run([sys.executable, DRIVER, "train", features, str(killed), "--method", method, "--resume"],
                   env=ENV, check=True)
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    want, got = _log(straight), _log(killed)
    assert [e["step"] for e in got] == list(range(1, 10))
    assert [e["loss"] for e in got] == [e["loss"] for e in want]
    assert want[-1]["loss"] < want[0]["loss"]  # it learns
    meta = json.loads((killed / "model.json").read_text())
    assert meta["method"] == method and meta["training"]["steps"] == 9


# ----------------------------------------------------------------- one query encoder for trained and imported
@pytest.mark.parametrize("method", ["pic2word", "lincir", "searle"])
def test_trained_and_imported_checkpoints_give_the_same_queries(tmp_path, tiny_backbone, method):
    from zscir.importers import import_checkpoint
    from zscir.models.query import load_query_encoder
    from zscir.training.pretrain import PretrainConfig, train

    sys.path.insert(0, str(Path(DRIVER).parent))
    try:
        import pretrain_driver
    finally:
        sys.path.pop(0)
    bb = tiny_backbone
    torch.manual_seed(6)
    feats = bb.encode_image(torch.randn(16, 3, 32, 32))
    npz = tmp_path / "f.npz"
    np.savez(npz, pooled=feats.pooled.numpy().astype(np.float16), tokens=np.zeros((16, 1, 1), np.float16))
    _, data = pretrain_driver.load(str(npz), method)  # searle: with its OTI tokens (3 steps)
    cfg = PretrainConfig(out=str(tmp_path / "run"), method=method, network_config=f"{method}-tiny", epochs=1,
                         batch_size=8, lr=1e-3, save_every_steps=0)
    ckpt = train(cfg, bb, data, progress_bar=False)
    state = load_file(ckpt)
    official = tmp_path / f"{method}.pt"
    if method == "pic2word":   # google-research/composed_image_retrieval: DDP-prefixed state_dict_img2text
        torch.save({"epoch": 1, "name": "p2w", "state_dict": {},
                    "state_dict_img2text": {f"module.{k}": v for k, v in state.items()}}, official)
    else:  # navervision/lincir save_phi and miccunifi/SEARLE train_phi: {"epoch", "Phi": phi.state_dict(), ...}
        torch.save({"epoch": 1, "Phi": {k.removeprefix("phi."): v for k, v in state.items()}}, official)
    import_checkpoint(official, method, tmp_path / "imported", backbone=bb)

    ref = ImageFeatures(torch.randn(2, bb.embed_dim), None)
    texts = TEXTS if method == "pic2word" else ["costs $ 5 and is red", "shows two dogs"]
    trained = load_query_encoder(str(ckpt), backbone=bb)
    with pytest.warns(UserWarning, match="CC BY-NC") if method != "pic2word" else contextlib.nullcontext():
        imported = load_query_encoder(str(tmp_path / "imported.safetensors"), backbone=bb)
    assert type(trained) is type(imported) and trained.method is imported.method is METHODS[method]
    q_trained, q_imported = trained.encode_queries(ref, texts), imported.encode_queries(ref, texts)
    torch.testing.assert_close(q_trained, q_imported, atol=1e-6, rtol=0)
    assert float((q_trained[0] - q_trained[1]).norm()) > 1e-3  # different queries, not a constant
