"""Importing released checkpoints: each format built as its official code saves it, imported, and
checked weight by weight; the composed query feature against a straightforward reference written
here from the official code's description (loops, einsum, the official token surgery)."""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap
import types
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from zscir.backbone import ImageFeatures
from zscir.checkpoint import load_checkpoint
from zscir.errors import ZscirError
from zscir.importers import IMPORTERS, import_checkpoint
from zscir.models.query import backbone_for, load_query_encoder

TEXTS = ["is red and has a collar", "shows two dogs instead of one on the grass"]
DOLLAR_TEXTS = ["costs $ 5 and is red", "shows two dogs"]    # a caption's own "$": LinCIR fills it too


# ----------------------------------------------------------------- the reference text encoding
def encode_reference(bb, text: str, slots: dict[int, torch.Tensor] | None = None, token_ids: dict[int, int] | None = None):
    """open_clip's text tower by hand: tokenize, optionally change token ids or replace the embeddings
    at positions ``slots``, add positions, transformer with the causal mask, ln_final, end-of-text
    token (argmax id), projection."""
    m = bb.model
    tokens = bb.tokenizer([text], context_length=bb.context_length)[0]
    for pos, tid in (token_ids or {}).items():
        tokens[pos] = tid
    x = m.token_embedding(tokens).clone()
    for pos, vec in (slots or {}).items():
        x[pos] = vec
    x = x + m.positional_embedding
    x = m.transformer(x.unsqueeze(0), attn_mask=m.attn_mask)[0]
    x = m.ln_final(x)
    return x[int(tokens.argmax())] @ m.text_projection


def token_positions(bb, text: str, word: str) -> list[int]:
    tid = bb.tokenizer.encode(word)
    assert len(tid) == 1
    tokens = bb.tokenizer([text], context_length=bb.context_length)[0]
    return (tokens == tid[0]).nonzero().flatten().tolist()


def phi_ref(sd, x, prefix="layers."):
    h = F.gelu(x @ sd[f"{prefix}0.weight"].T + sd[f"{prefix}0.bias"])
    h = F.gelu(h @ sd[f"{prefix}3.weight"].T + sd[f"{prefix}3.bias"])
    return h @ sd[f"{prefix}6.weight"].T + sd[f"{prefix}6.bias"]


def relu_mlp_ref(sd, x, prefix, out, n=2):
    for i in range(n):
        x = torch.relu(x @ sd[f"{prefix}{i}.0.weight"].T + sd[f"{prefix}{i}.0.bias"])
    return x @ sd[f"{out}.weight"].T + sd[f"{out}.bias"]


def layer_norm(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])


@pytest.fixture(scope="module")
def ref_feats(tiny_backbone):
    torch.manual_seed(3)
    bb = tiny_backbone
    tokens = torch.randn(len(TEXTS), 1 + 16, bb.vision_width)
    return ImageFeatures(torch.randn(len(TEXTS), bb.embed_dim), tokens)


def check_weights(out, mapping: dict[str, torch.Tensor]):
    state, meta = load_checkpoint(out)
    assert set(state) == set(mapping)
    for key, tensor in mapping.items():
        assert torch.equal(state[key], tensor.float()), key
    return meta


def composed(out, bb, feats):
    encoder = load_query_encoder(str(out), backbone=bb)
    return encoder.encode_queries(feats, TEXTS), encoder


def g(*shape):
    return torch.randn(*shape) * 0.2


# ----------------------------------------------------------------- SEARLE / LinCIR
def phi_state(d_in, hidden, d_out):
    return {"layers.0.weight": g(hidden, d_in), "layers.0.bias": g(hidden), "layers.3.weight": g(hidden, hidden),
            "layers.3.bias": g(hidden), "layers.6.weight": g(d_out, hidden), "layers.6.bias": g(d_out)}


