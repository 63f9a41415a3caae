"""Rank metrics, tie handling, streaming and sampled candidate sets."""

import math
import types

import numpy as np
import pytest

import nfcl
from nfcl.errors import InputError
from nfcl.metrics import MetricAccumulator, compute_metrics, ranks, sampled_candidates

TOL = {"rel": 1e-12, "abs": 1e-12}


def test_ranks_tie_modes():
    g, t = np.array([0, 0, 3]), np.array([0, 1, 4])
    assert ranks(g, t).tolist() == [1.0, 1.5, 6.0]
    assert ranks(g, t, "optimistic").tolist() == [1.0, 1.0, 4.0]
    assert ranks(g, t, "pessimistic").tolist() == [1.0, 2.0, 8.0]
    with pytest.raises(InputError, match="tie_mode"):
        ranks(g, t, "median")
    with pytest.raises(InputError):
        ranks(np.array([-1]), np.array([0]))
    with pytest.raises(InputError):
        ranks(np.array([0, 1]), np.array([0]))


def test_expected_rank_is_the_mean_position_among_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 6, 12).astype(float)
        target = int(rng.integers(12))
        others = np.delete(scores, target)
        g = int((others > scores[target]).sum())
        ties = int((others == scores[target]).sum())

        # the target's position averaged over every order of the tied items
        tied_positions = np.arange(g + 1, g + ties + 2)
        assert ranks(np.array([g]), np.array([ties]))[0] == tied_positions.mean()


def test_hand_computed_metrics():
    greater = np.array([0, 0, 3, 9, 10, 25])
    ties = np.array([0, 1, 0, 0, 0, 2])
    skips = np.array([0, 1, 1, 0, 1, 0])
    # expected ranks: 1, 1.5, 4, 10, 11, 27
    m = compute_metrics(greater, ties, skips, protocol="sampled")
    assert set(m) == {
        "sampled:HR@1",
        "sampled:HR@5",
        "sampled:HR@10",
        "sampled:HR@20",
        "sampled:MRR@10",
        "sampled:NDCG@10",
        "sampled:Skip-MRR@10",
    }
    assert m["sampled:HR@1"] == pytest.approx(1 / 6, **TOL)
    assert m["sampled:HR@5"] == pytest.approx(3 / 6, **TOL)
    assert m["sampled:HR@10"] == pytest.approx(4 / 6, **TOL)
    assert m["sampled:HR@20"] == pytest.approx(5 / 6, **TOL)
    mrr = (1 + 1 / 1.5 + 1 / 4 + 1 / 10) / 6
    assert m["sampled:MRR@10"] == pytest.approx(mrr, **TOL)
    ndcg = (1 + 1 / math.log2(2.5) + 1 / math.log2(5) + 1 / math.log2(11)) / 6
    assert m["sampled:NDCG@10"] == pytest.approx(ndcg, **TOL)
    # skipped targets: ranks 1.5, 4, 11 (the last beyond the cutoff)
    assert m["sampled:Skip-MRR@10"] == pytest.approx((1 / 1.5 + 1 / 4) / 3, **TOL)


def test_ties_do_not_count_in_the_targets_favour():
    # all candidates tie with the target: a constant model is not rewarded
    m = compute_metrics(np.array([0]), np.array([99]), protocol="full")
    assert m["full:HR@1"] == 0.0 and m["full:HR@20"] == 0.0
    m = compute_metrics(np.array([0]), np.array([99]), tie_mode="optimistic")
    assert m["full:HR@1"] == 1.0


def test_skip_mrr_is_nan_without_skipped_targets():
    m = compute_metrics(np.array([0, 2]), np.array([0, 0]), np.array([0, 0]))
    assert math.isnan(m["full:Skip-MRR@10"])
    assert m["full:MRR@10"] == pytest.approx((1 + 1 / 3) / 2, **TOL)
    empty = MetricAccumulator("full").result()
    assert all(math.isnan(v) for v in empty.values())


