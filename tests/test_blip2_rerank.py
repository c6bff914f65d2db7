"""``--itm-rerank K`` (zscir.models.itm_rerank) in eval and retrieve, on the tiny random BLIP-2 of
test_backbone_blip2, against a brute force computed here: the ITC ranking (max over query tokens of the
store's fp16 rows), then its first K re-sorted by the ITM probability of each (candidate, text) pair taken
from transformers' ``Blip2ForImageTextRetrieval`` one pair at a time, the rest unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_blip2 import drawn_tiny_blip2  # noqa: E402
from test_eval import make_world  # noqa: E402

from zscir.backbone.loading import load_backbone  # noqa: E402
from zscir.models import prompts  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return drawn_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny", seed=3)


@pytest.fixture(scope="module")
def bb(tiny):
    return load_backbone(f"blip2:{tiny}")


@pytest.fixture(scope="module")
def reference(tiny):
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    return Blip2ForImageTextRetrieval.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)


@torch.no_grad()
def itm_probability(reference, pixels: torch.Tensor, text: str) -> float:
    """The match probability of one (image, text) pair, from the transformers model itself."""
    model, tokenizer = reference
    tokens = tokenizer([text], return_tensors="pt")
    out = model(pixel_values=pixels[None], input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                use_image_text_matching_head=True)
    return float(out.logits_per_image.softmax(dim=-1)[0, 1])


def brute_force(reference, gallery_q: torch.Tensor, pixels: torch.Tensor, query: torch.Tensor, text: str,
                k: int) -> tuple[list[int], list[int]]:
    """(ITC order, that order with its first k re-sorted by ITM probability, ties in ITC order)."""
    scores = (gallery_q @ F.normalize(query, dim=0)).amax(dim=1)                # max over query tokens
    itc = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    top = itc[:k]
    probs = {j: itm_probability(reference, pixels[j], text) for j in top}
    return itc, sorted(top, key=lambda j: -probs[j]) + itc[k:]


def _average_precision(order: list[str], gt: list[str], k: int) -> float:
    hits, total = 0, 0.0
    for i, g in enumerate(order[:k]):
        if g in gt:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(gt))


# ---------------------------------------------------------------- zscir eval --itm-rerank K
@pytest.mark.parametrize("k", [6, 60])   # 60: more than the gallery and the stored top 50
def test_eval_itm_rerank_equals_a_brute_force(k, tiny, bb, reference, tmp_path):
    from zscir.benchmarks import load_splits
    from zscir.evaluation.run import EvalRequest, evaluate

    root = make_world(tmp_path / "world", n_gallery=30, n_queries=8)
    common = dict(root=root, splits=["val"], models=["text", "sum"], clip=f"blip2:{tiny}",
                  cache_root=tmp_path / "cache", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = evaluate(EvalRequest("circo", out_dir=tmp_path / "plain", **common))
        reranked = evaluate(EvalRequest("circo", out_dir=tmp_path / "reranked", itm_rerank=k, **common))
    split = load_splits("circo", root, "val")[0]
    pixels = torch.stack([bb.preprocess(Image.open(split.images[g])) for g in split.gallery])
    gallery_q = F.normalize(bb.encode_images(pixels).half().float(), dim=-1)    # the store's fp16 rows
    position = {g: i for i, g in enumerate(split.gallery)}
    changed = 0
    for before, after in zip(plain["models"], reranked["models"]):
        name = after["name"]
        orders = []
        for q in split.queries:
            text = prompts.clean_text(q.captions[0])
            image = F.normalize(gallery_q[position[q.reference]].mean(0), dim=0)
            t = bb.encode_texts([text])[0]
            itc, order = brute_force(reference, gallery_q, pixels, {"text": t, "sum": image + t}[name], text, k)
            changed += itc != order
            orders.append(([split.gallery[j] for j in itc], [split.gallery[j] for j in order]))
        for cutoff in (5, 10, 25):
            plain_ap = np.mean([_average_precision(o[0], list(q.targets), cutoff)
                                for o, q in zip(orders, split.queries)])
            rerank_ap = np.mean([_average_precision(o[1], list(q.targets), cutoff)
                                 for o, q in zip(orders, split.queries)])
            key = f"mAP@{cutoff}"
            assert before["splits"]["circo/val"]["metrics"][key] == pytest.approx(100 * plain_ap, abs=1e-6)
            assert after["splits"]["circo/val"]["metrics"][key] == pytest.approx(100 * rerank_ap, abs=1e-6), \
                (name, cutoff)
        # recorded, so that re-ranked numbers are never read as first-stage ones
        scoring = after["splits"]["circo/val"]["scoring"]
        assert scoring["rule"] == "max-over-query-tokens" and scoring["itm_rerank"]["top_k"] == k
        assert after["itm_rerank"]["rerank"] == "itm" and "itm_rerank" not in before
        assert "itm_rerank" not in before["splits"]["circo/val"]["scoring"]
        # the gallery features came from the cache the plain run filled: re-ranking leaves its identity alone
        assert after["splits"]["circo/val"]["feature_cache"]["encoded"] == 0
    assert changed > 0                                   # ITM moved some query's top candidates
    assert reranked["protocol"]["itm_rerank"]["top_k"] == k and "itm_rerank" not in plain["protocol"]
    saved = json.loads((tmp_path / "reranked" / "results.json").read_text())
    assert saved["protocol"]["itm_rerank"] == reranked["protocol"]["itm_rerank"]


# ---------------------------------------------------------------- zscir retrieve --itm-rerank K
def _images(folder: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"im{i:02d}.png")
        Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


def test_retrieve_itm_rerank_equals_a_brute_force(tiny, bb, reference, tmp_path):
    from zscir.cli import cli
    from zscir.index.gallery import build_index
    from zscir.resolve import load_retriever

    paths = _images(tmp_path / "images", 12, seed=4)
    names = [p.name for p in paths]
    ref = _images(tmp_path / "ref", 1, seed=5)[0]
    build_index(tmp_path / "idx", bb, images=tmp_path / "images", progress=False)
    pixels = torch.stack([bb.preprocess(Image.open(p)) for p in paths])
    gallery_q = F.normalize(bb.encode_images(pixels).half().float(), dim=-1)    # the index's fp16 store
    image = F.normalize(bb.encode_images(bb.preprocess(Image.open(ref))[None])[0].mean(0), dim=0)
    text = "make the red circle big"
    t = bb.encode_texts([prompts.clean_text(text)])[0]
    K = 5
    changed = 0
    for model in ("text", "sum"):
        itc, order = brute_force(reference, gallery_q, pixels, {"text": t, "sum": image + t}[model], text, K)
        changed += itc != order
        retriever = load_retriever(tmp_path / "idx", model, backbone=bb)
        retriever.use_itm_rerank(K)
        assert retriever.identity["itm_rerank"]["top_k"] == K
        scores = (gallery_q @ F.normalize({"text": t, "sum": image + t}[model], dim=0)).amax(dim=1)
        for k in (3, 8):                                 # fewer answers than K, and more
            hits = retriever.search(str(ref), text, k=k)
            assert [h.id for h in hits] == [names[j] for j in order[:k]], (model, k)
            assert [h.score for h in hits] == pytest.approx([float(scores[j]) for j in order[:k]], abs=1e-5)
    assert changed > 0
    # the same through the command line
    out = CliRunner().invoke(cli, ["retrieve", "--index", str(tmp_path / "idx"), "--model", "sum", "--ref", str(ref),
                                   "--text", text, "-k", "8", "--itm-rerank", str(K), "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    _, order = brute_force(reference, gallery_q, pixels, image + t, text, K)
    assert [h["id"] for h in payload["queries"][0]["results"]] == [names[j] for j in order[:8]]
    assert payload["itm_rerank"]["top_k"] == K


# ---------------------------------------------------------------- zscir serve --itm-rerank K
def test_serve_itm_rerank_equals_a_brute_force_and_outlives_a_reload(tiny, bb, reference, tmp_path):
    from zscir.index.gallery import build_index
    from zscir.serve.app import load_retrievers
    from zscir.serve.service import Reference, SearchService, ServeConfig

    paths = _images(tmp_path / "images", 12, seed=4)
    ref = _images(tmp_path / "ref", 1, seed=5)[0]
    build_index(tmp_path / "idx", bb, images=tmp_path / "images", progress=False)
    K = 5
    service = SearchService(load_retrievers(tmp_path / "idx", ["sum"], progress=False, itm_rerank=K),
                            ServeConfig(reload_interval=0))
    assert service.health()["models"]["sum"]["itm_rerank"]["top_k"] == K
    text = "make the red circle big"
    t = bb.encode_texts([prompts.clean_text(text)])[0]
    image = F.normalize(bb.encode_images(bb.preprocess(Image.open(ref))[None])[0].mean(0), dim=0)

    def expected(paths):
        pixels = torch.stack([bb.preprocess(Image.open(p)) for p in paths])
        gallery_q = F.normalize(bb.encode_images(pixels).half().float(), dim=-1)   # the index's fp16 store
        itc, order = brute_force(reference, gallery_q, pixels, image + t, text, K)
        return itc, [paths[j].name for j in order]

    def served(k):
        turn = service.search(Reference.from_bytes(ref.read_bytes(), "upload", "image"), text, k=k)
        return [r["id"] for r in turn["results"]]

    itc, order = expected(paths)
    assert served(8) == order[:8] and [paths[j].name for j in itc[:8]] != order[:8]   # ITM moved some
    # a new generation of the index (two more images): the reloaded model still re-ranks
    more = _images(tmp_path / "more", 2, seed=9)
    for n, extra in enumerate(more):
        paths.append(extra.rename(tmp_path / "images" / f"im{12 + n:02d}.png"))
    build_index(tmp_path / "idx", bb, images=tmp_path / "images", progress=False)
    assert service.reload_if_changed()
    itc, order = expected(paths)
    assert served(8) == order[:8] and [paths[j].name for j in itc[:8]] != order[:8]


# ---------------------------------------------------------------- a backbone without ITM: one line
def test_itm_rerank_on_clip_is_one_line_without_traceback(tmp_path):
    root = make_world(tmp_path / "world", n_gallery=6, n_queries=2)
    out = subprocess.run([sys.executable, "-m", "zscir.cli", "eval", "circo", "--root", str(root), "--model", "text",
                          "--clip", "zscir-tiny-test", "--pretrained", "none", "--itm-rerank", "3",
                          "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: --itm-rerank: the backbone zscir-tiny-test")
    assert "no image-text matching head" in lines[0] and "--clip blip2:" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()


# ---------------------------------------------------------------- a trained head: its first stage, its BLIP-2's ITM
def test_eval_itm_rerank_of_a_trained_head(tmp_path_factory, tmp_path):
    """FineCIR (2 training steps, test_blip2_pipeline's fixture recipe): the head ranks, then the ITM of the
    head's own BLIP-2 (its trained Q-Former) on (candidate, modification text) re-orders its top K."""
    from test_blip2_pipeline import HEADS, hidden_of, own_head
    from transformers import AutoTokenizer

    from zscir.benchmarks import load_splits
    from zscir.evaluation.run import EvalRequest, evaluate
    from zscir.training.supervised import SupervisedConfig, load_train_splits
    from zscir.training.supervised_blip2 import _load_blip2_backbone, build_blip2_triplets, train_blip2
    from zscir.world.build import WorldConfig, generate_world

    folder = drawn_tiny_blip2(tmp_path / "blip2", seed=3)   # images told apart (test_backbone_blip2)
    work = tmp_path_factory.mktemp("head")
    world = generate_world(work / "w", WorldConfig.tiny(seed=5), workers=1, progress=False, log=lambda m: None)
    parts = _load_blip2_backbone(f"blip2:{folder}")
    data = build_blip2_triplets(load_train_splits("shapes", "train", world), parts, log=lambda m: None)
    cfg = SupervisedConfig(out=str(work / "finecir"), head="finecir", epochs=2, batch_size=16, lr=1e-3, seed=0,
                           parser="rules", head_options=HEADS["finecir"])
    checkpoint = str(train_blip2(cfg, parts, data, log=lambda m: None))

    root = make_world(tmp_path / "world", n_gallery=24, n_queries=8)
    K = 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(EvalRequest("circo", root=root, splits=["val"], models=[checkpoint], clip=f"blip2:{folder}",
                                       cache_root=tmp_path / "cache", out_dir=tmp_path / "run", progress=False,
                                       itm_rerank=K))
    split = load_splits("circo", root, "val")[0]
    bb = load_backbone(f"blip2:{folder}")
    head = own_head(folder, checkpoint)
    reference = (head.blip2.eval(), AutoTokenizer.from_pretrained(folder))
    pixels = torch.stack([bb.preprocess(Image.open(split.images[g])) for g in split.gallery])
    with torch.no_grad():
        gallery = head.candidates(hidden_of(head, bb, [split.images[g] for g in split.gallery])).half().float()
        refs = hidden_of(head, bb, [split.images[q.reference] for q in split.queries]).half().float()
        composed = head.compose(refs, [prompts.clean_text(q.captions[0]) for q in split.queries])
        scores = head.scores(composed, gallery)                                   # [queries, gallery]
    aps, changed = {c: [] for c in (5, 10, 25)}, 0
    for i, q in enumerate(split.queries):
        itc = sorted(range(len(split.gallery)), key=lambda j: (-float(scores[i, j]), j))
        text = prompts.clean_text(q.captions[0])
        probs = {j: itm_probability(reference, pixels[j], text) for j in itc[:K]}
        order = sorted(itc[:K], key=lambda j: -probs[j]) + itc[K:]
        changed += order != itc
        for c in aps:
            aps[c].append(_average_precision([split.gallery[j] for j in order], list(q.targets), c))
    row = results["models"][0]["splits"]["circo/val"]
    assert changed > 0 and row["scoring"]["rule"] == "max-over-query-tokens"
    assert row["scoring"]["itm_rerank"]["top_k"] == K
    for c, values in aps.items():
        assert row["metrics"][f"mAP@{c}"] == pytest.approx(100 * float(np.mean(values)), abs=1e-6), c