@pytest.mark.parametrize("fmt", ["searle", "lincir"])
def test_searle_and_lincir_import(tmp_path, tiny_backbone, ref_feats, fmt):
    bb = tiny_backbone
    torch.manual_seed(4)
    sd = phi_state(bb.embed_dim, 4 * bb.embed_dim, bb.token_dim)
    src = tmp_path / f"{fmt}.pt"
    if fmt == "searle":  # a training checkpoint: optimizer, grad scaler and a pickled path beside Phi
        torch.save({"Phi": sd, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}]},
                    "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "path": pathlib.PurePosixPath("/runs/x")}, src)
    else:
        torch.save({"Phi": sd}, src)
    meta = import_checkpoint(src, fmt, tmp_path / "ckpt", backbone=bb)
    check_weights(tmp_path / "ckpt", {f"phi.{k}": v for k, v in sd.items()})
    assert meta["query"]["prompt"].startswith("a photo of $ that {text}") and meta["preprocess"] == ("targetpad-1.25" if fmt == "searle" else "lincir")
    assert meta["source"]["license"] == "CC BY-NC 4.0" and "non-commercial" in meta["source"]["license_note"]
    with pytest.warns(UserWarning, match="CC BY-NC 4.0"):
        encoder = load_query_encoder(str(tmp_path / "ckpt.safetensors"), backbone=bb)
    got = encoder.encode_queries(ref_feats, DOLLAR_TEXTS)
    for i, text in enumerate(DOLLAR_TEXTS):
        prompt = f"a photo of $ that {text}"            # the official prompt, with its own "$" token
        pos = token_positions(bb, prompt, "$")
        word = phi_ref(sd, ref_feats.pooled[i])
        # SEARLE fills the first "$" (a caption's own stays the "$" token); LinCIR fills every "$"
        want = encode_reference(bb, prompt, {p: word for p in (pos[:1] if fmt == "searle" else pos)})
        torch.testing.assert_close(got[i], F.normalize(want, dim=-1), atol=2e-5, rtol=0)


