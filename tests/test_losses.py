"""The C losses against NumPy float64 twins, finite differences and torch.

Covers _core.sample_candidates, _core.softmax_xent and _core.infonce
(variant 0, ours, and variant 1, the published code's behaviour).
"""

import math

import numpy as np
import pytest

from nfcl import _core

RTOL, ATOL = 1e-4, 1e-6


def rowset(V):
    """An empty touched-row set for a (V, C) table."""
    return np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64)


def marked(rs):
    """Rows listed in a rowset, as a set; checks mask and list agree."""
    mask, rows, count = rs
    listed = rows[: count[0]].tolist()
    assert len(set(listed)) == len(listed)
    assert set(np.flatnonzero(mask).tolist()) == set(listed)
    return set(listed)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def central_diff(f, x, h=1e-6):
    """Gradient of the scalar f at the float64 array x, by central differences."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


# ---------------------------------------------------------------------------
# sample_candidates


def test_candidates_targets_first_then_distinct_negatives():
    V, n_neg = 50, 20
    targets = np.array([7, 0, 3, 7, 49, 0, 3, 1], np.int32)
    seen = np.zeros(V, np.uint8)
    cand, tgt_idx = _core.sample_candidates(targets, V, n_neg, 5, 9, seen)

    assert cand.tolist()[:4] == [7, 3, 49, 1]
    assert len(cand) == 4 + n_neg
    assert len(set(cand.tolist())) == len(cand)
    assert cand.min() >= 1 and cand.max() < V
    assert not set(cand[4:].tolist()) & {7, 3, 49, 1}
    assert tgt_idx.tolist() == [0, -1, 1, 0, 2, -1, 1, 3]
    assert not seen.any()


def test_candidates_deterministic_per_seed_and_stream():
    V, n_neg = 1000, 30
    targets = np.array([5, 6, 0], np.int32)
    seen = np.zeros(V, np.uint8)
    a, _ = _core.sample_candidates(targets, V, n_neg, 11, 3, seen)
    b, _ = _core.sample_candidates(targets, V, n_neg, 11, 3, seen)
    c, _ = _core.sample_candidates(targets, V, n_neg, 11, 4, seen)
    d, _ = _core.sample_candidates(targets, V, n_neg, 12, 3, seen)
    np.testing.assert_array_equal(a, b)
    assert set(a[2:].tolist()) != set(c[2:].tolist())
    assert set(a[2:].tolist()) != set(d[2:].tolist())


def test_candidates_roughly_uniform():
    V, n_neg, n_streams = 41, 8, 3000
    targets = np.array([4, 17, 0], np.int32)
    seen = np.zeros(V, np.uint8)
    counts = np.zeros(V, np.int64)
    for stream in range(n_streams):
        cand, _ = _core.sample_candidates(targets, V, n_neg, 1, stream, seen)
        counts[cand[2:]] += 1
    free = np.setdiff1d(np.arange(1, V), [4, 17])
    assert counts[[0, 4, 17]].sum() == 0

    # each free id is drawn with probability n_neg / 38 per stream
    expected = n_streams * n_neg / len(free)
    chi2 = ((counts[free] - expected) ** 2 / expected).sum()
    df = len(free) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df)


@pytest.mark.parametrize("n_neg", [1, 2, 4])
def test_candidates_every_subset_equally_likely(n_neg):
    """Small catalogue: 5 free ids, so each n_neg-subset can be counted."""
    V, n_streams = 8, 4000
    targets = np.array([2, 6], np.int32)
    seen = np.zeros(V, np.uint8)
    counts = {}
    for stream in range(n_streams):
        cand, _ = _core.sample_candidates(targets, V, n_neg, 3, stream, seen)
        key = tuple(sorted(cand[2:].tolist()))
        counts[key] = counts.get(key, 0) + 1
    n_subsets = math.comb(5, n_neg)
    assert len(counts) == n_subsets and all(2 not in k and 6 not in k for k in counts)
    expected = n_streams / n_subsets
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    df = n_subsets - 1
    assert chi2 < df + 6 * math.sqrt(2 * df)


def test_candidates_exhaust_catalogue_and_too_many():
    V = 12
    targets = np.array([2, 5, 2], np.int32)
    seen = np.zeros(V, np.uint8)
    cand, _ = _core.sample_candidates(targets, V, V - 3, 0, 0, seen)
    assert sorted(cand.tolist()) == list(range(1, V))
    with pytest.raises(ValueError):
        _core.sample_candidates(targets, V, V - 2, 0, 0, seen)
    assert not seen.any()
    with pytest.raises(ValueError):
        _core.sample_candidates(np.array([3, V], np.int32), V, 2, 0, 0, seen)
    assert not seen.any()


# ---------------------------------------------------------------------------
# softmax_xent


def xent_twin(q, emb, cand, tgt_idx):
    """Float64 mean cross-entropy over non-ignored rows (0 if there are none)."""
    E = emb[1:] if cand is None else emb[cand]
    keep = tgt_idx >= 0
    if not keep.any():
        return 0.0
    z = q[keep] @ E.T
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), tgt_idx[keep]]))


def run_xent(q, emb, cand, tgt_idx, scale, dq0=None, demb0=None):
    dq = np.zeros_like(q) if dq0 is None else dq0.copy()
    demb = np.zeros_like(emb) if demb0 is None else demb0.copy()
    rs = rowset(len(emb))
    loss = _core.softmax_xent(q, emb, cand, tgt_idx, scale, dq, demb, rs)
    return loss, dq, demb, rs


def torch_xent(q, emb, cand, tgt_idx):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tq = torch.tensor(q, requires_grad=True)
    te = torch.tensor(emb, requires_grad=True)
    ids = torch.arange(1, len(emb)) if cand is None else torch.from_numpy(cand).long()
    logits = tq @ te[ids].T
    loss = F.cross_entropy(logits, torch.from_numpy(tgt_idx).long(), ignore_index=-1)
    loss.backward()
    return loss.item(), tq.grad.numpy(), te.grad.numpy()


@pytest.mark.parametrize("full", [False, True])
def test_xent_matches_torch(full):
    rng = np.random.default_rng(1)
    N, C, V = 37, 16, 300
    q, emb = f32(rng, N, C), f32(rng, V, C)
    targets = rng.integers(1, V, N).astype(np.int32)
    targets[[3, 8, 20]] = 0
    if full:
        cand, tgt_idx = None, np.where(targets > 0, targets - 1, -1).astype(np.int32)
    else:
        seen = np.zeros(V, np.uint8)
        cand, tgt_idx = _core.sample_candidates(targets, V, 60, 2, 0, seen)

    # accumulation: the C adds scale * grad onto what is there
    dq0, demb0 = f32(rng, N, C), f32(rng, V, C)
    scale = 0.7
    loss, dq, demb, rs = run_xent(q, emb, cand, tgt_idx, scale, dq0, demb0)
    t_loss, t_dq, t_demb = torch_xent(q, emb, cand, tgt_idx)

    assert loss == pytest.approx(t_loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(dq - dq0, scale * t_dq, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(demb - demb0, scale * t_demb, rtol=RTOL, atol=ATOL)
    rows = set(range(1, V)) if full else set(cand.tolist())
    assert marked(rs) == rows


def test_xent_in_row_blocks_matches_torch():
    """N*K = 2e7 logits, above the C's block of 2^24, so rows go in two blocks."""
    rng = np.random.default_rng(2)
    N, C, V = 1000, 4, 20001
    q, emb = f32(rng, N, C), 0.3 * f32(rng, V, C)
    tgt_idx = rng.integers(-1, V - 1, N).astype(np.int32)
    loss, dq, demb, _ = run_xent(q, emb, None, tgt_idx, 1.0)
    t_loss, t_dq, t_demb = torch_xent(q, emb, None, tgt_idx)
    assert loss == pytest.approx(t_loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(dq, t_dq, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(demb, t_demb, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("full", [False, True])
def test_xent_finite_differences(full):
    rng = np.random.default_rng(3)
    N, C, V = 5, 3, 8
    q, emb = f32(rng, N, C), f32(rng, V, C)
    cand = None if full else np.array([6, 2, 7, 4, 1], np.int32)
    tgt_idx = np.array([0, -1, 4, 2, 0], np.int32)
    loss, dq, demb, _ = run_xent(q, emb, cand, tgt_idx, 1.0)

    q64, e64 = q.astype(np.float64), emb.astype(np.float64)
    assert loss == pytest.approx(xent_twin(q64, e64, cand, tgt_idx), rel=1e-6)
    g_q = central_diff(lambda: xent_twin(q64, e64, cand, tgt_idx), q64)
    g_e = central_diff(lambda: xent_twin(q64, e64, cand, tgt_idx), e64)
    np.testing.assert_allclose(dq, g_q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(demb, g_e, rtol=RTOL, atol=ATOL)


def test_xent_all_rows_ignored():
    rng = np.random.default_rng(4)
    q, emb = f32(rng, 4, 3), f32(rng, 9, 3)
    loss, dq, demb, rs = run_xent(q, emb, None, np.full(4, -1, np.int32), 1.0)
    assert loss == 0.0 and not dq.any() and not demb.any() and not marked(rs)


def test_xent_rejects_bad_input():
    rng = np.random.default_rng(5)
    q, emb = f32(rng, 3, 4), f32(rng, 10, 4)
    cand = np.array([3, 4, 5], np.int32)
    with pytest.raises(ValueError):
        run_xent(q, emb, cand, np.array([0, 3, 1], np.int32), 1.0)
    with pytest.raises(ValueError):
        run_xent(q, emb, np.array([3, 0, 5], np.int32), np.zeros(3, np.int32), 1.0)
    with pytest.raises(ValueError):
        run_xent(q, emb, np.array([3, 10], np.int32), np.zeros(3, np.int32), 1.0)

    # a NaN refuses before any gradient is written
    q[1, 2] = np.nan
    dq, demb = np.zeros_like(q), np.zeros_like(emb)
    with pytest.raises(FloatingPointError):
        _core.softmax_xent(q, emb, cand, np.zeros(3, np.int32), 1.0, dq, demb, None)
    assert not dq.any() and not demb.any()


# ---------------------------------------------------------------------------
# InfoNCE: a float64 twin written from the definition


def unit(x):
    return x / max(np.linalg.norm(x), 1e-12)


def first_later_kept(items, skips, b, t):
    """The positive of (b, t): first j in (t, T] kept, or None."""
    for j in range(t + 1, items.shape[1]):
        if items[b, j] != 0 and skips[b, j] == 0:
            return j
    return None


def infonce_twin(q, emb, items, skips, tau, variant):
    """Loss and rows in the mean, by loops over sessions and positions."""
    B, T, C = q.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            j_pos = first_later_kept(items, skips, b, t)
            anchor = items[b, t] != 0 and skips[b, t] == 0 and j_pos is not None
            if variant == 1 and not anchor:
                total, n = total + math.log(T + 1), n + 1
                continue
            if not anchor:
                continue
            if variant == 0:
                negs = [
                    emb[items[b, j]]
                    for j in range(T + 1)
                    if items[b, j] != 0 and skips[b, j] == 1
                ]
                if not negs:
                    continue
            else:
                b2 = (b * T + t) % B
                negs = [
                    emb[items[b2, j]]
                    if items[b2, j] != 0 and skips[b2, j] == 1
                    else np.zeros(C)
                    for j in range(T)
                ]
            u = unit(q[b, t])
            keys = [emb[items[b, j_pos]]] + negs
            logits = np.array([u @ unit(k) / tau for k in keys])
            m = logits.max()
            total += m + math.log(np.exp(logits - m).sum()) - logits[0]
            n += 1
    return (total / n if n else 0.0), n


def run_infonce(q, emb, items, skips, tau, variant, scale=1.0):
    dq, demb, rs = np.zeros_like(q), np.zeros_like(emb), rowset(len(emb))
    loss, n = _core.infonce(q, emb, items, skips, tau, variant, scale, dq, demb, rs)
    return loss, n, dq, demb, rs


def make_sessions(rng, B, T, V, p_skip=0.35):
    """Right-padded sessions (B, T+1), some padding slots flagged as skipped."""
    items = np.zeros((B, T + 1), np.int32)
    skips = np.zeros((B, T + 1), np.uint8)
    for b in range(B):
        n = int(rng.integers(2, T + 2))
        items[b, :n] = rng.integers(1, V, n)
        skips[b, :n] = rng.random(n) < p_skip
    skips[items == 0] = rng.random(int((items == 0).sum())) < 0.5
    return items, skips


# ---------------------------------------------------------------------------
# InfoNCE: torch autograd oracles


def torch_infonce_ours(q, emb, items, skips, tau):
    """Variant 0, batched with masks: -inf logits for slots that are not negatives."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    B, T, C = q.shape
    tq = torch.tensor(q, requires_grad=True)
    te = torch.tensor(emb, requires_grad=True)
    pos = np.zeros(B * T, np.int64)
    anchor = np.zeros(B * T, bool)
    for b in range(B):
        for t in range(T):
            j = first_later_kept(items, skips, b, t)
            if items[b, t] != 0 and skips[b, t] == 0 and j is not None:
                pos[b * T + t], anchor[b * T + t] = j, True
    sess = np.repeat(np.arange(B), T)
    neg = torch.from_numpy(((items != 0) & (skips == 1))[sess])  # (B*T, T+1)

    qn = F.normalize(tq.reshape(B * T, C), dim=1)
    keys = F.normalize(te[torch.from_numpy(items).long()], dim=-1)[sess]
    pos_logit = (qn * keys[np.arange(B * T), pos]).sum(1, keepdim=True)
    neg_logits = torch.einsum("rc,rjc->rj", qn, keys).masked_fill(~neg, -math.inf)
    logits = torch.cat([pos_logit, neg_logits], 1) / tau
    rows = torch.from_numpy(anchor) & neg.any(1)
    if not rows.any():
        return 0.0, np.zeros_like(q), np.zeros_like(emb)
    loss = F.cross_entropy(logits[rows], torch.zeros(int(rows.sum()), dtype=torch.long))
    loss.backward()
    return loss.item(), tq.grad.numpy(), te.grad.numpy()


def torch_infonce_published(q, emb, items, skips, tau):
    """Variant 1, the published code's tiling: row b*T+t meets session (b*T+t) % B."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    B, T, C = q.shape
    tq = torch.tensor(q, requires_grad=True)
    te = torch.tensor(emb, requires_grad=True)
    pos_item = np.zeros(B * T, np.int64)
    anchor = np.zeros((B * T, 1), np.float32)
    for b in range(B):
        for t in range(T):
            j = first_later_kept(items, skips, b, t)
            if items[b, t] != 0 and skips[b, t] == 0 and j is not None:
                pos_item[b * T + t], anchor[b * T + t] = items[b, j], 1.0
    neg = torch.from_numpy(((items[:, :T] != 0) & (skips[:, :T] == 1))[..., None])
    anchor = torch.from_numpy(anchor)

    # zero query and positive off the anchors; zero vectors for non-negatives
    p = tq.view(-1, C) * anchor
    positive = te[torch.from_numpy(pos_item)] * anchor
    n = te[torch.from_numpy(items[:, :T]).long()] * neg
    negatives = n.tile(T, 1, 1)  # (T*B, T, C)
    p, positive = F.normalize(p, dim=-1), F.normalize(positive, dim=-1)
    negatives = F.normalize(negatives, dim=-1)
    pos_logit = (p * positive).sum(1, keepdim=True)
    neg_logits = (p.unsqueeze(1) @ negatives.transpose(-2, -1)).squeeze(1)
    logits = torch.cat([pos_logit, neg_logits], 1) / tau
    loss = F.cross_entropy(logits, torch.zeros(B * T, dtype=torch.long))
    loss.backward()
    return loss.item(), tq.grad.numpy(), te.grad.numpy()


# ---------------------------------------------------------------------------
# InfoNCE tests


@pytest.mark.parametrize("variant", [0, 1])
def test_infonce_twin_finite_differences(variant):
    rng = np.random.default_rng(10 + variant)
    B, T, C, V = 3, 4, 3, 9
    items, skips = make_sessions(rng, B, T, V, p_skip=0.4)
    items[0] = [1, 2, 3, 4, 5]
    skips[0] = [0, 1, 0, 1, 0]
    q, emb = f32(rng, B, T, C), f32(rng, V, C)
    tau = 0.5
    loss, n, dq, demb, _ = run_infonce(q, emb, items, skips, tau, variant, 1.0)

    q64, e64 = q.astype(np.float64), emb.astype(np.float64)
    t_loss, t_n = infonce_twin(q64, e64, items, skips, tau, variant)
    assert n == t_n and t_n > 0
    assert loss == pytest.approx(t_loss, rel=1e-6)
    g_q = central_diff(
        lambda: infonce_twin(q64, e64, items, skips, tau, variant)[0], q64
    )
    g_e = central_diff(
        lambda: infonce_twin(q64, e64, items, skips, tau, variant)[0], e64
    )
    np.testing.assert_allclose(dq, g_q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(demb, g_e, rtol=RTOL, atol=ATOL)
    assert not demb[0].any()


@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infonce_matches_torch(variant, seed):
    rng = np.random.default_rng(20 + seed)
    B, T, C, V = 5, 7, 12, 40
    items, skips = make_sessions(rng, B, T, V)
    q, emb = f32(rng, B, T, C), f32(rng, V, C)
    tau, scale = 0.1, 0.5
    loss, n, dq, demb, rs = run_infonce(q, emb, items, skips, tau, variant, scale)
    oracle = torch_infonce_ours if variant == 0 else torch_infonce_published
    t_loss, t_dq, t_demb = oracle(q, emb, items, skips, tau)

    twin_loss, twin_n = infonce_twin(q, emb, items, skips, tau, variant)
    assert n == twin_n and (variant == 0 or n == B * T)
    assert loss == pytest.approx(t_loss, rel=1e-5, abs=1e-6)
    assert loss == pytest.approx(twin_loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(dq, scale * t_dq, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(demb, scale * t_demb, rtol=RTOL, atol=1e-5)
    assert not demb[0].any()
    assert marked(rs) == set(np.flatnonzero(np.abs(t_demb).sum(1)).tolist())


def test_infonce_no_anchor_gives_zero():
    rng = np.random.default_rng(30)
    B, T, C, V = 2, 4, 5, 12
    q, emb = f32(rng, B, T, C), f32(rng, V, C)
    items = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], np.int32)

    # no skipped item at all: anchors exist but have no negative (variant 0)
    skips = np.zeros_like(items, np.uint8)
    loss, n, dq, demb, rs = run_infonce(q, emb, items, skips, 0.1, 0)
    assert (loss, n) == (0.0, 0) and not dq.any() and not demb.any()
    assert not marked(rs)

    # nothing kept after any position: no anchor in either variant
    skips = np.array([[1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], np.uint8)
    loss, n, dq, demb, rs = run_infonce(q, emb, items, skips, 0.1, 0)
    assert (loss, n) == (0.0, 0) and not dq.any() and not demb.any()
    loss, n, dq, demb, rs = run_infonce(q, emb, items, skips, 0.1, 1)
    assert n == B * T and loss == pytest.approx(math.log(T + 1), rel=1e-6)
    assert not dq.any() and not demb.any() and not marked(rs)


def one_anchor_loss(u, pos, negs, tau):
    """-log softmax of the positive among [pos] + negs, from explicit cosines."""
    cos = [unit(u) @ unit(k) for k in [pos] + negs]
    e = np.exp(np.array(cos) / tau)
    return -math.log(e[0] / e.sum())


def test_infonce_skipped_items_passed_over_and_padding_ignored():
    rng = np.random.default_rng(31)
    T, C, V = 5, 6, 10
    q, emb = f32(rng, 1, T, C), f32(rng, V, C)
    emb[0] = 5.0  # a non-zero padding row must never matter
    items = np.array([[4, 6, 7, 8, 0, 0]], np.int32)
    skips = np.array([[0, 1, 1, 0, 1, 1]], np.uint8)  # padding flagged skipped

    # the only anchor is t=0; its positive skips over 6 and 7 to reach 8
    loss, n, dq, demb, rs = run_infonce(q, emb, items, skips, 0.2, 0)
    q64, e64 = q.astype(np.float64), emb.astype(np.float64)
    want = one_anchor_loss(q64[0, 0], e64[8], [e64[6], e64[7]], 0.2)
    assert n == 1 and loss == pytest.approx(want, rel=1e-6)
    assert marked(rs) == {6, 7, 8}
    assert not dq[0, 1:].any() and not demb[0].any()
    assert np.abs(demb[[6, 7, 8]]).min(axis=1).all()

    # padding's skip flag and row 0 change nothing
    skips[0, 4:] = 0
    emb[0] = -3.0
    assert run_infonce(q, emb, items, skips, 0.2, 0)[0] == loss


def test_infonce_rejects_bad_input():
    rng = np.random.default_rng(32)
    B, T, C, V = 2, 3, 4, 8
    q, emb = f32(rng, B, T, C), f32(rng, V, C)
    items = np.array([[1, 2, 3, 4], [5, 6, 7, 0]], np.int32)
    skips = np.array([[0, 1, 0, 0], [0, 0, 1, 0]], np.uint8)
    bad = items.copy()
    bad[1, 3] = V
    with pytest.raises(ValueError):
        run_infonce(q, emb, bad, skips, 0.1, 0)

    # a NaN in a used row: error, no gradient written
    emb[2, 1] = np.nan
    dq, demb = np.zeros_like(q), np.zeros_like(emb)
    with pytest.raises(FloatingPointError):
        _core.infonce(q, emb, items, skips, 0.1, 0, 1.0, dq, demb, None)
    assert not dq.any() and not np.nan_to_num(demb).any()
