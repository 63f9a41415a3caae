"""_core.rank_targets and _core.topk against hand cases and NumPy references."""

import numpy as np
import pytest

from nfcl import _core


def grid_data(rng, N, V, C, lo=-3, hi=3):
    """Small-integer q and emb: every score is exact in float32, ties abound."""
    q = rng.integers(lo, hi + 1, (N, C)).astype(np.float32)
    emb = rng.integers(lo, hi + 1, (V, C)).astype(np.float32)
    return q, emb


def exact_scores(q, emb):
    """(N, V) float64 scores with exact products; the same sum for equal rows."""
    out = np.empty((len(q), len(emb)))
    q64, e64 = q.astype(np.float64), emb.astype(np.float64)
    for i0 in range(0, len(emb), 512):
        out[:, i0 : i0 + 512] = (q64[:, None, :] * e64[None, i0 : i0 + 512]).sum(-1)
    return out


def rank_ref(q, emb, cand, targets):
    """greater / ties per row by the definition, the target excluded by id."""
    S = exact_scores(q, emb)
    ids = np.arange(1, len(emb)) if cand is None else cand
    greater, ties = [], []
    for n, t in enumerate(targets):
        others = ids[ids != t]
        greater.append(int((S[n, others] > S[n, t]).sum()))
        ties.append(int((S[n, others] == S[n, t]).sum()))
    return np.array(greater), np.array(ties)


def topk_ref(q, emb, k, exclude=None):
    """Best k ids per row: higher score first, ties to the lower id."""
    S = exact_scores(q, emb)
    ids = np.zeros((len(q), k), np.int64)
    for n in range(len(q)):
        pool = np.arange(1, len(emb))
        if exclude is not None:
            pool = np.setdiff1d(pool, exclude[n])
        order = np.lexsort((pool, -S[n, pool]))
        ids[n] = pool[order[:k]]
    return ids, np.take_along_axis(S, ids, 1)


# ---------------------------------------------------------------------------
# rank_targets


def test_rank_hand_case_with_ties():
    emb = np.array(
        [[9, 9], [1, 0], [0, 1], [1, 0], [2, 0], [0, 0], [-1, 0], [1, 0]], np.float32
    )  # row 0 is padding and must never be counted
    q = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    targets = np.array([1, 5, 3], np.int32)

    greater, ties = _core.rank_targets(q, emb, None, targets)
    assert greater.tolist() == [1, 1, 0]
    assert ties.tolist() == [2, 5, 6]

    # candidate lists: the target need not be in them, copies of it never count
    greater, ties = _core.rank_targets(
        q, emb, np.array([4, 1, 2, 6], np.int32), targets
    )
    assert greater.tolist() == [1, 1, 0]
    assert ties.tolist() == [0, 3, 4]
    greater, ties = _core.rank_targets(
        q, emb, np.array([4, 4, 1, 1], np.int32), targets
    )
    assert greater.tolist() == [2, 0, 0]
    assert ties.tolist() == [0, 4, 4]


@pytest.mark.parametrize("with_cand", [False, True])
def test_rank_grid_scores_match_reference(with_cand):
    rng = np.random.default_rng(0)
    N, V, C = 40, 9000, 6  # several item blocks
    q, emb = grid_data(rng, N, V, C)
    targets = rng.integers(1, V, N).astype(np.int32)
    cand = None
    if with_cand:
        cand = rng.choice(np.arange(1, V), 5000, replace=False).astype(np.int32)
        cand[:10] = targets[:10]
    greater, ties = _core.rank_targets(q, emb, cand, targets)
    want_g, want_t = rank_ref(q, emb, cand, targets)
    np.testing.assert_array_equal(greater, want_g)
    np.testing.assert_array_equal(ties, want_t)
    assert want_t.min() > 0  # the case really has ties