def lincir_pixels_reference(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """LinCIR's official preprocessing, written from its description: transformers' CLIPImageProcessor
    (RGB, short side to ``size`` with PIL bicubic, center crop with the offset floored, x * (1/255) in
    float64, normalised in float32) and the fp16 model's pixels (rounded to fp16)."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    a = np.asarray(image.convert("RGB").resize(new, Image.BICUBIC))
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    a = (a[top:top + size, left:left + size].astype(np.float64) * (1 / 255)).astype(np.float32)
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(a.astype(np.float16).astype(np.float32).transpose(2, 0, 1).copy())


def odd_margin_image(size: int, seed: int) -> Image.Image:
    """A 2:1-ish photo whose resized long side minus ``size`` is 2k+1 with k odd: floor gives k, torchvision's
    round (half to even) k+1, so the two crops differ by one pixel."""
    long_side = size + 2 * 3 + 1 if size < 100 else size + 2 * 17 + 1
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (2 * size, 2 * long_side, 3), dtype=np.uint8))


def test_lincir_preprocessing_is_its_official_evaluation_crop_floor_and_fp16_pixels():
    from zscir.backbone import make_preprocess
    from zscir.backbone.preprocess import OPENAI_MEAN, OPENAI_STD

    image = odd_margin_image(224, 0)               # resized to 259 x 224: offset 17 (floor), 18 (round)
    want = lincir_pixels_reference(image, 224, OPENAI_MEAN, OPENAI_STD)
    got = make_preprocess("lincir", 224)(image)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(got, got.half().float())     # every pixel is an fp16 value
    clip = make_preprocess("clip", 224)(image)      # torchvision's crop: one pixel to the right
    assert not torch.equal(clip.half().float(), want)
    assert (clip - want).abs().max() > 0.1


def test_lincir_query_uses_its_preprocessing_entry(tmp_path, tiny_backbone):
    bb = tiny_backbone
    torch.manual_seed(6)
    sd = phi_state(bb.embed_dim, 4 * bb.embed_dim, bb.token_dim)
    torch.save({"Phi": sd}, tmp_path / "lincir.pt")
    import_checkpoint(tmp_path / "lincir.pt", "lincir", tmp_path / "ckpt", backbone=bb)
    with pytest.warns(UserWarning, match="CC BY-NC 4.0"):
        encoder = load_query_encoder(str(tmp_path / "ckpt.safetensors"), backbone=bb)
    size, prep = encoder.backbone.preprocess.size, encoder.backbone.preprocess
    assert encoder.backbone.preprocess_name == "lincir"
    image = odd_margin_image(size, 1)
    pixels = lincir_pixels_reference(image, size, prep.mean, prep.std)
    assert torch.equal(prep(image), pixels)
    got = encoder.encode_queries(encoder.backbone.encode_image(prep(image)[None]), TEXTS[:1])
    prompt = f"a photo of $ that {TEXTS[0]}"
    word = phi_ref(sd, bb.encode_image(pixels[None]).pooled[0])
    want = encode_reference(bb, prompt, {p: word for p in token_positions(bb, prompt, "$")})
    torch.testing.assert_close(got[0], F.normalize(want, dim=-1), atol=2e-5, rtol=0)


# ----------------------------------------------------------------- Pic2Word
def test_pic2word_import_strips_module_prefix(tmp_path, tiny_backbone, ref_feats):
    bb = tiny_backbone
    torch.manual_seed(5)
    sd = {"layers.0.0.weight": g(48, bb.embed_dim), "layers.0.0.bias": g(48), "layers.1.0.weight": g(48, 48),
          "layers.1.0.bias": g(48), "fc_out.weight": g(bb.token_dim, 48), "fc_out.bias": g(bb.token_dim)}
    src = tmp_path / "pic2word_model.pt"
    torch.save({"epoch": 30, "name": "pic2word", "state_dict": {"module.logit_scale": torch.tensor(4.6)},
                "state_dict_img2text": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}, src)
    meta = import_checkpoint(src, "pic2word", tmp_path / "p2w", backbone=bb)
    assert meta["config"] == {"method": "pic2word", "middle_dim": 48, "n_layer": 2, "dropout": 0.1}
    assert meta["preprocess"] == "clip" and meta["query"]["fiq_captions"] == "pic2word"
    check_weights(tmp_path / "p2w", sd)
    got, _ = composed(tmp_path / "p2w.safetensors", bb, ref_feats)
    for i, text in enumerate(TEXTS):
        prompt = f"a photo of * , {text}"
        (pos,) = token_positions(bb, prompt, "*")
        want = encode_reference(bb, prompt, {pos: relu_mlp_ref(sd, ref_feats.pooled[i], "layers.", "fc_out")})
        torch.testing.assert_close(got[i], F.normalize(want, dim=-1), atol=2e-5, rtol=0)


# ----------------------------------------------------------------- Context-I2W
def context_state(W, T, D, middle=40, depth=2, inner=128, latents=4, ff=2):
    sd = {"to_c.weight": g(W, T), "W_R.weight_g": g(W, 1).abs() + 0.5, "W_R.weight_v": g(W, W),
          "ln_post.weight": 1 + g(W), "ln_post.bias": g(W), "ln_post_local.weight": 1 + g(W), "ln_post_local.bias": g(W),
          "proj": g(W, D), "proj_local": g(W, D), "local_gate": torch.tensor([0.7]),
          "VT_Extractor.latents": g(latents, W), "VT_Extractor.norm.weight": 1 + g(W), "VT_Extractor.norm.bias": g(W)}
    for p, out in (("layers.", "fc_out"), ("layers_local.", "fc_out_local")):
        sd.update({f"{p}0.0.weight": g(middle, D), f"{p}0.0.bias": g(middle), f"{p}1.0.weight": g(middle, middle),
                   f"{p}1.0.bias": g(middle), f"{out}.weight": g(D, middle), f"{out}.bias": g(D)})
    for i in range(depth):
        p = f"VT_Extractor.layers.{i}."
        sd.update({p + "0.norm_media.weight": 1 + g(W), p + "0.norm_media.bias": g(W),
                   p + "0.norm_latents.weight": 1 + g(W), p + "0.norm_latents.bias": g(W),
                   p + "0.to_q.weight": g(inner, W), p + "0.to_kv.weight": g(2 * inner, W), p + "0.to_out.weight": g(W, inner),
                   p + "1.0.weight": 1 + g(W), p + "1.0.bias": g(W), p + "1.1.weight": g(ff * W, W), p + "1.3.weight": g(W, ff * W)})
    return sd


def context_i2w_ref(sd, c, x, depth=2, heads=2, dim_head=64):
    """IM2TEXT_OWM_Attn.forward for one image, written out."""
    w = sd["W_R.weight_g"] * sd["W_R.weight_v"] / sd["W_R.weight_v"].norm(dim=1, keepdim=True)
    x = (x @ w.T) * (c @ sd["to_c.weight"].T)
    media, lat = x[1:], sd["VT_Extractor.latents"]
    for i in range(depth):
        p = f"VT_Extractor.layers.{i}."
        m_, l_ = layer_norm(media, sd, p + "0.norm_media"), layer_norm(lat, sd, p + "0.norm_latents")
        q = l_ @ sd[p + "0.to_q.weight"].T
        k, v = (torch.cat([m_, l_]) @ sd[p + "0.to_kv.weight"].T).chunk(2, dim=-1)
        outs = []
        for h in range(heads):
            s = slice(h * dim_head, (h + 1) * dim_head)
            a = torch.softmax((q[:, s] * dim_head ** -0.5) @ k[:, s].T, dim=-1)
            outs.append(a @ v[:, s])
        lat = torch.cat(outs, dim=-1) @ sd[p + "0.to_out.weight"].T + lat
        f = layer_norm(lat, sd, p + "1.0")
        lat = F.gelu(f @ sd[p + "1.1.weight"].T) @ sd[p + "1.3.weight"].T + lat
    local = layer_norm(lat, sd, "VT_Extractor.norm").mean(dim=0)
    glob = relu_mlp_ref(sd, layer_norm(x[0], sd, "ln_post") @ sd["proj"], "layers.", "fc_out")
    loc = relu_mlp_ref(sd, layer_norm(local, sd, "ln_post_local") @ sd["proj_local"], "layers_local.", "fc_out_local")
    return glob + loc * torch.tanh(sd["local_gate"])


def test_context_i2w_import(tmp_path, tiny_backbone, ref_feats):
    bb = tiny_backbone
    torch.manual_seed(6)
    sd = context_state(bb.vision_width, bb.embed_dim, bb.token_dim)
    src = tmp_path / "context_i2w.pt"
    torch.save({"epoch": 12, "name": "ci2w", "state_dict": {}, "state_dict_img2text": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": []}}, src)
    meta = import_checkpoint(src, "context-i2w", tmp_path / "ci2w", backbone=bb)
    assert meta["config"]["depth"] == 2 and meta["config"]["heads"] == 2 and meta["config"]["ff_mult"] == 2
    check_weights(tmp_path / "ci2w", sd)
    got, encoder = composed(tmp_path / "ci2w.safetensors", bb, ref_feats)
    assert encoder.needs_tokens
    replace_id = bb.model.token_embedding.weight.shape[0] - 3     # Context-I2W's <|replace|> token
    for i, text in enumerate(TEXTS):
        prompt = f"a photo of * , {text}"
        (pos,) = token_positions(bb, prompt, "*")
        context = encode_reference(bb, prompt, token_ids={pos: replace_id})
        word = context_i2w_ref(sd, context, ref_feats.tokens[i])
        want = encode_reference(bb, prompt, {pos: word})
        torch.testing.assert_close(got[i], F.normalize(want, dim=-1), atol=2e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["lincir", "context-i2w", "searle"])
def test_a_long_query_counts_once_as_truncated(tmp_path, tiny_backbone, ref_feats, fmt):
    """LinCIR and Context-I2W tokenize a query's prompt twice (slot count / context, then the query):
    one prompt cut at the context length is one truncated prompt, as for SEARLE."""
    bb = tiny_backbone
    torch.manual_seed(6)
    if fmt == "context-i2w":
        sd = {f"module.{k}": v for k, v in context_state(bb.vision_width, bb.embed_dim, bb.token_dim).items()}
        torch.save({"state_dict": {}, "state_dict_img2text": sd}, tmp_path / "src.pt")
    else:
        torch.save({"Phi": phi_state(bb.embed_dim, 4 * bb.embed_dim, bb.token_dim)}, tmp_path / "src.pt")
    import_checkpoint(tmp_path / "src.pt", fmt, tmp_path / "ckpt", backbone=bb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = load_query_encoder(str(tmp_path / "ckpt.safetensors"), backbone=bb)
        before = encoder.backbone.truncated_prompts
        encoder.encode_queries(ref_feats, ["is red " * 60, TEXTS[1]])
    assert encoder.backbone.truncated_prompts - before == 1


# ----------------------------------------------------------------- FTI4CIR: a whole pickled module
STAND_IN_SOURCES = {
    "MHTransformer": '''
        import torch.nn as nn
        from torch.nn import functional as nnf

        class MlpTransformer(nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.fc1, self.act, self.fc2, self.dropout = nn.Linear(d, h), nnf.relu, nn.Linear(h, d), nn.Dropout(0.0)

        class MultiHeadAttention(nn.Module):
            def __init__(self, d, heads):
                super().__init__()
                self.num_heads, self.scale = heads, (d // heads) ** -0.5
                self.to_queries = nn.Linear(d, d, bias=False)
                self.to_keys_values = nn.Linear(d, 2 * d, bias=False)
                self.project = nn.Linear(d, d)
                self.dropout = nn.Dropout(0.0)

        class TransformerLayer(nn.Module):
            def __init__(self, d, heads, mlp_ratio):
                super().__init__()
                self.norm1, self.attn = nn.LayerNorm(d), MultiHeadAttention(d, heads)
                self.norm2, self.mlp = nn.LayerNorm(d), MlpTransformer(d, int(d * mlp_ratio))

        class Transformer(nn.Module):
            def __init__(self, d, heads, layers, mlp_ratio=2.0):
                super().__init__()
                self.enc_dec = False
                self.layers = nn.ModuleList([TransformerLayer(d, heads, mlp_ratio) for _ in range(layers)])
    ''',
    "i2t_model": '''
        import torch
        import torch.nn as nn
        import MHTransformer

        class Phi(nn.Module):
            def __init__(self, i, h, o, p):
                super().__init__()
                self.layers = nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Dropout(p), nn.Linear(h, h), nn.GELU(),
                                            nn.Dropout(p), nn.Linear(h, o))

        class IMG2TEXT(nn.Module):
            def __init__(self, W, token_feat, phi_s, phi_a, num_k, heads, layers, topk, epsilon):
                super().__init__()
                self.num_k, self.topk, self.epsilon = num_k, topk, epsilon
                self.phi_s, self.phi_a = phi_s, phi_a
                self.hy_regLoss, self.temperature = 1.4, 0.2
                self.local_atte_fc = nn.Sequential(nn.Linear(W, token_feat), nn.Sigmoid())
                self.cosine_criterion = nn.CosineEmbeddingLoss()
                self.criterion_target = torch.as_tensor([1])
                self.ortho_loss = torch.nn.MSELoss()
                self.transformer = MHTransformer.Transformer(W, heads, layers)
                self.templates = nn.Parameter(torch.randn(1, num_k, W))
    ''',
}


@pytest.fixture
def fti_release(tmp_path, tiny_backbone, request):
    """FTI4CIR_model.pth as the official train.py writes it: torch.save(img2text), classes i2t_model.* and
    MHTransformer.* (or src.i2t_model.*), made from stand-in classes in a temporary module directory."""
    bb = tiny_backbone
    code = tmp_path / "official"
    code.mkdir()
    for name, src in STAND_IN_SOURCES.items():
        (code / f"{name}.py").write_text(textwrap.dedent(src))
    sys.path.insert(0, str(code))
    try:
        import i2t_model  # noqa: E402

        torch.manual_seed(7)
        E, T, W = bb.embed_dim, bb.token_dim, bb.vision_width
        model = i2t_model.IMG2TEXT(W, E, i2t_model.Phi(E, 4 * E, T, 0.5), i2t_model.Phi(E, 4 * E, T, 0.5),
                                   num_k=8, heads=2, layers=2, topk=4, epsilon=0.1)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        if getattr(request, "param", "") == "src":
            for cls in (i2t_model.IMG2TEXT, i2t_model.Phi):
                cls.__module__ = "src.i2t_model"
            package = types.ModuleType("src")
            package.i2t_model = i2t_model
            sys.modules["src"], sys.modules["src.i2t_model"] = package, i2t_model
        path = tmp_path / "FTI4CIR_model.pth"
        torch.save(model, path)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        sys.path.remove(str(code))
        for name in ("i2t_model", "MHTransformer", "src.i2t_model", "src"):
            sys.modules.pop(name, None)
    return path, state


def fti_reference(sd, g_feat, tokens, text, bb, num_k=8, topk=4, eps=0.1, heads=2, layers=2):
    """IMG2TEXT.img_to_text for one image, as the official code computes it."""
    x = torch.cat([sd["templates"][0], tokens])
    W = x.shape[1]
    dh = W // heads
    for i in range(layers):
        p = f"transformer.layers.{i}."
        h = layer_norm(x, sd, p + "norm1")
        q = (h @ sd[p + "attn.to_queries.weight"].T).reshape(-1, heads, dh)
        kv = (h @ sd[p + "attn.to_keys_values.weight"].T).reshape(-1, 2, heads, dh)
        att = torch.einsum("nhd,mhd->nmh", q, kv[:, 0]) * dh ** -0.5
        out = torch.einsum("nmh,mhd->nhd", att.softmax(dim=1), kv[:, 1]).reshape(-1, W)
        x = x + out @ sd[p + "attn.project.weight"].T + sd[p + "attn.project.bias"]
        h = layer_norm(x, sd, p + "norm2")
        x = x + torch.relu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    latent = torch.sigmoid(x[:num_k] @ sd["local_atte_fc.0.weight"].T + sd["local_atte_fc.0.bias"])
    weights = torch.softmax(latent @ g_feat, dim=0)
    order = torch.argsort(weights, descending=True)[:topk]
    r = min(max(int((weights > eps).sum()), 1), topk)
    chosen = torch.sort(order[:r]).values
    attrs = phi_ref(sd, F.normalize(latent[chosen], dim=-1), "phi_a.layers.")
    subj = phi_ref(sd, g_feat, "phi_s.layers.")
    prompt = f"a photo of * with {'* ' * r}but " + text
    (first, *rest) = token_positions(bb, prompt, "*")
    slots = {first: subj, **{first + 2 + j: attrs[j] for j in range(r)}}    # token_replace(type=0)
    assert rest == [first + 2 + j for j in range(r)]
    return encode_reference(bb, prompt, slots), r


@pytest.mark.parametrize("fti_release", ["top-level", "src"], indirect=True)
def test_fti4cir_whole_module_pickle(tmp_path, tiny_backbone, ref_feats, fti_release):
    bb = tiny_backbone
    path, official = fti_release
    assert "i2t_model" not in sys.modules     # the import below cannot use the classes
    meta = import_checkpoint(path, "fti4cir", tmp_path / "fti", backbone=bb)
    assert meta["config"] == {"method": "fti", "num_queries": 8, "layers": 2, "heads": 2, "mlp_ratio": 2,
                                   "topk": 4, "epsilon": 0.1, "hidden_mult": 4, "dropout": 0.5}
    assert meta["source"]["notes"]["saved_class"].endswith("i2t_model.IMG2TEXT")
    names = {"templates": "queries", "local_atte_fc.0.weight": "to_latent.0.weight", "local_atte_fc.0.bias": "to_latent.0.bias"}
    for i in range(2):
        for a, b in (("norm1", "norm1"), ("attn.to_queries", "attn.to_q"), ("attn.to_keys_values", "attn.to_kv"),
                     ("attn.project", "attn.out"), ("norm2", "norm2"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
            for p in ("weight", "bias"):
                if f"transformer.layers.{i}.{a}.{p}" in official:
                    names[f"transformer.layers.{i}.{a}.{p}"] = f"blocks.{i}.{b}.{p}"
    for k in official:
        if k.startswith("phi_"):
            names[k] = k
    assert set(names) == set(official)     # every official weight has its zscir place
    check_weights(tmp_path / "fti", {names[k]: v for k, v in official.items() if k in names})
    got, _ = composed(tmp_path / "fti.safetensors", bb, ref_feats)
    counts = []
    for i, text in enumerate(TEXTS):
        want, r = fti_reference(official, ref_feats.pooled[i], ref_feats.tokens[i], text, bb)
        counts.append(r)
        torch.testing.assert_close(got[i], F.normalize(want, dim=-1), atol=2e-5, rtol=0)
    assert max(counts) > 1     # the attribute slots were exercised


# ----------------------------------------------------------------- refusals and bad files
class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os
        return (os.system, (self.cmd,))


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        import builtins
        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("kind", ["system", "exec"])
def test_malicious_pickle_refused_marker_never_written(tmp_path, tiny_backbone, kind):
    marker = tmp_path / "PWNED"
    payload = _System(f"touch {marker}") if kind == "system" else _Exec(f"open({str(marker)!r}, 'w').write('x')")
    src = tmp_path / "evil.pt"
    torch.save({"Phi": payload}, src)
    assert not marker.exists()
    with pytest.raises(ZscirError) as err:
        import_checkpoint(src, "searle", tmp_path / "out", backbone=tiny_backbone)
    msg = str(err.value)
    assert "\n" not in msg and "refused" in msg
    assert ("posix.system" in msg or "os.system" in msg or "nt.system" in msg) if kind == "system" else "builtins.exec" in msg
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.fixture
def searle_file(tmp_path, tiny_backbone):
    bb = tiny_backbone
    src = tmp_path / "SEARLE.pt"
    torch.save({"Phi": phi_state(bb.embed_dim, 4 * bb.embed_dim, bb.token_dim)}, src)
    return src


def test_truncated_empty_and_wrong_format_files_give_one_line_errors(tmp_path, tiny_backbone, searle_file):
    bb = tiny_backbone
    data = searle_file.read_bytes()
    cases = {}
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.pt", "searle", "empty")
    for frac in (0.5, 0.97):
        p = tmp_path / f"trunc{frac}.pt"
        p.write_bytes(data[: int(len(data) * frac)])
        cases[f"trunc{frac}"] = (p, "searle", "truncated")
    damaged = tmp_path / "damaged.pt"   # a whole zip whose tensor storage lost its bytes
    with zipfile.ZipFile(searle_file) as z, zipfile.ZipFile(damaged, "w") as w:
        for n in z.namelist():
            w.writestr(n, z.read(n)[:10] if n.endswith("data/0") else z.read(n))
    cases["damaged"] = (damaged, "searle", "truncated or corrupt")
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    cases["text"] = (tmp_path / "notes.txt", "searle", "not a torch checkpoint")
    cases["searle-as-pic2word"] = (searle_file, "pic2word", "state_dict_img2text")
    cases["searle-as-fti"] = (searle_file, "fti4cir", "FTI4CIR")
    cases["missing"] = (tmp_path / "nope.pt", "searle", "not found")
    bad_keys = tmp_path / "bad_keys.pt"
    torch.save({"Phi": {"layers.0.weight": torch.zeros(4, 4)}}, bad_keys)
    cases["bad-keys"] = (bad_keys, "lincir", "layers.0.bias")
    for name, (src, fmt, needle) in cases.items():
        with pytest.raises(ZscirError) as err:
            import_checkpoint(src, fmt, tmp_path / f"out-{name}", backbone=bb)
        msg = str(err.value)
        assert "\n" not in msg and len(msg) < 400, (name, msg)
        assert str(src) in msg or src.name in msg, (name, msg)
        if needle:
            assert needle in msg, (name, msg)


def test_width_mismatch_and_existing_output_refused(tmp_path, tiny_backbone, searle_file):
    src = tmp_path / "wide.pt"
    torch.save({"Phi": phi_state(512, 2048, 512)}, src)
    with pytest.raises(ZscirError, match="embed_dim=512"):
        import_checkpoint(src, "searle", tmp_path / "o", backbone=tiny_backbone)
    # no backbone given: the release's own (ViT-B-32 / openai for width 512), recorded without loading it
    meta = import_checkpoint(src, "searle", tmp_path / "o")
    assert meta["backbone"] == {"model": "ViT-B-32", "pretrained": "openai", "activation": "quick_gelu"}
    with pytest.raises(ZscirError, match="already exists"):
        import_checkpoint(src, "searle", tmp_path / "o")
    with pytest.raises(ZscirError, match="embed_dim=512 but ViT-L-14"):
        import_checkpoint(src, "searle", tmp_path / "o2", clip="ViT-L-14", pretrained="openai")
    # OpenAI's weights as a local file: the plain name would build GELU, the -quickgelu name is right
    with pytest.raises(ZscirError, match="pass --clip ViT-B-32-quickgelu"):
        import_checkpoint(src, "searle", tmp_path / "o3", clip="ViT-B-32", pretrained=str(searle_file))
    meta = import_checkpoint(src, "searle", tmp_path / "o3", clip="ViT-B-32-quickgelu", pretrained=str(searle_file))
    assert meta["backbone"]["activation"] == "quick_gelu" and meta["backbone"]["pretrained"].startswith("sha256:")


def test_cli_import_then_load_by_path(tmp_path, tiny_backbone, searle_file, capsys):
    from zscir.cli import main

    weights = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(weights))
    out = tmp_path / "imported" / "searle"
    with pytest.raises(SystemExit) as done:
        main(["import-checkpoint", str(searle_file), "--from", "searle", "--out", str(out), "--clip", "zscir-tiny-test",
              "--pretrained", str(weights), "--json"])
    assert done.value.code == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["backbone"]["pretrained"].startswith("sha256:") and meta["source"]["format"] == "searle"
    # what `zscir eval/index/retrieve --model OUT.safetensors` do: load it with its recorded backbone
    with pytest.warns(UserWarning, match="non-commercial"):
        encoder = load_query_encoder(str(out) + ".safetensors")
    assert encoder.backbone.identity == meta["backbone"] and encoder.name == "searle"
    with pytest.raises(SystemExit) as failed:
        main(["import-checkpoint", str(tmp_path / "missing.pt"), "--from", "searle", "--out", str(tmp_path / "x")])
    assert failed.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: source file not found") and err.count("\n") == 1


def test_every_format_registered_with_provenance():
    assert sorted(IMPORTERS) == ["context-i2w", "fti4cir", "lincir", "pic2word", "searle"]
    for imp in IMPORTERS.values():
        assert imp.url and imp.license and imp.paper and imp.backbones


def test_backbone_identity_mismatch_refused(tiny_backbone):
    meta = {"backbone": {**tiny_backbone.identity, "activation": "quick_gelu"}}
    with pytest.raises(ZscirError, match="trained on backbone"):
        backbone_for(meta, tiny_backbone, "x.safetensors")
