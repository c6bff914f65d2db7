"""The evaluation runner end to end: tiny model, small CIRCO-layout world, real CIRR/FashionIQ annotations."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.benchmarks import load_splits
from zscir.benchmarks.base import EvalSplit, Query
from zscir.cli import main
from zscir.errors import ZscirError
from zscir.evaluation.features import ReferenceFeatures
from zscir.evaluation.protocol import Protocol, fashioniq_texts
from zscir.evaluation.ranking import encode_queries
from zscir.evaluation.run import EvalRequest, evaluate
from zscir.evaluation.scoring import score_split
from zscir.evaluation.submission import check_payloads, ranking_payloads, read_rankings
from test_benchmarks_fixtures import SHARED, make_cirr, make_fashioniq, needs_shared

TINY = "zscir-tiny-test"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Random tiny CLIP saved to a file, so that its identity is a content hash (random-init is not)."""
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone(TINY, None)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    return str(path)


def make_world(root: Path, n_gallery=40, n_queries=10, seed=0, corrupt: tuple[int, ...] = ()) -> Path:
    """A small dataset in the CIRCO layout (as the shapes world is stored), with random images."""
    rng = np.random.default_rng(seed)
    img_dir = root / "COCO2017_unlabeled" / "unlabeled2017"
    img_dir.mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "annotations").mkdir(parents=True)
    (root / "annotations").mkdir()
    ids = [int(x) for x in rng.choice(10 ** 6, n_gallery, replace=False)]
    images = []
    for n, i in enumerate(ids):
        path = img_dir / f"{i:07d}.png"
        if n in corrupt:
            path.write_bytes(b"not a png at all")
        else:
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(path)
        images.append({"id": i, "file_name": path.name})
    (root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    for split in ("val", "test"):
        recs = []
        for q in range(n_queries):
            ref, *gt = [int(x) for x in rng.choice(ids, 1 + int(rng.integers(1, 5)), replace=False)]
            r = {"id": q, "reference_img_id": ref, "relative_caption": f"make it {['red', 'blue', 'green'][q % 3]}",
                 "shared_concept": "a thing"}
            if split == "val":
                r.update(target_img_id=gt[0], gt_img_ids=gt)
            recs.append(r)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(recs))
    return root


