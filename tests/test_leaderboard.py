"""A leaderboard that holds: runs over several world seeds, paired bootstrap intervals, mAP@10 per edit type.

Each statistic is checked against a straightforward re-implementation here (loops over seeds, resamples
and queries), computed from what the runs wrote (results.json, the ranking files, the annotation files).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zscir.errors import ZscirError
from zscir.evaluation.bootstrap import paired_interval, parse_pair
from zscir.evaluation.edit_types import groups
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.run import EvalRequest
from zscir.evaluation.seeds import evaluate_seeds, parse_seeds
from zscir.world.build import WorldConfig, generate_world

SEEDS = (3, 4)
MODELS = ["image", "text", "sum"]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("leaderboard")
    return {s: generate_world(base / f"world{s}", WorldConfig.tiny(seed=s), workers=1, progress=False,
                              log=lambda *_: None) for s in SEEDS}


@pytest.fixture(scope="module")
def run(worlds, tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard-run") / "run"
    req = EvalRequest("shapes", models=MODELS, splits=["val", "val_coarse"], out_dir=out,
                      cache_root=out.parent / "cache", progress=False, compare=("sum", "image"), bootstrap=(200, 7))
    combined = evaluate_seeds(req, list(SEEDS), root_of=worlds.__getitem__)
    return out, combined


def _loop_interval(a, b, resamples, seed, level=0.95):
    """The bootstrap as written by hand: one resample at a time, percentiles by linear interpolation."""
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        diffs.append(sum(a[i] for i in idx) / n - sum(b[i] for i in idx) / n)
    diffs.sort()

    def pct(q):
        pos = q * (len(diffs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(diffs) - 1)
        return diffs[lo] + (pos - lo) * (diffs[hi] - diffs[lo])
    return pct((1 - level) / 2), pct((1 + level) / 2)


def test_paired_interval_against_a_loop():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 100, 41), rng.uniform(0, 100, 41)
    b[:20] = a[:20]                          # paired: equal rows on half the queries
    iv = paired_interval(a, b, resamples=300, seed=5)
    low, high = _loop_interval(list(a), list(b), 300, 5)
    assert iv["low"] == pytest.approx(low, abs=1e-9) and iv["high"] == pytest.approx(high, abs=1e-9)
    assert iv["difference"] == pytest.approx(a.mean() - b.mean())
    assert (iv["resamples"], iv["seed"], iv["queries"], iv["level"]) == (300, 5, 41, 0.95)
    assert iv["contains_zero"] == (low <= 0 <= high)
    # the same seed gives the same interval; identical rows give [0, 0]
    assert paired_interval(a, b, 300, 5) == iv
    same = paired_interval(a, a, 100, 0)
    assert (same["low"], same["high"], same["contains_zero"]) == (0.0, 0.0, True)


def test_multi_seed_summary_against_the_seed_runs(run):
    out, combined = run
    assert combined["seeds"] == list(SEEDS)
    per_seed = {s: json.loads((out / f"seed{s}" / "results.json").read_text()) for s in SEEDS}
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == combined["summary"]
    for split in ("shapes/val", "shapes/val_coarse"):
        rows = combined["summary"][split]
        assert list(rows)[:len(MODELS)] == MODELS and "[oracle] caption" in rows
        for name, row in rows.items():
            for metric, s in row["metrics"].items():
                values = []
                for seed in SEEDS:
                    entries = per_seed[seed]["models"] + per_seed[seed]["oracles"]
                    values.append([e for e in entries if e["name"] == name][0]["splits"][split]["metrics"][metric])
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                assert s["values"] == pytest.approx(values)
                assert (s["mean"], s["std"], s["min"], s["max"]) == pytest.approx((mean, std, min(values), max(values)))
        # each model's per-query AP@10 averages to its mAP@10
        for seed in SEEDS:
            for m in per_seed[seed]["models"]:
                r = m["splits"][split]
                assert np.mean(r["per_query"]["AP@10"]) == pytest.approx(r["metrics"]["mAP@10"], abs=1e-5)


def test_compare_intervals_per_split_and_seed(run):
    out, combined = run
    c = combined["compare"]
    assert (c["a"], c["b"], c["resamples"], c["seed"]) == ("sum", "image", 200, 7)
    for seed in SEEDS:
        res = json.loads((out / f"seed{seed}" / "results.json").read_text())
        ap = {m["name"]: m["splits"] for m in res["models"]}
        for split in ("shapes/val", "shapes/val_coarse"):
            a, b = ap["sum"][split]["per_query"]["AP@10"], ap["image"][split]["per_query"]["AP@10"]
            iv = c["splits"][split][str(seed)]
            low, high = _loop_interval(a, b, 200, 7)
            assert (iv["low"], iv["high"]) == pytest.approx((low, high), abs=1e-9)
            assert iv["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    text = (out / "results.md").read_text()
    assert "paired bootstrap sum - image, mAP@10: 95% percentile interval, 200 resamples of the queries, seed 7" in text


def _ap10(ranking, gts):
    """AP@10 by hand: precision at each hit within the top 10, over min(10, number of ground truths)."""
    found, total = 0, 0.0
    for j, image in enumerate(ranking[:10]):
        if image in gts:
            found += 1
            total += found / (j + 1)
    return 100.0 * total / min(10, len(gts))


def test_by_edit_table_against_a_brute_force_count(run, worlds):
    out, combined = run
    for split, fname in (("shapes/val", "val"), ("shapes/val_coarse", "val_coarse")):
        records = {s: json.loads((worlds[s] / "annotations" / f"{fname}.json").read_text()) for s in SEEDS}
        for grouping in ("single", "contains"):
            pooled = combined["by_edit"]["splits"][split][grouping]
            members = {}   # kind -> [(seed, record)]
            for s in SEEDS:
                for r in records[s]:
                    kinds = [e["kind"] for e in r["edits"]]
                    chosen = kinds if grouping == "single" and len(kinds) == 1 else (
                        set(kinds) if grouping == "contains" else [])
                    for k in chosen:
                        members.setdefault(k, []).append((s, r))
            assert pooled["queries"] == {k: len(v) for k, v in sorted(members.items())}
            for name in MODELS:
                rankings = {s: json.loads((out / f"seed{s}" / "rankings" / name / f"{split.replace('/', '_')}.json")
                                          .read_text()) for s in SEEDS}
                for k, rs in members.items():
                    aps = [_ap10(rankings[s][str(r["id"])], set(r["gt_img_ids"])) for s, r in rs]
                    assert pooled["rows"][name][k]["pooled"] == pytest.approx(sum(aps) / len(aps), abs=1e-4)
                    per_seed = [np.mean([a for (s, _), a in zip(rs, aps) if s == seed]) for seed in SEEDS
                                if any(s == seed for s, _ in rs)]
                    assert pooled["rows"][name][k]["min"] == pytest.approx(min(per_seed), abs=1e-4)


def test_groupings_and_options():
    kinds = [["color"], ["color", "shape"], ["shape", "shape"], ["remove"], []]
    assert groups(kinds, "single") == {"color": [0], "remove": [3]}
    assert groups(kinds, "contains") == {"color": [0, 1], "remove": [3], "shape": [1, 2]}
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_pair("shapes_fti,shapes_scot") == ("shapes_fti", "shapes_scot")
    for bad in ("", "0,0", "-1", "a,b"):
        with pytest.raises(ZscirError, match="--seeds"):
            parse_seeds(bad)
    for bad in ("a", "a,a", "a,b,c", "a,"):
        with pytest.raises(ZscirError, match="--compare"):
            parse_pair(bad)


def test_reports_state_the_reference_convention(run, worlds, tmp_path):
    from zscir.evaluation import report
    from zscir.evaluation.leaderboard_report import seeds_text
    from zscir.evaluation.run import evaluate

    out, combined = run
    head = seeds_text(combined, by_edit=True).splitlines()[0]
    assert "remove_reference=False" in head and "reference image kept in the gallery (CIRCO's convention" in head
    assert "by edit type, single" in seeds_text(combined, by_edit=True)
    assert "by edit type" not in seeds_text(combined)
    one = evaluate(EvalRequest("shapes", root=worlds[3], models=["image"], splits=["val"], out_dir=tmp_path / "r",
                               cache_root=out.parent / "cache", progress=False, oracles=False,
                               protocol=Protocol(remove_reference=True)))
    assert "reference image removed from its own ranking" in report.text(one).splitlines()[0]
    assert "mAP@10 by edit type, contains" in (tmp_path / "r" / "results.md").read_text()
    with pytest.raises(ZscirError, match="--compare: no row 'nope'"):
        evaluate(EvalRequest("shapes", root=worlds[3], models=["image"], splits=["val"], out_dir=tmp_path / "r2",
                             progress=False, compare=("image", "nope")))
