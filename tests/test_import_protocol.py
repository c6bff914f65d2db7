"""Protocol exactness found by running the official scorers on zscir's rankings: each method's own
FashionIQ caption rule, duplicate ids refused in outside ranking files, Fine-FashionIQ's R@1, FineCIR's
extension-less files, and what the protocol block records."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.benchmarks import load_splits
from zscir.benchmarks.base import EvalSplit, Query
from zscir.errors import ZscirError
from zscir.evaluation import metrics
from zscir.evaluation.features import ReferenceFeatures
from zscir.evaluation.protocol import FIQ_RULES, Protocol, fashioniq_texts
from zscir.evaluation.ranking import encode_queries
from zscir.evaluation.scoring import score_split
from zscir.evaluation.submission import read_rankings
from zscir.models.methods import METHODS


def official_searle(c1, c2):        # SEARLE / LinCIR validate.py, fiq_generate_val_predictions
    return [f"{c1.strip('.?, ')} and {c2.strip('.?, ')}", f"{c2.strip('.?, ')} and {c1.strip('.?, ')}"]


def official_fti4cir(c1, c2):       # FTI4CIR evaluate.py, generate_fiq_val_predictions
    return [f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}", f"{c2.strip('.?, ')} and {c1.strip('.?, ')}"]


def official_pic2word(c1, c2):      # Pic2Word / Context-I2W data.py, FashionIQ.return_all
    return [f"{c2} and {c1}"]


@pytest.mark.parametrize("c1,c2", [("is red.", " has long sleeves?"), ("is darker", ""), ("", "Is SHORTER, "), ("", "")])
def test_each_rule_is_the_official_join(c1, c2):
    assert fashioniq_texts(c1, c2, "searle") == official_searle(c1, c2)
    assert fashioniq_texts(c1, c2, "fti4cir") == official_fti4cir(c1, c2)
    assert fashioniq_texts(c1, c2, "pic2word") == official_pic2word(c1, c2)
    if c2 == "" and c1:
        # the three val queries with an empty caption: zscir's own rule leaves it out, the officials keep " and "
        assert fashioniq_texts(c1, c2, "both-orders") == ["Is darker", "is darker"]
        assert fashioniq_texts(c1, c2, "searle")[0] == "is darker and "


def test_every_method_names_a_known_rule():
    assert {m.fiq_captions for m in METHODS.values()} <= set(FIQ_RULES)
    assert METHODS["searle"].fiq_captions == METHODS["lincir"].fiq_captions == "searle"
    assert METHODS["fti"].fiq_captions == "fti4cir" and METHODS["pic2word"].fiq_captions == "pic2word"


class RecordingQE:
    needs_tokens = False

    def __init__(self, rule):
        self.fiq_captions, self.seen = rule, []

    def encode_queries(self, ref, texts):
        self.seen.extend(texts)
        return torch.nn.functional.normalize(torch.randn(len(texts), 4), dim=-1)


def fiq_split():
    return EvalSplit("fashioniq", "val", "fashioniq", gallery=["a", "b"], images={"a": Path("a"), "b": Path("b")},
                     queries=[Query("0", "a", ("is red", ""), ("b",))], category="dress")


@pytest.mark.parametrize("rule", FIQ_RULES)
def test_method_mode_uses_the_models_rule_and_an_explicit_mode_overrides(rule):
    split, refs = fiq_split(), ReferenceFeatures({"a": 0, "b": 1}, np.zeros((2, 4), np.float16), None)
    qe = RecordingQE(rule)
    encode_queries(qe, split, refs, Protocol(), batch_size=4, progress=False)
    assert qe.seen == fashioniq_texts("is red", "", rule)
    qe = RecordingQE(rule)
    encode_queries(qe, split, refs, Protocol(fiq_captions="forward"), batch_size=4, progress=False)
    assert qe.seen == ["Is red"]


def circo_split():
    gallery = [str(i) for i in range(60)]
    return EvalSplit("circo", "val", "circo", gallery=gallery, images={g: Path(g) for g in gallery},
                     queries=[Query("7", "0", ("x",), ("1", "2", "3"))])


def test_duplicate_ids_in_an_outside_ranking_are_refused(tmp_path):
    split = circo_split()
    crafted = ["1"] * 50                            # the target ranked 50 times
    dup = np.array([[split.gallery_index["1"]] * 50])
    # what scoring it would give: mAP@5 far above 100 (why the CIRCO server refuses such files)
    assert metrics.circo_metrics(dup, [[1, 2, 3]])["mAP@5"] > 100
    (tmp_path / "circo_val.json").write_text(json.dumps({"7": crafted}))
    with pytest.raises(ZscirError) as err:
        read_rankings(split, tmp_path)
    assert "twice" in str(err.value) and "circo_val.json" in str(err.value) and "\n" not in str(err.value)
    ok = [str(i) for i in range(1, 51)]
    (tmp_path / "circo_val.json").write_text(json.dumps({"7": ok}))
    ranked, _ = read_rankings(split, tmp_path)
    assert score_split(split, ranked)["mAP@5"] == pytest.approx(100.0)


def make_fine_fiq(root: Path, ext: str):
    (root / "captions").mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (4, 4)).save(root / "images" / f"{name}.png")
    rows = [{"candidate": "a", "target": "b", "finemt": "make it red"}, {"candidate": "b", "target": "c", "finemt": "longer"}]
    (root / "captions" / f"fiq.fine.dress.val{ext}").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.mark.parametrize("ext", ["", ".jsonl"])
def test_fine_fashioniq_file_without_extension_and_its_r_at_1(tmp_path, ext):
    make_fine_fiq(tmp_path, ext)
    (split,) = load_splits("fine-fashioniq", tmp_path, "val", categories=["dress"])
    assert split.sources[0].endswith(f"fiq.fine.dress.val{ext}") and len(split.queries) == 2
    # the gallery is a, b, c; query 0 finds its target b first, query 1 finds c third
    ranked = np.array([[1, 0, 2], [0, 1, 2]])
    m = score_split(split, ranked)
    assert set(m) == {"R@1", "R@10", "R@50"} and m["R@1"] == 50.0 and m["R@10"] == 100.0


def test_protocol_block_records_cutoffs_subset_rule_galleries_and_truncation():
    p = Protocol().resolved(__import__("zscir.benchmarks", fromlist=["x"]).get_benchmark("cirr"))
    rec = p.record("cirr", ["targetpad-1.25"], fiq_rules={"image": "both-orders"}, truncated_prompts={"m": 3},
                   galleries={"cirr/val": {"definition": "d", "size": 2297}})
    assert rec["metrics"] == {"R@k": [1, 5, 10, 50], "R_subset@k": [1, 2, 3]}
    assert "reference is always excluded" in rec["cirr_subset"]
    assert rec["truncated_prompts"] == {"m": 3} and rec["gallery"]["cirr/val"]["size"] == 2297
    fiq = Protocol().record("fashioniq", None, fiq_rules={"a": "searle", "b": "pic2word"})
    assert fiq["fiq_captions"] == {"a": "searle", "b": "pic2word"} and fiq["fiq_captions_option"] == "method"
    assert Protocol().record("fine-fashioniq")["metrics"] == {"R@k": [1, 10, 50]}
    assert Protocol().record("circo")["metrics"] == {"mAP@k, R@k": [5, 10, 25, 50]}


def test_eval_with_imported_checkpoints_uses_each_methods_rule_and_preprocessing(tmp_path, tiny_backbone):
    """`zscir eval fashioniq --model A --model B --model text`: imported checkpoints take the backbone they
    record, their own preprocessing and FashionIQ rule; the protocol block says which model used what."""
    import warnings

    from safetensors.torch import save_file

    from zscir.backbone import load_backbone
    from zscir.evaluation.run import EvalRequest, evaluate
    from zscir.importers import import_checkpoint

    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(weights))
    bb = load_backbone("zscir-tiny-test", str(weights))
    E, T = bb.embed_dim, bb.token_dim
    torch.manual_seed(0)
    phi = {"layers.0.weight": torch.randn(4 * E, E), "layers.0.bias": torch.randn(4 * E),
           "layers.3.weight": torch.randn(4 * E, 4 * E), "layers.3.bias": torch.randn(4 * E),
           "layers.6.weight": torch.randn(T, 4 * E), "layers.6.bias": torch.randn(T)}
    torch.save({"Phi": phi}, tmp_path / "searle.pt")
    p2w = {"layers.0.0.weight": torch.randn(16, E), "layers.0.0.bias": torch.randn(16), "fc_out.weight": torch.randn(T, 16),
           "fc_out.bias": torch.randn(T)}
    torch.save({"epoch": 1, "state_dict_img2text": p2w}, tmp_path / "p2w.pt")
    import_checkpoint(tmp_path / "searle.pt", "searle", tmp_path / "ckpt" / "searle", backbone=bb)
    import_checkpoint(tmp_path / "p2w.pt", "pic2word", tmp_path / "ckpt" / "p2w", backbone=bb)

    root = tmp_path / "fiq"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    names = [f"B{i:03d}" for i in range(6)]
    for n in names:
        Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(root / "images" / f"{n}.png")
    records = [{"candidate": "B000", "target": "B001", "captions": ["is red.", "has long sleeves"]},
               {"candidate": "B002", "target": "B003", "captions": ["is darker", ""]}]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(records))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(EvalRequest("fashioniq", root=root, categories=["dress"], clip="zscir-tiny-test",
                                   pretrained=str(weights), progress=False, cache_root=tmp_path / "cache",
                                   out_dir=tmp_path / "run",
                                   models=[str(tmp_path / "ckpt" / "searle.safetensors"),
                                           str(tmp_path / "ckpt" / "p2w.safetensors"), "text"]))
    by_name = {m["name"]: m for m in res["models"]}
    assert {n: m["fiq_captions"] for n, m in by_name.items()} == {"searle": "searle", "p2w": "pic2word",
                                                                   "text": "both-orders"}
    assert {n: m["preprocess"] for n, m in by_name.items()} == {"searle": "targetpad-1.25", "p2w": "clip",
                                                                 "text": "targetpad-1.25"}
    assert res["protocol"]["fiq_captions"] == {"searle": "searle", "p2w": "pic2word", "text": "both-orders"}
    assert res["protocol"]["gallery"]["fashioniq/dress/val"]["size"] == 6
    assert set(res["protocol"]["truncated_prompts"]) == {"searle", "p2w", "text"}
    for m in by_name.values():
        assert set(m["splits"]["fashioniq/dress/val"]["metrics"]) == {"R@10", "R@50"}
        assert m["splits"]["fashioniq/dress/val"]["metrics"]["R@10"] == 100.0   # a 6-image gallery
