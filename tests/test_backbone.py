import warnings

import pytest
import torch
from PIL import Image

from zscir.backbone import load_backbone, make_preprocess, target_pad
from zscir.errors import MissingWeightsError, ZscirError


def test_pseudo_words_equal_token_embeddings_in_mixed_batch(tiny_backbone):
    bb = tiny_backbone
    words = ["dog", "red", "grass", "cat", "blue"]
    ids = [bb.tokenizer.encode(w) for w in words]
    assert all(len(i) == 1 for i in ids), "test words must be single BPE tokens"
    table = bb.model.token_embedding.weight
    emb = {w: table[i[0]].detach().clone() for w, i in zip(words, ids)}
    prompts = ["a photo of * with * *", "a photo of * but blue", "no placeholder here", "* and *"]
    fills = ["dog", "red", "grass", "cat", "cat", "blue"]
    pseudo = torch.stack([emb[w] for w in fills]).requires_grad_(True)
    got = bb.encode_prompts(prompts, pseudo)
    want = bb.encode_text(["a photo of dog with red grass", "a photo of cat but blue", "no placeholder here", "cat and blue"])
    assert got.shape == (4, bb.embed_dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got.sum().backward()
    assert pseudo.grad is not None and pseudo.grad.abs().sum(dim=1).gt(0).all()


def test_placeholder_count_mismatch_is_a_clear_error(tiny_backbone):
    with pytest.raises(ZscirError, match="2 placeholders"):
        tiny_backbone.encode_prompts(["* and *"], torch.zeros(3, tiny_backbone.token_dim))


def test_encode_text_matches_open_clip(tiny_backbone):
    bb = tiny_backbone
    texts = ["a photo of a cat", "two dogs"]
    torch.testing.assert_close(bb.encode_text(texts), bb.model.encode_text(bb.tokenize(texts)), atol=1e-5, rtol=0)


def test_one_visual_pass_gives_open_clip_global_and_tokens(tiny_backbone):
    bb = tiny_backbone
    x = torch.randn(3, 3, bb.image_size, bb.image_size)
    feats = bb.encode_image(x, with_tokens=True)
    torch.testing.assert_close(feats.pooled, bb.model.encode_image(x), atol=1e-5, rtol=0)
    n_patches = (bb.image_size // 8) ** 2
    assert feats.tokens.shape == (3, 1 + n_patches, bb.vision_width)
    # tokens are taken before ln_post: applying ln_post and proj to the CLS token gives the pooled feature
    visual = bb.model.visual
    torch.testing.assert_close(visual.ln_post(feats.tokens[:, 0]) @ visual.proj, feats.pooled, atol=1e-5, rtol=0)
    assert not feats.pooled.requires_grad


def test_truncation_warns(tiny_backbone):
    with pytest.warns(UserWarning, match="truncated"):
        tiny_backbone.encode_text(["word " * 60])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_backbone.encode_text(["a short prompt"])


def test_local_checkpoint_file_loads_identical_features(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    loaded = load_backbone("zscir-tiny-test", pretrained=str(path))
    assert loaded.identity["pretrained"].startswith("sha256:") and len(loaded.identity["pretrained"]) == 7 + 64
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(x).pooled, tiny_backbone.encode_image(x).pooled, atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(["a red dog"]), tiny_backbone.encode_text(["a red dog"]), atol=0, rtol=0)


def test_missing_weights_offline_is_one_line_error():
    with pytest.raises(MissingWeightsError) as err:
        load_backbone("ViT-B-32", pretrained="openai")
    msg = str(err.value)
    assert "\n" not in msg and "--pretrained" in msg and "ViT-B-32" in msg


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ZscirError, match="unknown CLIP model 'ViT-Nope'"):
        load_backbone("ViT-Nope")
    with pytest.raises(ZscirError, match="not found: .*missing.safetensors"):
        load_backbone("zscir-tiny-test", pretrained=str(tmp_path / "missing.safetensors"))


def test_target_pad_only_pads_elongated_images():
    square = Image.new("RGB", (100, 90))
    assert target_pad(square).size == (100, 90)          # ratio 1.11 < 1.25: untouched
    wide = Image.new("RGB", (300, 100), (255, 255, 255))  # ratio 3 -> padded to 300 x 240
    padded = target_pad(wide)
    assert padded.size == (300, 240)
    assert padded.getpixel((150, 0)) == (0, 0, 0) and padded.getpixel((150, 120)) == (255, 255, 255)
    t = make_preprocess("targetpad", 32)(wide)
    assert t.shape == (3, 32, 32)
    # the CLIP default crops the wide image to its white center: no black rows
    clip_t = make_preprocess("clip", 32)(wide)
    assert clip_t[:, 0].std(dim=1).max() < 1e-4 and (t[:, 0] - t[:, 16]).abs().max() > 1.0
    with pytest.raises(ZscirError, match="preprocessing"):
        make_preprocess("squash", 32)


def test_word_cached_tokenizer_gives_open_clips_ids():
    """Per-word caching is exact for plain ASCII; anything else takes the full path; truncation as open_clip."""
    import open_clip

    from zscir.backbone.tokenize import WordCachedTokenizer, is_plain

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    texts = ["a photo of * with * * but make it RED", "  Same dress,   but red -- with long sleeves!!  ",
             "it's the dog's toy (2 of 3), isn't it?", "a\tcat\non a mat", "", "*", "<start_of_text> hi",
             "café crème", "fish &amp; chips", "naïve résumé", "ＦＵＬＬ width", "a \x00 control", "x" * 300,
             " ".join(["word"] * 100)]
    fast = WordCachedTokenizer(tokenizer)
    assert WordCachedTokenizer.supports(tokenizer)
    for context_length in (77, 16):
        assert torch.equal(fast(texts, context_length), tokenizer(texts, context_length=context_length))
        assert torch.equal(fast(texts, context_length), tokenizer(texts, context_length=context_length))  # from the cache
    assert [is_plain(t) for t in texts[7:12]] == [False] * 5
    assert fast.words  # the plain texts went through the word cache


@pytest.mark.parametrize("size_wh", [(2400, 1500), (1500, 2400), (2700, 1100), (1200, 1199)])
def test_large_ordinary_photos_get_the_official_targetpad_pixels(size_wh):
    """Bounded-cost preprocessing keeps the official pad -> resize -> center-crop pixels for every image whose
    padding at most doubles it (an aspect ratio up to 2.5; here up to 3.6 MP), however large; only extreme strips are
    shrunk before padding."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize(size_wh, Image.BICUBIC)
    official = TF.center_crop(TF.resize(target_pad(photo), 224, interpolation=TF.InterpolationMode.BICUBIC), 224)
    ours = make_preprocess("targetpad", 224, (0.5,) * 3, (0.5,) * 3).pixels(photo)
    assert torch.equal(ours, TF.pil_to_tensor(official.convert("RGB"))), size_wh
    assert np.asarray(photo).shape[:2] == size_wh[::-1]
