"""MostPopular and ItemKNN: hand cases, references, the shared evaluation protocol."""

import math

import numpy as np
import pytest

import nfcl
from nfcl import _core, baselines, io, metrics, models, sessions
from nfcl.baselines import ItemKNN, MostPopular
from nfcl.errors import InputError, NfclError
from nfcl.models import as_prefixes
from nfcl.sessions import PAD_KEY, Examples, Sessions

BASELINES = (MostPopular, ItemKNN)


def make_sessions(seqs, n_items) -> Sessions:
    """Sessions of the given id lists, no skips, one user."""
    items = np.concatenate([np.asarray(s) for s in seqs]).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return Sessions(
        items=items,
        skips=np.zeros(len(items), np.uint8),
        times=np.zeros(len(items)),
        offsets=offsets.astype(np.int64),
        users=np.zeros(len(seqs), np.int32),
        item_keys=[PAD_KEY] + [f"t{i}" for i in range(1, n_items)],
        user_keys=["u"],
    )


def make_examples(prefixes, targets, target_skips=None) -> Examples:
    T = max(len(p) for p in prefixes)
    inputs = np.zeros((len(prefixes), T), np.int32)
    for r, p in enumerate(prefixes):
        inputs[r, : len(p)] = p
    skips = np.zeros(len(targets)) if target_skips is None else target_skips
    return Examples(
        inputs=inputs,
        lengths=np.array([len(p) for p in prefixes], np.int32),
        targets=np.asarray(targets, np.int32),
        target_skips=np.asarray(skips, np.uint8),
        session=np.arange(len(targets), dtype=np.int64),
    )


@pytest.fixture(scope="module")
def split():
    return sessions.leave_last_out(io.load_example())


@pytest.fixture(scope="module")
def fitted(split):
    V = split.train.n_items
    return {cls: cls(V).fit(split.train) for cls in BASELINES}


# ---------------------------------------------------------------------------
# MostPopular


def test_most_popular_ranks_by_play_count():
    # plays: item 3 x4, item 1 x3, items 2 and 4 x1, item 5 never
    train = make_sessions([[3, 1, 3], [3, 2, 1], [3, 1, 4]], n_items=6)
    m = MostPopular(6).fit(train)
    scores = m.score([[2], [5, 4, 1]])
    assert scores.dtype == np.float32 and scores.shape == (2, 6)
    assert np.isneginf(scores[:, 0]).all()
    np.testing.assert_array_equal(scores[:, 1:], [[3, 1, 4, 1, 0]] * 2)
    # 2 and 4 tie: lower id first
    assert m.recommend([[2]], k=5).tolist() == [[3, 1, 2, 4, 5]]
    assert m.recommend([[3, 2]], k=3, exclude_seen=True).tolist() == [[1, 4, 5]]


def test_most_popular_ties_count_at_expected_rank():
    # items 1, 2, 3 played twice, item 4 once
    train = make_sessions([[1, 2, 3], [3, 2, 1], [4]], n_items=5)
    m = MostPopular(5).fit(train)
    ex = make_examples([[4], [4, 1]], targets=[2, 4])
    greater, ties = m._ranks(ex.inputs, ex.lengths, ex.targets, None)
    assert greater.tolist() == [0, 3] and ties.tolist() == [2, 0]

    # target 2 ties with 1 and 3: rank 2; target 4 below all three: rank 4
    out = m.evaluate(ex, protocols=("full",))
    assert out["full:HR@1"] == 0.0
    assert out["full:HR@5"] == 1.0
    assert out["full:MRR@10"] == pytest.approx((1 / 2 + 1 / 4) / 2, rel=1e-12, abs=0)
    ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / 2
    assert out["full:NDCG@10"] == pytest.approx(ndcg, rel=1e-12, abs=0)


# ---------------------------------------------------------------------------
# ItemKNN


