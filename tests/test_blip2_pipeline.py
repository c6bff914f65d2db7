"""Trained BLIP-2 heads (FineCIR, FashionBLIP-2) in eval / index / retrieve / serve, and serve over a BLIP-2 index,
each against a brute force computed here from the head's own forward (or BLIP-2's ITC features)."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.blip2_heads.registry import create_blip2_head
from zscir.checkpoint import load_checkpoint
from zscir.text import get_parser

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_blip2 import build_tiny_blip2  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]
HEADS = {"finecir": {"graph_heads": 4}, "fashionblip2": {}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny BLIP-2 with its vision encoder and the Q-Former's cross-attention drawn at std 0.2 (the ViT
    default, 1e-10, gives every image one feature; the Q-Former's 0.02 nearly so: no ranking to check)."""
    from transformers import Blip2ForImageTextRetrieval

    folder = build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")
    model = Blip2ForImageTextRetrieval.from_pretrained(folder)
    torch.manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            drawn = name.startswith("vision_model") or "crossattention" in name
            if drawn and "layernorm" not in name.replace("_", "") and "bias" not in name:
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(folder, tmp_path_factory):
    """Each head trained for 2 steps on the tiny world's triplets (its weights moved off BLIP-2's)."""
    from zscir.training.supervised import SupervisedConfig, load_train_splits
    from zscir.training.supervised_blip2 import _load_blip2_backbone, build_blip2_triplets, train_blip2
    from zscir.world.build import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("heads")
    world = generate_world(root / "w", WorldConfig.tiny(seed=5), workers=1, progress=False, log=lambda m: None)
    out = {}
    for head, options in HEADS.items():
        parts = _load_blip2_backbone(f"blip2:{folder}")   # a fresh model each: training moves FineCIR's Q-Former
        data = build_blip2_triplets(load_train_splits("shapes", "train", world), parts, log=lambda m: None)
        cfg = SupervisedConfig(out=str(root / head), head=head, epochs=2, batch_size=16, lr=1e-3, seed=0,
                               parser="rules", head_options=options)
        out[head] = str(train_blip2(cfg, parts, data, log=lambda m: None))
    return out


@pytest.fixture(scope="module")
def bb(folder):
    from zscir.backbone import load_backbone

    return load_backbone(f"blip2:{folder}")


def own_head(folder, checkpoint):
    """The head as training left it: a fresh BLIP-2 from the folder, the checkpoint's weights loaded."""
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    state, meta = load_checkpoint(checkpoint)
    model = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
    head = create_blip2_head(meta["config"], model, AutoTokenizer.from_pretrained(folder), get_parser(meta["parser"]))
    head.load_state_dict(state)
    return head.eval()


@torch.no_grad()
def hidden_of(head, bb, paths) -> torch.Tensor:
    """The frozen vision hidden states of image files, preprocessed as the feature store does."""
    pixels = torch.stack([bb.preprocess(Image.open(p)) for p in paths])
    return head.blip2.vision_model(pixel_values=pixels).last_hidden_state


def _average_precision(order, gt, k):
    hits, total = 0, 0.0
    for i, g in enumerate(order[:k]):
        if g in gt:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(gt))