def test_streaming_equals_one_call_on_the_concatenation():
    rng = np.random.default_rng(1)
    n = 1000
    greater = rng.integers(0, 40, n)
    ties = rng.integers(0, 3, n) * (rng.random(n) < 0.3)
    skips = (rng.random(n) < 0.25).astype(np.uint8)
    whole = compute_metrics(greater, ties, skips, protocol="full", ks=(1, 3, 10))

    acc = MetricAccumulator("full", ks=(1, 3, 10))
    cuts = np.sort(rng.choice(np.arange(1, n), 9, replace=False))
    for g, t, s in zip(
        np.split(greater, cuts),
        np.split(ties, cuts),
        np.split(skips, cuts),
        strict=True,
    ):
        acc.update(g, t, s)
    streamed = acc.result()
    assert acc.n == n and acc.n_skipped == int(skips.sum())
    assert streamed.keys() == whole.keys()
    for k in whole:
        assert streamed[k] == pytest.approx(whole[k], **TOL)

    # a mean of batch means would differ (unequal batch sizes)
    means = [
        compute_metrics(g, t)["full:MRR@10"]
        for g, t in zip(np.split(greater, cuts), np.split(ties, cuts), strict=True)
    ]
    assert abs(np.mean(means) - whole["full:MRR@10"]) > 1e-6


def test_accumulator_validates_arguments():
    with pytest.raises(InputError):
        MetricAccumulator("full", ks=(0,))
    with pytest.raises(InputError):
        MetricAccumulator("")
    acc = MetricAccumulator("full")
    with pytest.raises(InputError, match="target_skips"):
        acc.update(np.array([0, 1]), np.array([0, 0]), np.array([1]))


# ---------------------------------------------------------------------------
# sampled candidates


def _fake_core(calls):
    """A stand-in for _core.sample_candidates that records its arguments."""

    def sample_candidates(targets, n_items, n_neg, seed, stream, seen):
        calls.append((targets.copy(), n_items, n_neg, seed, stream))
        uniq = list(dict.fromkeys(int(x) for x in targets))
        rng = np.random.default_rng([seed, stream])
        rest = np.setdiff1d(np.arange(1, n_items), uniq)
        neg = rng.choice(rest, n_neg, replace=False)
        cand = np.array(uniq + neg.tolist(), dtype=np.int32)
        return cand, np.array([uniq.index(int(x)) for x in targets], dtype=np.int32)

    return types.SimpleNamespace(sample_candidates=sample_candidates)


def test_sampled_candidates_groups_and_small_catalogue(monkeypatch):
    calls = []
    monkeypatch.setattr(nfcl, "_core", _fake_core(calls), raising=False)
    targets = np.array([3, 3, 5, 7, 1, 2, 9], dtype=np.int32)
    out = sampled_candidates(targets, n_items=12, seed=5, n_neg=6, group=3)
    assert [(a, b) for a, b, _ in out] == [(0, 3), (3, 6), (6, 7)]
    assert [c[4] for c in calls] == [0, 1, 2]  # stream = group index
    # group 0 has 2 unique targets, 9 other items: 6 fit; group 1 has 3, 8 others
    assert [c[2] for c in calls] == [6, 6, 6]
    out = sampled_candidates(targets, n_items=12, seed=5, n_neg=1000, group=3)
    assert [c[2] for c in calls[3:]] == [9, 8, 10]
    for (a, b, cand), t in zip(out, np.split(targets, [3, 6]), strict=True):
        assert sorted(cand.tolist()) == list(range(1, 12))  # every item
        assert b - a == len(t)
    with pytest.raises(InputError, match="targets"):
        sampled_candidates(np.array([0, 1]), n_items=12, seed=0)


def test_sampled_candidates_with_the_core():
    core = pytest.importorskip("nfcl._core")
    assert core is not None
    rng = np.random.default_rng(2)
    targets = rng.integers(1, 500, 200).astype(np.int32)
    a = sampled_candidates(targets, n_items=500, seed=11, n_neg=100, group=64)
    b = sampled_candidates(targets, n_items=500, seed=11, n_neg=100, group=64)
    c = sampled_candidates(targets, n_items=500, seed=12, n_neg=100, group=64)
    assert [x[:2] for x in a] == [(0, 64), (64, 128), (128, 192), (192, 200)]
    assert all(np.array_equal(x[2], y[2]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[2], y[2]) for x, y in zip(a, c, strict=True))
    for start, stop, cand in a:
        uniq = np.unique(targets[start:stop])
        assert len(np.unique(cand)) == len(cand) == len(uniq) + 100
        assert set(uniq.tolist()) <= set(cand.tolist())
        assert cand.min() >= 1 and cand.max() < 500

    # catalogue smaller than n_neg: every item becomes a candidate
    small = sampled_candidates(targets[:10] % 20 + 1, n_items=21, seed=1, n_neg=1000)
    assert sorted(small[0][2].tolist()) == list(range(1, 21))