def test_item_knn_ranks_the_co_occurring_item_first():
    train = make_sessions(
        [[1, 2, 5], [1, 2, 6], [2, 1, 7], [3, 4], [3, 4], [4, 3], [3, 4, 3]],
        n_items=8,
    )
    m = ItemKNN(8).fit(train)
    assert m.recommend([[1]], k=1).tolist() == [[2]]
    assert m.recommend([[3]], k=1).tolist() == [[4]]
    # 1 and 2 share all three of their sessions: cosine 1
    scores = m.score([[1]])
    assert scores[0, 2] == pytest.approx(1.0, rel=1e-6, abs=1e-7)
    assert scores[0, 5] == pytest.approx(1 / math.sqrt(3), rel=1e-6, abs=1e-7)
    assert scores[0, 3] == 0.0 and scores[0, 4] == 0.0


def test_item_knn_weights_recent_items_more():
    train = make_sessions([[1, 10], [2, 20]], n_items=21)
    m = ItemKNN(21).fit(train)
    s = m.score([[1, 2], [2, 1]])
    # the last item weighs 1, the one before it 1/2
    np.testing.assert_allclose(
        s[:, [10, 20]], [[0.5, 1.0], [1.0, 0.5]], rtol=1e-6, atol=1e-7
    )
    assert m.recommend([[1, 2]], k=2).tolist() == [[20, 10]]


def dense_similarity(seqs, V, window, neighbours):
    """The cosine by its definition, from per-session pair sets, pruned per row."""
    c = np.zeros((V, V))
    n = np.zeros(V)
    for s in seqs:
        pairs = set()
        for p in range(len(s)):
            for q in range(len(s)):
                near = window is None or abs(p - q) <= window
                if p != q and s[p] != s[q] and near:
                    pairs.add((s[p], s[q]))
        for i, j in pairs:
            c[i, j] += 1
        n[list(set(s))] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(c > 0, c / np.sqrt(np.outer(n, n)), 0.0)
    for i in range(V):
        nz = np.flatnonzero(sim[i])
        order = nz[np.lexsort((nz, -sim[i, nz]))]
        sim[i, order[neighbours:]] = 0.0
    return sim


@pytest.mark.parametrize(
    "window,neighbours", [(None, 100), (2, 100), (None, 3), (1, 2)]
)
def test_item_knn_matches_a_dense_reference(window, neighbours, monkeypatch):
    rng = np.random.default_rng(7)
    V = 25
    seqs = [rng.integers(1, V, rng.integers(1, 13)).tolist() for _ in range(40)]
    train = make_sessions(seqs, V)
    m = ItemKNN(V, neighbours=neighbours, window=window).fit(train)

    # the CSR table, densified, against the definition
    ref = dense_similarity(seqs, V, window, neighbours)
    got = np.zeros((V, V))
    for i in range(V):
        a, b = m.indptr[i], m.indptr[i + 1]
        got[i, m.indices[a:b]] = m.data[a:b]
        assert np.all(np.diff(m.data[a:b]) <= 0)  # most similar first
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert (got > 0).sum(axis=1).max() <= neighbours

    # scores: recency-weighted sums of the rows
    queries = [rng.integers(1, V, rng.integers(1, 9)).tolist() for _ in range(6)]
    want = np.array(
        [sum(ref[i] / (len(q) - p) for p, i in enumerate(q)) for q in queries]
    )
    np.testing.assert_allclose(
        m.score(queries)[:, 1:], want[:, 1:], rtol=1e-6, atol=1e-7
    )

    # counting in many small chunks gives the same table
    monkeypatch.setattr(baselines, "PAIR_BUDGET", 5)
    m2 = ItemKNN(V, neighbours=neighbours, window=window).fit(train)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(m2, name), getattr(m, name))


# ---------------------------------------------------------------------------
# the shared protocol


def rank_oracle(scores, cand, targets):
    """_core.rank_targets on the given scores: q one-hot rows, emb the scores."""
    N = len(scores)
    q = np.eye(N, dtype=np.float32)
    emb = np.ascontiguousarray(scores.T)
    emb[0] = 0.0  # padding row: never a candidate, must be finite
    return _core.rank_targets(q, emb, cand, np.ascontiguousarray(targets))