# ---------------------------------------------------------------- zscir eval --model CKPT
@pytest.mark.parametrize("name", list(HEADS))
def test_eval_with_a_trained_head_equals_its_own_forward(name, folder, checkpoints, bb, tmp_path):
    from test_eval import make_world

    from zscir.benchmarks import get_benchmark, load_splits
    from zscir.evaluation.protocol import Protocol
    from zscir.evaluation.run import EvalRequest, evaluate

    root = make_world(tmp_path / "world", n_gallery=24, n_queries=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(EvalRequest("circo", root=root, splits=["val"], models=["image", checkpoints[name]],
                                       clip=f"blip2:{folder}", cache_root=tmp_path / "cache",
                                       out_dir=tmp_path / "run", progress=False))
    baseline, trained = results["models"]
    split = load_splits("circo", root, "val")[0]
    head = own_head(folder, checkpoints[name])
    with torch.no_grad():
        # the store keeps the gallery rows and the references' hidden states in fp16
        gallery = head.candidates(hidden_of(head, bb, [split.images[g] for g in split.gallery])).half().float()
        refs = hidden_of(head, bb, [split.images[q.reference] for q in split.queries]).half().float()
        composed = head.compose(refs, [prompts.clean_text(q.captions[0]) for q in split.queries])
        scores = head.scores(composed, gallery)                                   # [queries, gallery]
    result = trained["splits"]["circo/val"]
    removed = Protocol().resolved(get_benchmark("circo")).remove_reference   # the reference left out of its ranking
    assert float(scores.max() - scores.min()) > 0.1                           # the trained head tells images apart
    assert trained["identity"]["backbone"]["checkpoint_sha256"] == load_checkpoint(checkpoints[name])[1][
        "weights_sha256"]
    assert result["scoring"]["rule"] == {"finecir": "max-over-query-tokens",
                                         "fashionblip2": "multi-head-max-over-query-tokens"}[name]
    for k in (5, 10, 25):
        aps = []
        for i, q in enumerate(split.queries):
            order = sorted(range(len(split.gallery)), key=lambda j: (-float(scores[i, j]), j))
            order = [j for j in order if not (removed and split.gallery[j] == q.reference)]
            aps.append(_average_precision([split.gallery[j] for j in order], list(q.targets), k))
        assert result["metrics"][f"mAP@{k}"] == pytest.approx(100 * float(np.mean(aps)), abs=1e-6), k
    # the head's gallery rows are cached apart from the frozen BLIP-2's (a distinct feature identity)
    stores = {p.name.split("-")[0] for p in (tmp_path / "cache").glob("*/*") if p.is_dir()}
    assert stores == {"blip2", f"blip2_{name}"}
    assert baseline["identity"]["backbone"] == bb.identity


def test_the_given_backbone_keeps_its_frozen_weights(folder, checkpoints, bb):
    from zscir.models.query import load_query_encoder

    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    encoders = [load_query_encoder(checkpoints[name], bb) for name in HEADS]
    assert all(torch.equal(v, before[k]) for k, v in bb.model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    for qe in encoders:       # FineCIR's rows come from its trained Q-Former, FashionBLIP-2's through its adapters
        assert not torch.allclose(qe.backbone.encode_image(x).pooled, bb.encode_image(x).pooled)
    assert encoders[0].backbone.model.vision_model is bb.model.vision_model   # the frozen encoder is shared


def test_a_checkpoint_on_another_backbone_is_one_line(folder, checkpoints, tmp_path):
    from zscir.backbone import load_backbone
    from zscir.models.query import load_query_encoder

    other = load_backbone(f"blip2:{build_tiny_blip2(tmp_path / 'other', seed=1)}")
    with pytest.raises(ZscirError, match="was trained on backbone"):
        load_query_encoder(checkpoints["finecir"], other)


# ---------------------------------------------------------------- zscir index / retrieve --model CKPT
def _images(folder: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"im{i:02d}.png")
        Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize("name", list(HEADS))
def test_index_and_retrieve_with_a_trained_head(name, folder, checkpoints, bb, tmp_path):
    from zscir.index.gallery import build_index
    from zscir.resolve import indexing_backbone, load_retriever

    paths = _images(tmp_path / "images", 12, seed=4)
    reference = _images(tmp_path / "ref", 1, seed=5)[0]
    choice = indexing_backbone(None, None, None, "cpu", model=checkpoints[name])
    build_index(tmp_path / "idx", choice.backbone, images=tmp_path / "images", progress=False, model=choice.model)
    build_index(tmp_path / "frozen", bb, images=tmp_path / "images", progress=False)
    retriever = load_retriever(tmp_path / "idx")            # the model the index was built for
    text = "make the large circle red"
    hits = retriever.search(str(reference), text, k=5)
    head = own_head(folder, checkpoints[name])
    with torch.no_grad():
        gallery = head.candidates(hidden_of(head, bb, paths)).half().float()
        composed = head.compose(hidden_of(head, bb, [reference]), [prompts.clean_text(text)])
        scores = head.scores(composed, gallery)[0]
    assert float(scores.max() - scores.min()) > 0.1   # the trained head tells the images apart
    order = sorted(range(12), key=lambda j: (-float(scores[j]), j))[:5]
    assert [h.id for h in hits] == [paths[j].name for j in order]
    assert [h.score for h in hits] == pytest.approx([float(scores[j]) for j in order], abs=1e-4)
    with pytest.raises(ZscirError, match="was built with"):   # the frozen BLIP-2's rows are not the head's
        load_retriever(tmp_path / "frozen", checkpoints[name])


# ---------------------------------------------------------------- serve over a BLIP-2 index
def _same(turn, expected: list[tuple[str, float]]) -> None:
    assert [r["id"] for r in turn["results"]] == [i for i, _ in expected]
    assert [r["score"] for r in turn["results"]] == pytest.approx([sc for _, sc in expected], abs=5e-4)


def _brute(rows: torch.Tensor, query: torch.Tensor, names: list[str], k: int, leave_out=()) -> list[tuple[str, float]]:
    scores = (rows @ query).amax(dim=1)                                        # max over query tokens
    order = [j for j in sorted(range(len(names)), key=lambda j: (-float(scores[j]), j)) if names[j] not in leave_out]
    return [(names[j], float(scores[j])) for j in order[:k]]


def test_serve_ranks_a_blip2_index_by_the_max_over_query_tokens(folder, checkpoints, bb, tmp_path):
    from zscir.index.gallery import build_index
    from zscir.resolve import load_retriever
    from zscir.serve.service import Reference, SearchService

    paths = _images(tmp_path / "images", 12, seed=6)
    names = [p.name for p in paths]
    build_index(tmp_path / "idx", bb, images=tmp_path / "images", progress=False)
    service = SearchService({"sum": load_retriever(tmp_path / "idx", "sum", backbone=bb),
                             "text": load_retriever(tmp_path / "idx", "text", backbone=bb),
                             "image": load_retriever(tmp_path / "idx", "image", backbone=bb)})
    pixels = torch.stack([bb.preprocess(Image.open(p)) for p in paths])
    rows = F.normalize(bb.encode_images(pixels).half().float(), dim=-1)       # the index's fp16 store
    ref = F.normalize(bb.encode_images(pixels[3:4])[0].mean(0), dim=0)       # im03 as the query, encoded now
    text = "make the small star blue"
    t = bb.encode_texts([prompts.clean_text(text)])[0]
    k = 6
    for model in ("sum", "text"):   # text only: the text feature against every image's query tokens
        _same(service.search(None, text, k=k, model=model), _brute(rows, t, names, k))
    for model in ("sum", "image"):  # image only: the mean of the reference's query features; itself left out
        _same(service.search(Reference.from_id("im03.png"), None, k=k, model=model),
              _brute(rows, ref, names, k, {"im03.png"}))
    composed = service.search(Reference.from_id("im03.png"), text, k=k, model="sum")
    _same(composed, _brute(rows, F.normalize(ref + t, dim=0), names, k, {"im03.png"}))
    paged = service.search(None, text, k=3, offset=2, model="text")
    _same(paged, _brute(rows, t, names, 5)[2:])


def test_serve_a_trained_head(folder, checkpoints, bb, tmp_path):
    from zscir.index.gallery import build_index
    from zscir.resolve import indexing_backbone, load_retriever
    from zscir.serve.service import Reference, SearchService

    paths = _images(tmp_path / "images", 10, seed=7)
    names = [p.name for p in paths]
    choice = indexing_backbone(None, None, None, "cpu", model=checkpoints["finecir"])
    build_index(tmp_path / "idx", choice.backbone, images=tmp_path / "images", progress=False, model=choice.model)
    service = SearchService({"finecir": load_retriever(tmp_path / "idx")})
    head = own_head(folder, checkpoints["finecir"])
    text = "add a red circle"
    with torch.no_grad():
        rows = head.candidates(hidden_of(head, bb, paths)).half().float()
        composed = head.compose(hidden_of(head, bb, paths[2:3]), [prompts.clean_text(text)])[0]
        feats = head.candidates(hidden_of(head, bb, paths[2:3]))[0]
    turn = service.search(Reference.from_id("im02.png"), text, k=4)
    _same(turn, _brute(rows, composed, names, 4, {"im02.png"}))
    image_only = service.search(Reference.from_id("im02.png"), None, k=4)
    _same(image_only, _brute(rows, F.normalize(feats.mean(0), dim=0), names, 4, {"im02.png"}))
