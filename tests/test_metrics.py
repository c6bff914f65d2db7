"""Metrics: hand-computed cases and brute-force loops on random rankings with many ties."""

from __future__ import annotations

import numpy as np
import pytest

from zscir.errors import ZscirError
from zscir.evaluation.metrics import (average_precision_at, circo_metrics, cirr_metrics, fashioniq_average,
                                      fashioniq_metrics, stable_topk, subset_ranking)


# ---------------------------------------------------------------- ranking
def test_stable_topk_breaks_ties_by_gallery_order():
    s = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]], dtype=np.float32)
    assert stable_topk(s, 2).tolist() == [[1, 3]]
    assert stable_topk(s, 3).tolist() == [[1, 3, 0]]        # 0 and 2 tie at the boundary: 0 first
    assert stable_topk(s, 7).tolist() == [[1, 3, 0, 2, 4, -1, -1]]
    assert stable_topk(s, 3, exclude=np.array([1])).tolist() == [[3, 0, 2]]
    assert stable_topk(s, 5, exclude=np.array([4])).tolist() == [[1, 3, 0, 2, -1]]
    assert stable_topk(s, 5, exclude=np.array([-1])).tolist() == [[1, 3, 0, 2, 4]]


def test_stable_topk_rejects_nan():
    with pytest.raises(ZscirError, match="NaN"):
        stable_topk(np.array([[0.1, np.nan]], dtype=np.float32), 1)


def brute_rank(row, exclude=-1):
    order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))
    return [j for j in order if j != exclude]


@pytest.mark.parametrize("seed", range(6))
def test_stable_topk_equals_full_sort(seed):
    rng = np.random.default_rng(seed)
    n_q, n_g = 40, int(rng.integers(5, 300))
    # few distinct values -> many ties, also at the k-th position
    s = (rng.integers(0, 7, size=(n_q, n_g)) / 7).astype(np.float32)
    exclude = rng.integers(-1, n_g, size=n_q)
    for k in (1, 3, 50):
        got = stable_topk(s, k, exclude)
        for q in range(n_q):
            want = brute_rank(s[q], exclude[q])[:k]
            assert got[q].tolist() == want + [-1] * (k - len(want))
        assert np.array_equal(stable_topk(s, k), np.argsort(-s, axis=1, kind="stable")[:, :k]
                              if k <= n_g else stable_topk(s, k))


def test_subset_ranking_drops_reference_and_uses_gallery_order_for_ties():
    s = np.array([[0.2, 0.7, 0.7, 0.9, 0.1, 0.7]], dtype=np.float32)
    members = [[5, 3, 2, 0, 1]]   # annotated order is irrelevant
    assert subset_ranking(s, members, exclude=np.array([3])).tolist() == [[1, 2, 5, 0]]
    assert subset_ranking(s, members, exclude=np.array([3]), k=3).tolist() == [[1, 2, 5]]