@pytest.mark.parametrize("cls", BASELINES)
def test_counts_follow_the_rule_of_rank_targets(cls, fitted, split):
    m = fitted[cls]
    ex = split.test
    rows = slice(0, 150)
    inputs, lengths = ex.inputs[rows], ex.lengths[rows]
    targets = ex.targets[rows]
    scores = m.score(
        Examples(inputs, lengths, targets, ex.target_skips[rows], ex.session[rows])
    )
    g, t = m._ranks(inputs, lengths, targets, None)
    g_ref, t_ref = rank_oracle(scores, None, targets)
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(t, t_ref)
    assert t.sum() > 0  # the case is about ties

    for start, stop, cand in metrics.sampled_candidates(targets, m.n_items, 3, 100):
        part = slice(start, stop)
        g, t = m._ranks(inputs[part], lengths[part], targets[part], cand)
        g_ref, t_ref = rank_oracle(scores[part], cand, targets[part])
        np.testing.assert_array_equal(g, g_ref)
        np.testing.assert_array_equal(t, t_ref)

    # a target outside the candidates is scored but not excluded from ties
    cand = np.setdiff1d(np.arange(1, 60, dtype=np.int32), targets[:10])
    g, t = m._ranks(inputs[:10], lengths[:10], targets[:10], cand)
    g_ref, t_ref = rank_oracle(scores[:10], cand, targets[:10])
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(t, t_ref)


@pytest.fixture(scope="module")
def sasrec(split):
    return nfcl.SASRec(split.train.n_items, dim=8, heads=1, layers=1, seed=0)


@pytest.mark.parametrize("cls", BASELINES)
def test_evaluate_gives_the_metric_names_of_sasrec(cls, fitted, sasrec, split):
    for protocols in (("full", "sampled"), ("sampled",)):
        want = sasrec.evaluate(split.test, protocols=protocols, n_neg=50)
        got = fitted[cls].evaluate(split.test, protocols=protocols, n_neg=50)
        assert list(got) == list(want)


@pytest.mark.parametrize("cls", BASELINES)
def test_sampled_protocol_uses_the_candidates_of_sasrec(
    cls, fitted, sasrec, split, monkeypatch
):
    calls = []

    def recording(*args, **kw):
        out = metrics.sampled_candidates(*args, **kw)
        calls.append(out)
        return out

    monkeypatch.setattr(models, "sampled_candidates", recording)
    monkeypatch.setattr(baselines, "sampled_candidates", recording)
    sasrec.evaluate(split.test, protocols=("sampled",), seed=11, n_neg=200)
    fitted[cls].evaluate(split.test, protocols=("sampled",), seed=11, n_neg=200)
    assert len(calls) == 2 and len(calls[0]) == len(calls[1]) > 1
    for (a0, b0, c0), (a1, b1, c1) in zip(calls[0], calls[1], strict=True):
        assert (a0, b0) == (a1, b1)
        np.testing.assert_array_equal(c0, c1)


@pytest.mark.parametrize("cls", BASELINES)
def test_padding_is_never_recommended(cls):
    # only items 1 and 2 were played: the rest score 0, like padding's count
    train = make_sessions([[1, 2], [2, 1, 2]], n_items=7)
    m = cls(7).fit(train)
    ids = m.recommend([[1], [2, 1]], k=6)
    assert ids.dtype == np.int32 and ids.shape == (2, 6)
    assert sorted(ids[0].tolist()) == [1, 2, 3, 4, 5, 6]
    assert ids[:, 2:].tolist() == [[3, 4, 5, 6]] * 2  # zero scores: by id
    ids = m.recommend([[1, 2]], k=4, exclude_seen=True)
    assert ids.tolist() == [[3, 4, 5, 6]]
    with pytest.raises(InputError, match="fewer than k=5"):
        m.recommend([[1, 2]], k=5, exclude_seen=True)


@pytest.mark.parametrize("cls", BASELINES)
def test_recommend_is_the_top_of_score(cls, fitted, split):
    m = fitted[cls]
    seqs = [split.test.inputs[i, : split.test.lengths[i]] for i in range(40)]
    scores = m.score(seqs)
    for exclude in (False, True):
        ids = m.recommend(seqs, k=200, exclude_seen=exclude)
        for r, s in enumerate(scores):
            s = s.copy()
            if exclude:
                s[seqs[r]] = -np.inf
            # higher score first, ties to the lower id
            want = np.lexsort((np.arange(len(s)), -s))[:200]
            np.testing.assert_array_equal(ids[r], want)


