"""The backbone as its weights were trained: OpenAI tags build QuickGELU and say so in the identity.

A fake Hugging Face cache entry (the hub layout open_clip reads offline:
models--ORG--REPO/refs/main + snapshots/COMMIT/open_clip_model.safetensors)
holds random ViT-B-32 weights, so ``load_backbone("ViT-B-32", "openai")`` runs
its real loading path without a download.
"""

import os

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from zscir.backbone import load_backbone
from zscir.backbone.loading import model_uses_quick_gelu, resolve_identity
from zscir.errors import ZscirError
from zscir.models.query import backbone_for


@pytest.fixture(scope="module")
def fake_openai_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    hub = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")   # timm/vit_base_patch32_clip_224.openai
    repo = cache / ("models--" + hub.replace("/", "--"))
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", force_quick_gelu=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(snap / "open_clip_model.safetensors"))
    return cache, state


def test_openai_tag_builds_quick_gelu_and_records_it(fake_openai_cache, monkeypatch):
    cache, state = fake_openai_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load_backbone("ViT-B-32", "openai", cache_dir=str(cache))
    assert model_uses_quick_gelu(bb.model)
    assert bb.identity == {"model": "ViT-B-32", "pretrained": "openai", "activation": "quick_gelu"}
    assert resolve_identity("ViT-B-32", "openai") == bb.identity       # what an import records without loading
    got = bb.model.state_dict()
    assert torch.equal(got["visual.conv1.weight"], state["visual.conv1.weight"].float())
    mlp = bb.model.transformer.resblocks[0].mlp
    x = torch.randn(3, mlp.c_fc.in_features)
    h = mlp.c_fc(x)
    torch.testing.assert_close(mlp(x), mlp.c_proj(h * torch.sigmoid(1.702 * h)))   # QuickGELU, not GELU
    # a checkpoint recorded on the GELU build of the same weights is refused
    with pytest.raises(ZscirError, match="trained on backbone"):
        backbone_for({"backbone": {"model": "ViT-B-32", "pretrained": "openai"}}, bb, "old.safetensors")


def test_gelu_backbones_keep_their_identity(tiny_backbone):
    assert "activation" not in tiny_backbone.identity and not model_uses_quick_gelu(tiny_backbone.model)
    assert resolve_identity("ViT-B-32", "laion2b_s34b_b79k") == {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    assert resolve_identity("ViT-L-14", "openai")["activation"] == "quick_gelu"


def test_missing_weights_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZscirError) as err:
        load_backbone("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert "not available offline" in str(err.value) and "\n" not in str(err.value)


def official_targetpad(image, size):
    """SEARLE / FTI4CIR targetpad_transform: TargetPad (torchvision pad), Resize, CenterCrop, then RGB."""
    from torchvision.transforms import functional as TF

    w, h = image.size
    if max(w, h) / min(w, h) >= 1.25:
        scaled = max(w, h) / 1.25
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        image = TF.pad(image, [hp, vp, hp, vp], 0, "constant")
    image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), size)
    return TF.to_tensor(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK"])
def test_rgb_conversion_after_pad_and_crop_as_official(mode):
    import numpy as np
    from PIL import Image

    from zscir.backbone.preprocess import make_preprocess

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 90, 4), dtype=np.uint8), "RGBA")   # elongated: gets padded
    image = {"RGB": rgba.convert("RGB"), "L": rgba.convert("L"), "P": rgba.convert("RGB").quantize(16),
             "RGBA": rgba, "CMYK": rgba.convert("RGB").convert("CMYK")}[mode]
    prep = make_preprocess("targetpad", 32, mean=(0, 0, 0), std=(1, 1, 1))
    ours = prep(image)
    torch.testing.assert_close(ours, official_targetpad(image, 32), atol=0, rtol=0)
    convert_first = prep(image.convert("RGB"))
    # converting first is the same for RGB and greyscale, and changes palette, RGBA and CMYK pixels
    assert torch.equal(convert_first, ours) == (mode in ("RGB", "L"))