def run(tmp: Path, root, weights, **kw) -> dict:
    kw.setdefault("models", ["image", "text", "sum"])
    kw.setdefault("cache_root", tmp / "cache")
    kw.setdefault("out_dir", tmp / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tiny model's 32-token context truncates long captions
        return evaluate(EvalRequest(kw.pop("benchmark", "circo"), root=root, clip=TINY, pretrained=weights,
                                    progress=False, **kw))


@pytest.fixture(scope="module")
def world_run(tmp_path_factory, tiny_weights):
    tmp = tmp_path_factory.mktemp("world_run")
    root = make_world(tmp / "world")
    return tmp, root, run(tmp, root, tiny_weights, splits=["val", "test"])


# ---------------------------------------------------------------- results and rankings files
def test_results_files_and_recomputable_metrics(world_run):
    tmp, root, results = world_run
    out = tmp / "run"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["protocol"]["remove_reference"] is False and on_disk["protocol"]["tie_break"].startswith("gallery order")
    assert [m["name"] for m in on_disk["models"]] == ["image", "text", "sum"]
    assert on_disk["models"][2]["identity"]["backbone"]["pretrained"].startswith("sha256:")
    md = (out / "results.md").read_text()
    assert "| sum |" in md and "mAP@10" in md and "remove_reference: False" in md
    val, test = (load_splits("circo", root, s)[0] for s in ("val", "test"))
    for m in on_disk["models"]:
        r = m["splits"]["circo/val"]
        assert set(r["metrics"]) == {f"{a}@{k}" for a in ("mAP", "R") for k in (5, 10, 25, 50)}
        # anyone can recompute the metrics from the rankings files
        ranked, subset = read_rankings(val, out / "rankings" / m["name"])
        assert score_split(val, ranked, subset) == pytest.approx(r["metrics"], abs=1e-9)
        assert m["splits"]["circo/test"]["metrics"] is None
        sub = json.loads((out / "rankings" / m["name"] / "circo_test.json").read_text())
        assert list(sub) == [str(i) for i in range(10)]
        assert all(len(v) == 40 and len(set(v)) == 40 and all(isinstance(x, int) for x in v) for v in sub.values())


def test_image_only_ranks_reference_first_unless_removed(world_run, tiny_weights):
    tmp, root, results = world_run
    val = load_splits("circo", root, "val")[0]
    ranked = json.loads((tmp / "run" / "rankings" / "image" / "circo_val.json").read_text())
    assert all(ranked[q.qid][0] == int(q.reference) for q in val.queries)
    again = run(tmp, root, tiny_weights, models=["image"], splits=["val"], out_dir=tmp / "run_removed",
                protocol=Protocol(remove_reference=True))
    assert again["protocol"]["remove_reference"] is True
    ranked2 = json.loads((tmp / "run_removed" / "rankings" / "image" / "circo_val.json").read_text())
    for q in val.queries:
        assert int(q.reference) not in ranked2[q.qid]
        assert ranked2[q.qid] == [x for x in ranked[q.qid] if x != int(q.reference)][:len(ranked2[q.qid])]


def test_second_run_reencodes_nothing_and_is_identical(world_run, tiny_weights):
    tmp, root, first = world_run
    assert first["models"][0]["splits"]["circo/val"]["feature_cache"]["encoded"] == 40
    second = run(tmp, root, tiny_weights, models=["sum"], splits=["val"], out_dir=tmp / "run2")
    cache = second["models"][0]["splits"]["circo/val"]["feature_cache"]
    assert cache == {"encoded": 0, "reused": 40, "images_per_s": 0.0}
    assert (json.loads((tmp / "run2/rankings/sum/circo_val.json").read_text())
            == json.loads((tmp / "run/rankings/sum/circo_val.json").read_text()))
    assert second["models"][0]["splits"]["circo/val"]["metrics"] == first["models"][2]["splits"]["circo/val"]["metrics"]


def test_ranking_equals_brute_force_on_store_features(world_run, tiny_weights):
    """The runner's rankings equal a plain loop over the cached gallery features and fresh query features."""
    tmp, root, results = world_run
    from zscir.backbone import ImageFeatures, load_backbone
    from zscir.evaluation.features import CacheReport, gallery_features
    from zscir.models.query import load_query_encoder

    val = load_splits("circo", root, "val")[0]
    bb = load_backbone(TINY, tiny_weights)
    assert bb.identity == results["models"][0]["identity"]["backbone"]
    gal = gallery_features(bb, val, tmp / "cache", CacheReport(), progress=False)
    g = torch.nn.functional.normalize(torch.from_numpy(np.asarray(gal.pooled, dtype=np.float32)), dim=-1)
    qe = load_query_encoder("sum", bb)
    ranked = json.loads((tmp / "run/rankings/sum/circo_val.json").read_text())
    for q in val.queries:
        ref = gal.pooled[val.gallery_index[q.reference]]
        feat = qe.encode_queries(ImageFeatures(torch.from_numpy(np.asarray(ref, np.float32))[None]), list(q.captions))
        s = (feat @ g.T)[0].numpy()
        order = sorted(range(len(s)), key=lambda j: (-float(s[j]), j))
        assert ranked[q.qid] == [int(val.gallery[j]) for j in order]


# ---------------------------------------------------------------- corrupt images
def test_corrupt_gallery_and_reference_images_are_skipped_and_counted(tmp_path, tiny_weights):
    root = make_world(tmp_path / "w", corrupt=(3, 7), seed=1)
    ids = [e["id"] for e in json.loads((root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").read_text())["images"]]
    bad = {ids[3], ids[7]}
    val = json.loads((root / "annotations/val.json").read_text())
    val[0]["reference_img_id"] = ids[3]    # at least one query with a corrupt reference
    n_bad_ref = sum(r["reference_img_id"] in bad for r in val)
    (root / "annotations/val.json").write_text(json.dumps(val))
    res = run(tmp_path, root, tiny_weights, models=["image"], splits=["val"], allow_missing_images=True)
    r = res["models"][0]["splits"]["circo/val"]
    assert sorted(int(c["id"]) for c in r["corrupt_images"]) == sorted(bad)
    assert r["skipped_queries"] == n_bad_ref >= 1
    ranked = json.loads((tmp_path / "run/rankings/image/circo_val.json").read_text())
    assert ranked["0"] == []
    assert all(not (set(v) & bad) for v in ranked.values())
    assert all(len(v) == 38 for k, v in ranked.items() if int(k) not in
               [r["id"] for r in val if r["reference_img_id"] in bad])


# ---------------------------------------------------------------- FashionIQ caption joining
class TextHashQE:
    """A fake query encoder: a fixed random unit vector per text, so averaging can be checked exactly."""
    needs_tokens = False

    def encode_queries(self, ref, texts):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            out.append(torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0))
        return torch.stack(out)


def test_fashioniq_texts():
    assert fashioniq_texts("is red.", " has long sleeves?") == ["Is red and has long sleeves", "has long sleeves and is red"]
    assert fashioniq_texts("is red", "", mode="both-orders") == ["Is red", "is red"]
    assert fashioniq_texts("", "") == ["", ""]
    assert fashioniq_texts("is red", "is long", mode="forward") == ["Is red and is long"]
    with pytest.raises(ZscirError, match="--fiq-captions"):
        Protocol(fiq_captions="random")


def test_both_orders_average_normalised_features():
    split = EvalSplit("fashioniq", "val", "fashioniq", gallery=["a", "b"], images={"a": Path("a"), "b": Path("b")},
                      queries=[Query("0", "a", ("is red", "is long"), ("b",)), Query("1", "b", ("is blue", ""), ("a",))],
                      category="dress")
    refs = ReferenceFeatures({"a": 0, "b": 1}, np.zeros((2, 4), np.float16), None)
    qe = TextHashQE()
    feats, valid = encode_queries(qe, split, refs, Protocol(), batch_size=1, progress=False)
    assert valid.all()
    f = lambda t: qe.encode_queries(None, [t])[0]
    want0 = torch.nn.functional.normalize(f("Is red and is long") + f("is long and is red"), dim=0)
    assert torch.allclose(feats[0], want0, atol=1e-6)
    # an empty caption is left out of the join; the orders differ only by capitalisation (CLIP lower-cases)
    assert torch.allclose(feats[1], torch.nn.functional.normalize(f("Is blue") + f("is blue"), dim=0), atol=1e-6)
    fwd, _ = encode_queries(qe, split, refs, Protocol(fiq_captions="forward"), batch_size=8, progress=False)
    assert torch.allclose(fwd[0], f("Is red and is long"), atol=1e-6)


# ---------------------------------------------------------------- real annotations, identical placeholder images
def gallery_order_rank(split, q, remove_reference):
    return [g for g in split.gallery if not (remove_reference and g == q.reference)]


@needs_shared
def test_cirr_val_end_to_end_with_all_ties(tmp_path, tiny_weights):
    """Identical placeholder images make every score tie: rankings must be gallery order, exactly."""
    root = make_cirr(tmp_path, splits=("val",))
    res = run(tmp_path, root, tiny_weights, benchmark="cirr", models=["image"])
    (split,) = load_splits("cirr", root, "val")
    want = {}
    for k in (1, 5, 10, 50):
        want[f"R@{k}"] = 100 * np.mean([q.targets[0] in gallery_order_rank(split, q, True)[:k] for q in split.queries])
    for k in (1, 2, 3):
        want[f"R_subset@{k}"] = 100 * np.mean(
            [q.targets[0] in sorted(set(q.subset) - {q.reference}, key=split.gallery_index.get)[:k] for q in split.queries])
    got = res["models"][0]["splits"]["cirr/val"]
    assert got["metrics"] == pytest.approx(want, abs=1e-9)
    assert got["queries"] == 4181 and got["gallery"] == 2297 and got["num_submission_problems"] == 0
    rec = json.loads((tmp_path / "run/rankings/image/cirr_val.recall.json").read_text())
    assert rec["version"] == "rc2" and rec["metric"] == "recall" and len(rec) == 4181 + 2


@needs_shared
def test_fashioniq_dress_end_to_end_with_all_ties(tmp_path, tiny_weights):
    root = make_fashioniq(tmp_path, splits=("val",))
    res = run(tmp_path, root, tiny_weights, benchmark="fashioniq", models=["text"], categories=["dress"])
    (split,) = load_splits("fashioniq", root, "val", categories=["dress"])
    m = res["models"][0]
    assert res["protocol"]["fiq_captions"] == "both-orders"
    got = m["splits"]["fashioniq/dress/val"]["metrics"]
    # text-only: the query ignores the image, but every gallery image is identical -> gallery order
    for k in (10, 50):
        assert got[f"R@{k}"] == pytest.approx(100 * np.mean([q.targets[0] in split.gallery[:k] for q in split.queries]))
    assert m["aggregates"]["fashioniq/val"]["metrics"]["R@10"] == got["R@10"]
    assert m["aggregates"]["fashioniq/val"]["categories"] == ["dress"]


# ---------------------------------------------------------------- submission formats against the official examples
@needs_shared
def test_cirr_test1_submission_matches_demo_files(tmp_path):
    root = make_cirr(tmp_path, splits=("test1",))
    (split,) = load_splits("cirr", root, "test1")
    rng = np.random.default_rng(0)
    from zscir.evaluation.metrics import stable_topk, subset_ranking
    scores = rng.random((len(split.queries), len(split.gallery))).astype(np.float32)
    refs = np.array([split.gallery_index[q.reference] for q in split.queries])
    ranked = stable_topk(scores, 50, refs)
    subset = subset_ranking(scores, [[split.gallery_index[m] for m in q.subset] for q in split.queries], refs, k=3)
    payloads = ranking_payloads(split, ranked, subset)
    for metric, demo in (("recall", "test1_pred_ranks_recall.json"), ("recall_subset", "test1_pred_ranks_recall_subset.json")):
        official = json.loads((SHARED / "cirr/demo_files" / demo).read_text())
        ours = payloads[metric]
        assert set(ours) == set(official) and ours["version"] == official["version"] and ours["metric"] == official["metric"]
        width = 3 if metric == "recall_subset" else 50
        assert all(len(ours[k]) == len(official[k]) == width for k in official if k not in ("version", "metric"))
    assert check_payloads(split, payloads) == []


@needs_shared
def test_circo_test_submission_matches_example_keys(tmp_path):
    from test_benchmarks_fixtures import make_circo
    root = make_circo(tmp_path)
    (split,) = load_splits("circo", root, "test")
    ranked = np.tile(np.arange(50), (800, 1))
    ours = ranking_payloads(split, ranked)[""]
    official = json.loads((SHARED / "circo/submission_examples/submission_test.json").read_text())
    assert list(ours) == list(official)
    assert all(type(ours[k][0]) is type(official[k][0]) is int and len(ours[k]) == 50 for k in official)
    assert check_payloads(split, {"": ours}) == []
    ours["5"] = ours["5"][:49] + [ours["5"][0]]
    assert check_payloads(split, {"": ours}) == ["rankings: query 5 ranks an image twice"]


# ---------------------------------------------------------------- CLI
def test_cli_json_and_errors(world_run, tiny_weights, capsys, tmp_path):
    tmp, root, _ = world_run
    with pytest.raises(SystemExit) as e:
        main(["eval", "circo", "--root", str(root), "--model", "sum", "--clip", TINY, "--pretrained", tiny_weights,
              "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp / "cache"), "--json", "--no-progress"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"][0]["splits"]["circo/val"]["feature_cache"]["encoded"] == 0
    assert out["command"].startswith("zscir")

    def fails(args, pattern):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code != 0 and "Traceback" not in err
        assert any(pattern in line for line in err.splitlines()), err

    fails(["eval", "circo"], "CIRCO needs --root")
    fails(["eval", "circo", "--root", str(tmp_path)], "expected")
    fails(["eval", "circo", "--root", str(root), "--model", "nope.safetensors"], "neither a baseline")
    fails(["eval", "circo", "--root", str(root), "--model", "sum"], "needs a backbone")
    fails(["eval", "circo", "--root", str(root), "--split", "dev", "--model", "sum"], "split 'dev'")
    fails(["eval", "cirr", "--root", str(root), "--fine-gallery", "x"], "Invalid value")


# ---------------------------------------------------------------- shapes world, checkpoints, default models
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    build = pytest.importorskip("zscir.world.build")
    return build.generate_world(tmp_path_factory.mktemp("shapes") / "world", build.WorldConfig.tiny(), workers=1,
                                progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def fti_checkpoint(tmp_path_factory, tiny_weights):
    """A (random-init) FTI mapping network saved as a zscir checkpoint on the tiny backbone."""
    from zscir.backbone import load_backbone
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint

    bb = load_backbone(TINY, tiny_weights)
    torch.manual_seed(0)
    net = create_mapping_network("fti4cir-tiny", backbone_dims(bb))
    folder = tmp_path_factory.mktemp("ckpts")
    save_mapping_checkpoint(folder / "shapes_fti", net, get_mapping_config("fti4cir-tiny"), bb)
    return folder / "shapes_fti.safetensors"


def test_shapes_fine_and_coarse_with_a_token_checkpoint(tmp_path, tiny_world, tiny_weights, fti_checkpoint, capsys):
    """`zscir eval shapes`: default splits val + val_coarse; an FTI checkpoint needs reference tokens."""
    from zscir.world.shipped import shipped_checkpoints

    assert shipped_checkpoints(None, fti_checkpoint.parent) == [fti_checkpoint]
    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--root", str(tiny_world), "--clip", TINY, "--pretrained", tiny_weights,
              "--model", "sum", "--model", str(fti_checkpoint), "--out", str(tmp_path / "run"),
              "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "shapes/val: 16 queries" in printed and "shapes/val_coarse: 16 queries" in printed
    assert "shapes_fti" in printed and "mAP@10" in printed
    res = json.loads((tmp_path / "run/results.json").read_text())
    fti = res["models"][1]
    assert fti["identity"]["method"] == "fti" and len(fti["identity"]["checkpoint_sha256"]) == 64
    val = fti["splits"]["shapes/val"]
    # the gallery was cached by the sum run; FTI adds the references with tokens (16 distinct at most)
    assert val["feature_cache"]["encoded"] <= 16 and val["feature_cache"]["reused"] >= len(load_splits("shapes", tiny_world, "val")[0].gallery)
    assert fti["splits"]["shapes/val_coarse"]["feature_cache"]["encoded"] == 0   # same references: reused
    split = load_splits("shapes", tiny_world, "val_coarse")[0]
    ranked, _ = read_rankings(split, tmp_path / "run/rankings/shapes_fti")
    assert score_split(split, ranked) == pytest.approx(fti["splits"]["shapes/val_coarse"]["metrics"])


def test_checkpoint_on_another_backbone_is_refused(tmp_path, tiny_world, fti_checkpoint):
    with pytest.raises(ZscirError, match="was trained on backbone"):
        run(tmp_path, tiny_world, None, benchmark="shapes", models=[str(fti_checkpoint)])


@needs_shared
def test_circo_metrics_of_the_official_val_example_match_a_searle_style_loop(tmp_path):
    """Score CIRCO's own submission example (val) and compare with the loop peers use (SEARLE/FTI4CIR)."""
    from dataclasses import replace

    from test_benchmarks_fixtures import make_circo
    (val,) = load_splits("circo", make_circo(tmp_path), "val")
    example = json.loads((SHARED / "circo/submission_examples/submission_val.json").read_text())
    extra = sorted({str(i) for v in example.values() for i in v} - set(val.gallery))
    split = replace(val, gallery=val.gallery + extra)   # the example ranks COCO ids beyond our placeholder gallery
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "circo_val.json").write_text(json.dumps(example))
    ranked, _ = read_rankings(split, tmp_path / "ex")
    ours = score_split(split, ranked)
    want = {}
    for k in (5, 10, 25, 50):
        aps, recalls = [], []
        for q in split.queries:
            names = [str(i) for i in example[q.qid]]
            labels = np.isin(names, q.targets).astype(float)
            precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
            aps.append(precisions[:k].sum() / min(len(q.targets), k))
            recalls.append(float(q.targets[0] in names[:k]))
        want[f"mAP@{k}"], want[f"R@{k}"] = 100 * np.mean(aps), 100 * np.mean(recalls)
    assert ours == pytest.approx(want, abs=1e-9)
    assert ours["mAP@50"] > 0   # the example is not all misses: this exercises real hits