def test_as_prefixes_is_what_sasrec_uses():
    m = nfcl.SASRec(9, dim=4, heads=1, layers=1, max_len=3)
    seqs = [np.array([1, 2, 3, 4, 5]), [8, 7]]
    for got, want in zip(m._as_prefixes(seqs), as_prefixes(seqs, 9, 3), strict=True):
        np.testing.assert_array_equal(got, want)
    inputs, lengths = as_prefixes(seqs, 9, None)
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [8, 7, 0, 0, 0]]
    assert lengths.tolist() == [5, 2]


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("cls", BASELINES)
def test_bad_inputs_raise_input_error(cls):
    V = 6
    train = make_sessions([[1, 2, 3], [3, 4, 5]], V)
    with pytest.raises(NfclError, match="not fitted"):
        cls(V).recommend([[1]])
    m = cls(V).fit(train)

    bad_sequences = [
        ([[0, 1]], "outside 1..5"),
        ([[1, 6]], "outside 1..5"),
        ([[]], "non-empty"),
        ([], "no sequences"),
        ([[1.5, 2.0]], "integer"),
        ([[True]], "integer"),
        ("abc", "sequences must be"),
        (None, "sequences must be"),
        (3, "sequences must be"),
    ]
    for seqs, message in bad_sequences:
        for call in (m.recommend, m.score):
            with pytest.raises(InputError, match=message):
                call(seqs)
    for k in (0, V, True, 2.0, "3"):
        with pytest.raises(InputError, match="k must be"):
            m.recommend([[1]], k=k)

    # fit
    with pytest.raises(InputError, match="Sessions"):
        cls(V).fit([[1, 2]])
    with pytest.raises(InputError, match="n_items=4"):
        cls(4).fit(train)

    # evaluate
    ex = make_examples([[1], [2, 3]], [2, 4])
    with pytest.raises(InputError, match="Examples"):
        m.evaluate([[1, 2]])
    with pytest.raises(InputError, match="unknown protocol 'top'"):
        m.evaluate(ex, protocols=("full", "top"))
    with pytest.raises(InputError, match="targets hold ids outside"):
        m.evaluate(make_examples([[1]], [6]))
    with pytest.raises(InputError, match="inputs hold ids outside"):
        m.evaluate(make_examples([[1, 9]], [2]))
    empty = make_examples([[1]], [2])
    empty.lengths[0] = 0
    with pytest.raises(InputError, match="no empty input"):
        m.evaluate(empty)


def test_bad_configurations_raise_input_error():
    for kw, message in (
        ({"n_items": 1}, "n_items"),
        ({"n_items": 2.5}, "n_items"),
        ({"n_items": 5, "seed": -1}, "seed"),
        ({"n_items": 5, "item_keys": ["<pad>", "a"]}, "item_keys"),
    ):
        for cls in BASELINES:
            with pytest.raises(InputError, match=message):
                cls(**kw)
    with pytest.raises(InputError, match="neighbours"):
        ItemKNN(5, neighbours=0)
    with pytest.raises(InputError, match="window"):
        ItemKNN(5, window=0)


# ---------------------------------------------------------------------------
# the bundled data


def test_bundled_data_item_knn_beats_most_popular(fitted, split):
    out = {cls: fitted[cls].evaluate(split.test) for cls in BASELINES}
    for res in out.values():
        assert all(math.isfinite(v) for v in res.values())
        for p in ("full", "sampled"):
            assert 0 <= res[f"{p}:HR@1"] <= res[f"{p}:HR@10"] <= res[f"{p}:HR@20"] <= 1
            assert res[f"{p}:MRR@10"] <= res[f"{p}:HR@10"]
        assert res["sampled:HR@10"] >= res["full:HR@10"]
    assert out[ItemKNN]["sampled:HR@10"] > out[MostPopular]["sampled:HR@10"]
