"""`zscir world train-backbone --precision`: bf16 autocast of the towers trains; fp32 is the code as it was; a CPU
without native bf16 is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zscir.cli import main
from zscir.errors import ZscirError
from zscir.world import train_backbone as tb

QUIET = dict(log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def model_name(tmp_path_factory):
    """A registered open_clip config small enough to train a few steps in a test."""
    import open_clip

    folder = tmp_path_factory.mktemp("model_configs")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "world-precision-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return "world-precision-test"


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU's flags as one with AVX512-BF16 (elsewhere bf16 is emulated: slow, still correct on a tiny model)."""
    monkeypatch.setattr("zscir.utils.cpu.cpu_flags", lambda *a: frozenset({"avx512f", "avx512_bf16"}))


def tiny_config(model_name, **changes) -> tb.TrainConfig:
    return tb.TrainConfig(**{**dict(model=model_name, num_scenes=64, batch_size=16, steps=8, warmup_steps=1, save_every=100,
                                    render_workers=1, captions_per_scene=2, text_lock_steps=2), **changes})


def history(cfg, tmp_path, name):
    tb.train_backbone(cfg, tmp_path / f"{name}.safetensors", tmp_path / name, **QUIET)
    state = torch.load(tmp_path / name / "state.pt", weights_only=True)
    return state["history"], state


def test_bf16_trains_like_fp32_with_fp32_master_weights(model_name, tmp_path, native_bf16):
    fp32, _ = history(tiny_config(model_name), tmp_path, "fp32")
    bf16, state = history(tiny_config(model_name, precision="bf16"), tmp_path, "bf16")
    assert bf16 != fp32  # the towers did run in bf16
    assert np.mean(bf16[-2:]) < 0.6 * np.mean(bf16[:2])  # its loss falls (measured 10.0, 8.1 -> 3.2, 3.4)
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.5  # and follows fp32's (measured within 0.09)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert json.loads(state["config"])["precision"] == "bf16"
    record = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert record["precision"] == "bf16"


def test_fp32_enters_no_autocast_and_is_the_step_as_it_was(model_name, tmp_path, monkeypatch):
    """The fp32 step against the loop body before the option existed (image, then text, normalised; ClipLoss)."""
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    from zscir.backbone import load_backbone

    def no_autocast(*a, **k):
        raise AssertionError("fp32 entered an autocast context")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    torch.manual_seed(0)
    model = load_backbone(model_name).model.train()
    rng = np.random.default_rng(0)
    x = torch.randn(8, 3, 24, 24)
    t = torch.from_numpy(rng.integers(1, 400, size=(8, 12))).int()
    t[:, 0], t[:, -1] = 49406, 49407
    t[:4, 6:] = 0
    t[:4, 6] = 49407
    negatives = torch.flip(t, dims=[0])
    scale = model.logit_scale.exp()
    images = F.normalize(model.encode_image(x), dim=-1)
    reference = ClipLoss()(images, F.normalize(tb.encode_text_bucketed(model, t), dim=-1), scale)
    assert torch.equal(tb.batch_loss(model, x, t, None, ClipLoss()), reference)
    assert torch.equal(tb.batch_loss(model, x, t, None, ClipLoss(), "fp32"), reference)
    texts = F.normalize(tb.encode_text_bucketed(model, torch.cat([t, negatives])), dim=-1)
    reference = tb.clip_loss_with_text_negatives(images, texts[:8], texts[8:], scale)
    assert torch.equal(tb.batch_loss(model, x, t, negatives, ClipLoss()), reference)
    # and a whole run: the default config is fp32 and trains without autocast
    assert tb.TrainConfig().precision == "fp32"
    default, _ = history(tiny_config(model_name, steps=3), tmp_path, "default")
    explicit, _ = history(tiny_config(model_name, steps=3, precision="fp32"), tmp_path, "explicit")
    assert default == explicit


def one_line_error(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return exit_info.value.code, err[0]


def test_bf16_on_a_cpu_without_native_bf16_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("zscir.utils.cpu.cpu_flags", lambda *a: frozenset({"avx2", "avx512f"}))
    out, run = tmp_path / "out" / "c.safetensors", tmp_path / "run"
    code, line = one_line_error(["world", "train-backbone", "--precision", "bf16", "--out", out, "--run-dir", run], capsys)
    assert code in (1, 2)
    assert "--precision bf16" in line and "avx512_bf16" in line and "fp32" in line, line
    assert not run.exists() and not out.exists()
    with pytest.raises(ZscirError, match="avx512_bf16"):  # the library refuses as the command does: never fp32 instead
        tb.train_backbone(tb.TrainConfig(precision="bf16"), out, run, **QUIET)
    assert not run.exists()


def test_unknown_precisions_are_refused(capsys):
    with pytest.raises(ZscirError, match="--precision 'fp16'"):
        tb.TrainConfig(precision="fp16")
    code, line = one_line_error(["world", "train-backbone", "--precision", "fp16"], capsys)
    assert code == 2 and "--precision" in line


def test_a_run_saved_before_the_option_resumes_and_another_precision_does_not():
    cfg = tb.TrainConfig(steps=10)
    old = {k: v for k, v in json.loads(json.dumps(cfg.__dict__)).items() if k != "precision"}
    assert tb.same_config(json.dumps(old, sort_keys=True), cfg)
    assert not tb.same_config(json.dumps(old), tb.TrainConfig(steps=10, precision="bf16"))
    assert not tb.same_config(json.dumps({**old, "precision": "bf16"}), cfg)
    assert not tb.same_config(json.dumps({**old, "steps": 11}), cfg)