# ---------------------------------------------------------------- CIRCO
def test_circo_hand_computed():
    # ranking: a x b y c ... ; ground truths a, b, c, d (d never retrieved)
    a, x, b, y, c, d = 0, 1, 2, 3, 4, 5
    ranked = np.array([[a, x, b, y, c, -1]])
    m = circo_metrics(ranked, [[a, b, c, d]], ks=(1, 2, 5))
    assert m["mAP@1"] == pytest.approx(100 * 1 / 1)
    assert m["mAP@2"] == pytest.approx(100 * (1 / 1) / 2)
    assert m["mAP@5"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 4)   # min(5, 4 ground truths) = 4
    assert m["R@1"] == 100 and m["R@5"] == 100
    # target b: recall counts only the target, mAP all ground truths
    m = circo_metrics(ranked, [[b, a]], ks=(1, 2, 3))
    assert m["R@1"] == 0 and m["R@2"] == 0 and m["R@3"] == 100
    assert m["mAP@3"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # a ground truth outside the gallery (-1) is never found but still counts in the denominator
    m = circo_metrics(np.array([[a, x]]), [[a, -1, -1]], ks=(2,))
    assert m["mAP@2"] == pytest.approx(100 * 1 / 2)


def test_circo_two_queries_mean():
    ranked = np.array([[3, 1, 2], [0, 1, 2]])
    m = circo_metrics(ranked, [[2], [1, 0]], ks=(3,))
    assert m["mAP@3"] == pytest.approx(100 * ((1 / 3) / 1 + (1 + 1) / 2) / 2)
    assert m["R@3"] == 100


def brute_ap(order, gts, k):
    found, total = 0, 0.0
    for j, g in enumerate(order[:k]):
        if g in gts:
            found += 1
            total += found / (j + 1)
    return total / min(k, len(gts))


@pytest.mark.parametrize("seed", range(4))
def test_circo_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n_q, n_g = 30, 120
    s = (rng.integers(0, 15, size=(n_q, n_g)) / 15).astype(np.float32)
    gts = [list(rng.choice(n_g, size=int(rng.integers(1, 15)), replace=False)) for _ in range(n_q)]
    ranked = stable_topk(s, 50)
    m = circo_metrics(ranked, gts)
    for k in (5, 10, 25, 50):
        orders = [brute_rank(s[q]) for q in range(n_q)]
        assert m[f"mAP@{k}"] == pytest.approx(100 * np.mean([brute_ap(orders[q], set(gts[q]), k) for q in range(n_q)]))
        assert m[f"R@{k}"] == pytest.approx(100 * np.mean([gts[q][0] in orders[q][:k] for q in range(n_q)]))


def test_average_precision_denominator():
    h = np.array([[1, 0, 1, 0, 0, 0]], dtype=bool)
    assert average_precision_at(h, np.array([2]), 6)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at(h, np.array([20]), 6)[0] == pytest.approx((1 + 2 / 3) / 6)


# ---------------------------------------------------------------- CIRR
def test_cirr_reference_removed_and_subset_hand_computed():
    # gallery 0..5; query reference 3 scores highest; target 2
    s = np.array([[0.2, 0.7, 0.7, 0.9, 0.1, 0.7]], dtype=np.float32)
    ref = np.array([3])
    ranked = stable_topk(s, 50, exclude=ref)
    assert ranked[0, :5].tolist() == [1, 2, 5, 0, 4]
    sub = subset_ranking(s, [[3, 2, 0, 4, 5]], exclude=ref, k=3)
    assert sub.tolist() == [[2, 5, 0]]
    m = cirr_metrics(ranked, [2], sub)
    assert m == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                 "R_subset@1": 100.0, "R_subset@2": 100.0, "R_subset@3": 100.0}
    # without removal the reference would take rank 1 and push the target to rank 3
    assert stable_topk(s, 3).tolist() == [[3, 1, 2]]


@pytest.mark.parametrize("seed", range(4))
def test_cirr_equals_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    n_q, n_g = 50, 80
    s = (rng.integers(0, 9, size=(n_q, n_g)) / 9).astype(np.float32)
    refs = rng.integers(0, n_g, size=n_q)
    members = [list(rng.choice(n_g, size=6, replace=False)) for _ in range(n_q)]
    for q in range(n_q):   # as in CIRR: the reference and the target are members
        members[q][0] = refs[q] if refs[q] not in members[q] else members[q][0]
    targets = [int(rng.choice([m for m in members[q] if m != refs[q]])) for q in range(n_q)]
    m = cirr_metrics(stable_topk(s, 50, refs), targets, subset_ranking(s, members, refs, k=3))
    for k in (1, 5, 10, 50):
        want = np.mean([targets[q] in brute_rank(s[q], refs[q])[:k] for q in range(n_q)])
        assert m[f"R@{k}"] == pytest.approx(100 * want)
    for k in (1, 2, 3):
        # official: filter the reference-free full ranking down to the members
        want = np.mean([targets[q] in [g for g in brute_rank(s[q], refs[q]) if g in set(members[q])][:k]
                        for q in range(n_q)])
        assert m[f"R_subset@{k}"] == pytest.approx(100 * want)


# ---------------------------------------------------------------- FashionIQ
def test_fashioniq_recall_and_average():
    ranked = np.array([[0, 1], [1, 0], [2, 3]])
    m = fashioniq_metrics(ranked, [0, 0, 5], ks=(1, 2))
    assert m == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(200 / 3)}
    avg = fashioniq_average({"dress": {"R@10": 20.0, "R@50": 40.0}, "shirt": {"R@10": 30.0, "R@50": 50.0},
                             "toptee": {"R@10": 40.0, "R@50": 60.0}})
    assert avg == {"R@10": 30.0, "R@50": 50.0, "avg": 40.0}


def test_padding_never_counts_as_hit():
    ranked = np.array([[-1, -1]])
    assert fashioniq_metrics(ranked, [-1], ks=(2,))["R@2"] == 0.0
    assert circo_metrics(ranked, [[-1]], ks=(2,))["mAP@2"] == 0.0
