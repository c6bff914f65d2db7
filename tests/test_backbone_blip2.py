"""The BLIP-2 backbone family on a tiny random BLIP-2 built here (1-layer ViT of width 32 on 32 px images,
a 2-layer Q-Former of width 32 with 4 query tokens, a 20-word BERT vocabulary), loaded as ``blip2:<folder>``.

The builder is tests/_tiny_blip2.py's ``drawn_tiny_blip2`` (shared with test_blip2_rerank.py).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.backbone.families import family_of
from zscir.backbone.loading import load_backbone
from zscir.backbone.options import resolve_pretrained
from zscir.errors import MissingWeightsError, ZscirError
from zscir.models.itm_rerank import ItmRerank

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_blip2 import drawn_tiny_blip2  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return drawn_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")


@pytest.fixture(scope="module")
def bb(tiny):
    return load_backbone(f"blip2:{tiny}")


TEXTS = ["a red circle", "make it big", "a photo of the blue square with a thing", "green"]


def reference_model(folder):
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    return Blip2ForImageTextRetrieval.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_interface(bb):
    assert family_of("blip2:x") == "blip2" and family_of("ViT-B-32") is None and family_of("hf-hub:a/b") is None
    assert bb.identity["family"] == "blip2" and bb.identity["pretrained"].startswith("sha256:")
    assert (bb.embed_dim, bb.num_query_tokens, bb.feature_width, bb.image_size) == (16, 4, 64, 32)
    assert not bb.model.training and not any(p.requires_grad for p in bb.model.parameters())
    assert bb.processor.tokenizer is bb.tokenizer and bb.image_layout == "query_tokens"


def test_itc_similarity_equals_the_retrieval_model(bb, tiny):
    model, tokenizer = reference_model(tiny)
    torch.manual_seed(1)
    pixels = torch.randn(5, 3, 32, 32)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    use_image_text_matching_head=False)
        # straightforward: every image's query features against every text, max over the query tokens
        image_q = out.image_embeds                                    # [5, Q, D], normalised
        expected = torch.stack([(image_q @ t).amax(dim=1) for t in out.text_embeds])   # [Nt, Ni]
    image, text = bb.encode_images(pixels), bb.encode_texts(TEXTS)
    assert image.shape == (5, 4, 16) and text.shape == (4, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(5, 4))
    assert (bb.similarity(image, text) - expected).abs().max() < 1e-5
    assert (bb.similarity(image, text) - out.logits_per_text).abs().max() < 1e-5
    # the store's row is the same features flattened; the vision encoder's hidden state is the model's
    feats = bb.encode_image(pixels, with_tokens=True)
    torch.testing.assert_close(feats.pooled, image.flatten(1))
    torch.testing.assert_close(feats.tokens, out.vision_model_output.last_hidden_state)
    torch.testing.assert_close(bb.vision_hidden(pixels), out.vision_model_output.last_hidden_state)
    # PIL images go through the model's own image processor
    pil = [Image.fromarray((np.random.default_rng(i).random((20, 28, 3)) * 255).astype(np.uint8)) for i in range(2)]
    pv = bb.processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(bb.encode_images(pil), bb.encode_images(pv))


def test_itm_scores_and_reranking_only_reorder_the_top_k(bb, tiny):
    model, tokenizer = reference_model(tiny)
    torch.manual_seed(2)
    pixels = torch.randn(12, 3, 32, 32)
    pairs = [TEXTS[i % len(TEXTS)] for i in range(12)]
    tokens = tokenizer(pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        itm = model(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    use_image_text_matching_head=True).logits_per_image.softmax(dim=-1)[:, 1]
    assert (bb.itm_scores(pixels, pairs) - itm).abs().max() < 1e-5

    scores = bb.similarity(bb.encode_images(pixels), bb.encode_texts(TEXTS[:2]))
    k = 5
    rerank = ItmRerank(k)
    for t, text in enumerate(TEXTS[:2]):
        itc = sorted(range(12), key=lambda j: (-float(scores[t, j]), j))
        called = []

        def probs(candidates):
            called.append(list(candidates))
            return bb.itm_scores(pixels[candidates], [text] * len(candidates)).tolist()

        got = rerank.reorder(itc, probs)
        assert called == [itc[:k]]   # only the top k are scored
        assert got[k:] == itc[k:] and sorted(got[:k]) == sorted(itc[:k])
        top_probs = bb.itm_scores(pixels[itc[:k]], [text] * k)
        assert got[0] == itc[int(top_probs.argmax())]
        assert [float(p) for p in bb.itm_scores(pixels[got[:k]], [text] * k)] == sorted(top_probs.tolist(), reverse=True)
    with pytest.raises(ZscirError, match="at least 1"):
        ItmRerank(0)


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_missing_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError) as e:
        load_backbone("blip2:Salesforce/blip2-itm-vit-g-not-here")
    assert "Salesforce/blip2-itm-vit-g-not-here" in _one_line(e) and "Hugging Face cache" in _one_line(e)
    assert "local folder" in _one_line(e)
    with pytest.raises(ZscirError) as e:
        load_backbone(f"blip2:{tmp_path / 'nowhere'}")
    assert "not found" in _one_line(e) and "nowhere" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZscirError) as e:
        load_backbone(f"blip2:{tmp_path / 'empty'}")
    assert "no weights file" in _one_line(e)
    with pytest.raises(ZscirError) as e:
        load_backbone("blip2:")
    assert "blip2:<Hugging Face id>" in _one_line(e)
    with pytest.raises(ZscirError) as e:
        resolve_pretrained("blip2:Salesforce/blip2-itm-vit-g", "openai")
    assert "drop --pretrained" in _one_line(e)
    assert resolve_pretrained("blip2:Salesforce/blip2-itm-vit-g", None) is None


def test_identity_follows_the_weights(tiny, tmp_path, bb):
    other = drawn_tiny_blip2(tmp_path / "other", seed=1)
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)
    assert load_backbone(f"blip2:{moved}").identity == bb.identity
    assert load_backbone(f"blip2:{other}").identity != bb.identity
    assert bb.source == {"name": f"blip2:{tiny}", "pretrained": None}
    assert load_backbone(bb.source["name"], bb.source["pretrained"]).identity == bb.identity


# ---------------------------------------------------------------- zscir eval: baselines against a brute force
def _average_precision(order: list[str], gt: list[str], k: int) -> float:
    hits, total = 0, 0.0
    for i, g in enumerate(order[:k]):
        if g in gt:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(gt))


def test_eval_baselines_equal_a_brute_force_ranking(tiny, bb, tmp_path):
    from test_eval import make_world

    from zscir.benchmarks import load_splits
    from zscir.evaluation.run import EvalRequest, evaluate
    from zscir.models import prompts

    root = make_world(tmp_path / "world", n_gallery=30, n_queries=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(EvalRequest("circo", root=root, splits=["val"], models=["image", "text", "sum"],
                                       clip=f"blip2:{tiny}", cache_root=tmp_path / "cache", out_dir=tmp_path / "run",
                                       progress=False))
    split = load_splits("circo", root, "val")[0]
    # the gallery as the store keeps it: each image's Q normalised query features, in fp16
    pixels = torch.stack([bb.preprocess(Image.open(split.images[g])) for g in split.gallery])
    rows = bb.encode_images(pixels).half().float()                       # [G, Q, D]
    gallery = torch.nn.functional.normalize(rows, dim=-1)
    position = {g: i for i, g in enumerate(split.gallery)}
    for m in results["models"]:
        assert m["identity"]["backbone"] == bb.identity
        assert m["splits"]["circo/val"]["scoring"]["rule"] == "max-over-query-tokens"
        for k in (5, 10, 25):
            aps = []
            for q in split.queries:
                image = torch.nn.functional.normalize(gallery[position[q.reference]].mean(0), dim=0)
                text = bb.encode_texts([prompts.clean_text(q.captions[0])])[0]
                query = {"image": image, "text": text, "sum": image + text}[m["name"]]
                query = torch.nn.functional.normalize(query, dim=0)
                scores = (gallery @ query).amax(dim=1)                    # max over query tokens
                order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
                aps.append(_average_precision([split.gallery[j] for j in order], list(q.targets), k))
            assert m["splits"]["circo/val"]["metrics"][f"mAP@{k}"] == pytest.approx(100 * float(np.mean(aps)),
                                                                                   abs=1e-6), (m["name"], k)


# ---------------------------------------------------------------- zscir index / retrieve: exact max over query tokens
def test_index_and_retrieve_rank_by_the_max_over_query_tokens(tiny, bb, tmp_path):
    from zscir.index.gallery import build_index
    from zscir.models import prompts
    from zscir.resolve import load_retriever

    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(folder / f"im{i:02d}.png")
    reference = tmp_path / "ref.png"
    Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(reference)
    summary = build_index(tmp_path / "idx", bb, images=folder, progress=False)
    assert summary["count"] == 12
    names = sorted(p.name for p in folder.iterdir())
    pixels = torch.stack([bb.preprocess(Image.open(folder / n)) for n in names])
    gallery = torch.nn.functional.normalize(bb.encode_images(pixels).half().float(), dim=-1)
    # the reference is encoded at query time (fp32), the gallery read from the index's fp16 store
    image = torch.nn.functional.normalize(bb.encode_images(bb.preprocess(Image.open(reference))[None])[0].mean(0), dim=0)
    text = "make it red"
    for model in ("text", "sum"):
        retriever = load_retriever(tmp_path / "idx", model)   # the index's own backbone, loaded from its source
        assert retriever.backbone.identity == bb.identity
        hits = retriever.search(str(reference), text, k=5)
        t = bb.encode_texts([prompts.clean_text(text)])[0]
        query = torch.nn.functional.normalize(t if model == "text" else image + t, dim=0)
        scores = (gallery @ query).amax(dim=1)
        order = sorted(range(12), key=lambda j: (-float(scores[j]), j))[:5]
        assert [h.id for h in hits] == [names[j] for j in order]
        assert [h.score for h in hits] == pytest.approx([float(scores[j]) for j in order], abs=1e-5)