def test_rank_random_floats_with_copied_rows():
    """Copies of a target's row tie with it wherever they sit in the blocks."""
    rng = np.random.default_rng(1)
    N, V, C = 30, 9000, 16
    q = rng.standard_normal((N, C)).astype(np.float32)
    emb = rng.standard_normal((V, C)).astype(np.float32)
    targets = rng.integers(1, V, N).astype(np.int32)
    for n, pos in enumerate(rng.choice(np.arange(1, V), (N, 3), replace=False)):
        emb[pos] = emb[targets[n]]
    emb[[4095, 4096, 4097]] = 0.0
    q[0] = 0.0

    greater, ties = _core.rank_targets(q, emb, None, targets)
    want_g, want_t = rank_ref(q, emb, None, targets)
    np.testing.assert_array_equal(greater, want_g)
    np.testing.assert_array_equal(ties, want_t)
    assert ties[0] == V - 2 and (ties[1:] >= 3).all()


def test_rank_rejects_bad_targets():
    q, emb = np.ones((2, 3), np.float32), np.ones((6, 3), np.float32)
    for bad in ([1, 0], [1, 6], [-1, 2]):
        with pytest.raises(ValueError):
            _core.rank_targets(q, emb, None, np.array(bad, np.int32))
    with pytest.raises(ValueError):
        _core.rank_targets(
            q, emb, np.array([1, 0], np.int32), np.array([1, 2], np.int32)
        )
    q[1, 1] = np.nan
    with pytest.raises(FloatingPointError):
        _core.rank_targets(q, emb, None, np.array([1, 2], np.int32))


# ---------------------------------------------------------------------------
# topk


@pytest.mark.parametrize("N,V,k", [(5, 30, 29), (1030, 5000, 7)])
def test_topk_matches_stable_argsort(N, V, k):
    """Grid scores: many exact ties, resolved to the lower id; row 0 scores best."""
    rng = np.random.default_rng(2)
    q, emb = grid_data(rng, N, V, 4, lo=-2, hi=2)
    q[:, 0] = np.abs(q[:, 0]) + 1
    emb[0] = 0.0
    emb[0, 0] = 100.0  # padding would win every row if it were a candidate
    ids, scores = _core.topk(q, emb, k, None)
    want_ids, want_scores = topk_ref(q, emb, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert ids.min() >= 1


def test_topk_exclusion():
    rng = np.random.default_rng(3)
    N, V, k = 20, 400, 12
    q, emb = grid_data(rng, N, V, 5)
    exclude = np.zeros((N, 6), np.int32)
    full, _ = _core.topk(q, emb, k, None)
    exclude[:, :4] = full[:, :4]  # drop the current best four, pad with 0
    exclude[:, 4] = rng.integers(1, V, N)
    ids, scores = _core.topk(q, emb, k, exclude)
    want_ids, want_scores = topk_ref(q, emb, k, exclude)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    for n in range(N):
        assert not set(ids[n].tolist()) & set(exclude[n].tolist())


def test_topk_random_floats():
    rng = np.random.default_rng(4)
    N, V, C, k = 50, 6000, 16, 20
    q = rng.standard_normal((N, C)).astype(np.float32)
    emb = rng.standard_normal((V, C)).astype(np.float32)
    ids, scores = _core.topk(q, emb, k, None)
    S = exact_scores(q, emb)
    got = np.take_along_axis(S, ids.astype(np.int64), 1)
    np.testing.assert_allclose(scores, got, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()

    # no left-out item beats the k-th by more than rounding
    S[:, 0] = -np.inf
    np.put_along_axis(S, ids.astype(np.int64), -np.inf, 1)
    assert (S.max(1) <= got[:, -1] + 1e-5).all()


def test_topk_rejects_bad_arguments():
    q, emb = np.ones((2, 3), np.float32), np.ones((6, 3), np.float32)
    with pytest.raises(ValueError):
        _core.topk(q, emb, 6, None)
    with pytest.raises(ValueError):
        _core.topk(q, emb, 2, np.array([[6], [1]], np.int32))
    exclude = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], np.int32)
    with pytest.raises(ValueError):  # row 0 keeps one item, k = 2
        _core.topk(q, emb, 2, exclude)
    ids, _ = _core.topk(q, emb, 1, exclude)
    assert ids[:, 0].tolist() == [5, 1]
