"""BERT4Rec: the bidirectional encoder, its cloze batches and explicit InfoNCE.

A NumPy float64 twin of the causal=0 encoder checks the C forward, and central
differences of that twin check the C backward. Then the model's behaviour: the
prediction is read at an appended [MASK], training batches hide every masked
item, padding changes nothing, the [MASK] row is never scored, the contrastive
anchors are the masked positions. Last, _core.infonce with explicit positives
against a loop oracle.
"""

import math

import numpy as np
import pytest

import nfcl
from nfcl import _core

# tiny encoder for the finite differences
V, C, NH, L, T, B, FFN, MAX_LEN = 7, 4, 2, 2, 4, 2, 6, 5
ENC = ("transformer", V, C, NH, L, MAX_LEN, FFN, 0.0, 0)
ITEMS = np.array([[3, 1, 6, 2], [5, 4, 0, 0]], np.int32)

_erf = np.vectorize(math.erf)


def views(cfg, flat):
    return {
        name: flat[off : off + math.prod(shape)].reshape(shape)
        for name, shape, off in _core.enc_layout(cfg)
    }


def random_params(rng, std=0.5):
    """Weights large enough for sharp, non-uniform attention; LN gains near 1."""
    params = rng.normal(0.0, std, _core.enc_sizes(ENC, 1, 1)[0]).astype(np.float32)
    w = views(ENC, params)
    w["item_emb"][0] = 0.0
    for name in w:
        if name.endswith(("ln1_w", "ln2_w")):
            w[name] += 1.0
    return params


def layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def attention(x, w, visible):
    """Multi-head self-attention over the visible keys; x (B,T,C) -> (B,T,C)."""
    Bx, Tx, Cx = x.shape
    hs = Cx // NH
    qkv = x @ w["attn_in_w"].T + w["attn_in_b"]  # (B,T,3C)
    q, k, v = (
        a.reshape(Bx, Tx, NH, hs).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1)
    )  # (B,NH,T,hs) each
    s = np.where(visible, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(Bx, Tx, Cx)
    return y @ w["attn_out_w"].T + w["attn_out_b"]


def twin_forward(params, items):
    """q (B,T,C) in float64 of the bidirectional encoder, and the ReLU patterns
    (finite differences must not cross one). Every query, padding too, sees
    every non-padding key."""
    P = {k: v.astype(np.float64) for k, v in views(ENC, params).items()}
    Tx = items.shape[1]
    visible = (items != 0)[:, None, None, :]  # (B,1,1,T) keys
    x = P["item_emb"][items] + P["pos_emb"][:Tx]
    relu_on = []
    for lay in range(L):
        w = {
            k.split(".", 1)[1]: v for k, v in P.items() if k.startswith(f"layer{lay}.")
        }
        x = layer_norm(x + attention(x, w, visible), w["ln1_w"], w["ln1_b"])
        h = x @ w["ff1_w"].T + w["ff1_b"]
        relu_on.append(h > 0)
        z = np.maximum(h, 0.0) @ w["ff2_w"].T + w["ff2_b"]
        x = layer_norm(x + z, w["ln2_w"], w["ln2_b"])
    u = x @ P["head_w"].T + P["head_b"]
    return 0.5 * u * (1.0 + _erf(u / math.sqrt(2.0))), relu_on


def c_forward_backward(params, items, dq):
    n_params, n_acts, n_scratch = _core.enc_sizes(ENC, *items.shape)
    acts = np.zeros(n_acts, np.float32)
    q = np.zeros(items.shape + (C,), np.float32)
    _core.enc_forward(ENC, params, acts, items, q, 0, 0, False)
    grads = np.zeros(n_params, np.float32)
    scratch = np.zeros(n_scratch, np.float32)
    _core.enc_backward(ENC, params, grads, acts, scratch, items, dq, 0, 0, False, None)
    return q, grads


def test_float64_twin_matches_c_forward_at_every_position():
    rng = np.random.default_rng(1)
    params = random_params(rng)
    q, _ = c_forward_backward(params, ITEMS, np.zeros((B, T, C), np.float32))
    expect, _ = twin_forward(params, ITEMS)
    np.testing.assert_allclose(q, expect, rtol=1e-4, atol=1e-5)

    # bidirectional: an item changes the outputs before it, not only after
    later = ITEMS.copy()
    later[0, 3] = 4
    q2, _ = c_forward_backward(params, later, np.zeros((B, T, C), np.float32))
    assert np.abs(q2[0, 0] - q[0, 0]).max() > 1e-3
    np.testing.assert_array_equal(q2[1], q[1])


def test_backward_matches_central_differences_of_twin():
    """A few coordinates of every tensor; dq is non-zero at padding queries too."""
    rng = np.random.default_rng(2)
    params = random_params(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32)
    _, grads = c_forward_backward(params, ITEMS, dq)
    base = params.astype(np.float64)
    _, relu0 = twin_forward(base, ITEMS)
    used = np.unique(ITEMS[ITEMS > 0])
    eps, worst = 1e-6, 0.0

    def loss(flat):
        q, relu = twin_forward(flat, ITEMS)
        same = all(np.array_equal(a, b) for a, b in zip(relu, relu0))
        return float((q * dq).sum()), same

    for name, shape, off in _core.enc_layout(ENC):
        size = math.prod(shape)
        g = grads[off : off + size]
        if name == "item_emb":  # rows the batch reads; padding row 0 gets nothing
            assert not g[:C].any()
            picks = rng.choice(used, 3) * C + rng.integers(0, C, 3)
        elif name == "pos_emb":  # positions >= T are never read
            assert not g[T * C :].any()
            picks = rng.choice(T * C, 3, replace=False)
        else:
            picks = rng.choice(size, min(3, size), replace=False)
        scale = float(np.abs(g).max())
        assert scale > 0, name
        for i in picks:
            plus, minus = base.copy(), base.copy()
            plus[off + i] += eps
            minus[off + i] -= eps
            (f_plus, ok_plus), (f_minus, ok_minus) = loss(plus), loss(minus)
            assert ok_plus and ok_minus, (name, i)  # no ReLU crossed
            fd = (f_plus - f_minus) / (2 * eps)
            err = abs(g[i] - fd)
            assert err <= 1e-3 * abs(fd) + 2e-5 * scale, (name, int(i), g[i], fd)
            worst = max(worst, err / (abs(fd) + 1e-3 * scale))
    assert worst < 1e-2, worst


# ---------------------------------------------------------------------------
# the model

N_ITEMS, MODEL_LEN = 20, 6


def model(max_len=MODEL_LEN, **kw):
    kw = dict(
        dim=8, heads=2, layers=1, max_len=max_len, ffn=12, dropout=0.0, seed=3, **kw
    )
    m = nfcl.BERT4Rec(N_ITEMS, **kw)
    m.params[:] = np.random.default_rng(4).normal(0.0, 0.3, m.params.size)
    m.item_emb[0] = 0.0
    return m


def training_rows(rng, n_rows, max_len=MODEL_LEN, min_len=2):
    """Rows (n_rows, max_len+1) as sessions.training_batches makes them."""
    S = max_len + 1
    items = np.zeros((n_rows, S), np.int32)
    skips = np.zeros((n_rows, S), np.uint8)
    for b in range(n_rows):
        n = int(rng.integers(min_len, S + 1))
        items[b, :n] = rng.integers(1, N_ITEMS, n)
        skips[b, :n] = rng.random(n) < 0.4
    return items, skips


def test_prediction_is_read_at_an_appended_mask():
    m = model()
    rng = np.random.default_rng(5)
    seqs = [rng.integers(1, N_ITEMS, n) for n in (1, 3, MODEL_LEN - 1, MODEL_LEN + 4)]
    got = m.predict_vectors(seqs)
    for s, row in zip(seqs, got):
        keep = min(len(s), MODEL_LEN - 1)
        items = np.append(s[len(s) - keep :], m.mask_id).astype(np.int32)[None]
        _, n_acts, _ = _core.enc_sizes(m._cfg, 1, keep + 1)
        q = np.zeros((1, keep + 1, m.dim), np.float32)
        _core.enc_forward(
            m._cfg, m.params, np.zeros(n_acts, np.float32), items, q, 0, 0, False
        )
        np.testing.assert_allclose(row, q[0, keep], rtol=1e-5, atol=1e-6)
        assert np.abs(row - q[0, keep - 1]).max() > 1e-3  # not the last item's


def check_cloze(m, batch, items, T):
    """Every masked slot shows [MASK] and targets its own item; others show it."""
    inputs, targets = batch["inputs"], batch["targets"].reshape(-1, T)
    orig = batch["cl_items"]
    lengths = (items > 0).sum(1)
    for b in range(len(items)):
        n = min(int(lengths[b]), T)
        np.testing.assert_array_equal(
            orig[b, :n], items[b, lengths[b] - n : lengths[b]]
        )
        assert not orig[b, n:].any() and not inputs[b, n:].any()
    masked = targets > 0
    assert (masked.sum(1) >= 1).all()
    assert (inputs[masked] == m.mask_id).all()
    np.testing.assert_array_equal(targets[masked], orig[:, :T][masked])
    np.testing.assert_array_equal(inputs[~masked], orig[:, :T][~masked])
    return masked


def test_cloze_batches_hide_every_masked_item():
    rng = np.random.default_rng(6)
    items, skips = training_rows(rng, 400)
    T = MODEL_LEN
    last = np.minimum((items > 0).sum(1), T) - 1

    # cloze rows only: every row has a mask (short rows exactly one)
    m = model(append_prob=0.0)
    masked = check_cloze(m, m._make_batch(items, skips, 1), items, T)
    assert (masked.sum(1) == 1).all()
    assert not masked[np.arange(len(items)), last].all()

    # appended rows only: exactly the last real item is masked
    m = model(append_prob=1.0)
    masked = check_cloze(m, m._make_batch(items, skips, 1), items, T)
    assert (masked.sum(1) == 1).all() and masked[np.arange(len(items)), last].all()

    # the default mixes both; masks are a function of (seed, step)
    m = model()
    one = m._make_batch(items, skips, 7)
    masked = check_cloze(m, one, items, T)
    is_append = masked[np.arange(len(items)), last]
    assert 0.55 < is_append.mean() < 0.85  # half appended, and cloze by chance
    np.testing.assert_array_equal(
        m._make_batch(items, skips, 7)["inputs"], one["inputs"]
    )
    assert not np.array_equal(m._make_batch(items, skips, 8)["inputs"], one["inputs"])


def test_cloze_masks_about_mask_prob_of_long_rows():
    rng = np.random.default_rng(7)
    items, skips = training_rows(rng, 300, max_len=40, min_len=15)
    m = model(max_len=40, append_prob=0.0)
    masked = check_cloze(m, m._make_batch(items, skips, 1), items, 40)
    n_real = np.minimum((items > 0).sum(1), 40)
    assert abs(masked.sum() / n_real.sum() - 0.15) < 0.01
    per_row = masked.sum(1) / n_real
    assert per_row.min() > 0.1 and per_row.max() < 0.2
    # masked positions spread over the whole row, not one end
    cols = np.nonzero(masked)[1] / n_real[np.nonzero(masked)[0]]
    assert 0.4 < cols.mean() < 0.6


def test_masked_anchors_point_at_their_own_unskipped_item():
    rng = np.random.default_rng(17)
    items, skips = training_rows(rng, 200)
    m = model(append_prob=0.3)
    batch = m._make_batch(items, skips, 2)
    T = batch["inputs"].shape[1]
    pos, orig, oskip = batch["cl_pos"], batch["cl_items"], batch["cl_skips"]
    masked = batch["targets"].reshape(-1, T) > 0
    assert pos.shape == (len(items), T) and pos.dtype == np.int32
    anchor = pos >= 0
    np.testing.assert_array_equal(anchor, masked & (oskip[:, :T] == 0))
    np.testing.assert_array_equal(pos[anchor], np.nonzero(anchor)[1])
    np.testing.assert_array_equal(
        orig[:, :T][anchor], batch["targets"].reshape(-1, T)[anchor]
    )
    assert anchor.sum() > 20 and (masked & (oskip[:, :T] == 1)).any()

    # the published rule finds its own anchors
    all_rule = model(anchors="all")._make_batch(items, skips, 2)
    assert all_rule["cl_pos"] is None


def test_extra_padding_leaves_real_positions_alone():
    rng = np.random.default_rng(8)
    m = model()
    items, skips = training_rows(rng, 5)
    inputs = m._make_batch(items, skips, 3)["inputs"]
    width = int((inputs > 0).sum(1).max())
    short = np.ascontiguousarray(inputs[:, :width])
    assert (inputs[:, width:] == 0).all() and (short == m.mask_id).any()
    q_short = m._forward(short, False, 0).copy()
    wide = np.zeros((5, MODEL_LEN), np.int32)
    wide[:, :width] = short
    q_wide = m._forward(wide, False, 0)
    real = short > 0
    np.testing.assert_allclose(
        q_wide[:, :width][real], q_short[real], rtol=1e-5, atol=1e-6
    )


def test_mask_row_is_never_scored_but_trains():
    m = model()
    m.item_emb[m.mask_id] = 50.0  # would win every ranking if it were scored
    rng = np.random.default_rng(9)
    seqs = [rng.integers(1, N_ITEMS, n) for n in (1, 4, 9)]
    ids = m.recommend(seqs, k=N_ITEMS - 1)
    for row in ids:
        assert sorted(row.tolist()) == list(range(1, N_ITEMS))
    assert m.score(seqs).shape == (3, N_ITEMS)

    # one training step moves the [MASK] row (an input of every row)
    items, skips = training_rows(rng, 8)
    m._init_optimizer()
    before = m.item_emb[m.mask_id].copy()
    m._train_step(
        items,
        skips,
        lr=1e-2,
        w=0.5,
        tau=0.1,
        variant=0,
        loss="full",
        n_neg=0,
        clip=1.0,
        weight_decay=0.0,
    )
    assert np.abs(m.item_emb[m.mask_id] - before).min() > 1e-4


# ---------------------------------------------------------------------------
# _core.infonce with explicit positives


def explicit_case(rng, Bx=4, Tx=5, Cx=6, Vx=15):
    """Sessions (B,T+1) with skips and random positives on real slots: before,
    at or after the anchor, skipped ones included; some rows without anchor."""
    items = np.zeros((Bx, Tx + 1), np.int32)
    skips = np.zeros((Bx, Tx + 1), np.uint8)
    pos = np.full((Bx, Tx), -1, np.int32)
    for b in range(Bx):
        n = int(rng.integers(3, Tx + 2))
        items[b, :n] = rng.integers(1, Vx, n)
        skips[b, :n] = rng.random(n) < 0.4
        skips[b, 1] = 1  # at least one negative
        for t in range(Tx):
            if rng.random() < 0.6:
                pos[b, t] = rng.integers(0, n)
    skips[items == 0] = rng.random(int((items == 0).sum())) < 0.5  # ignored
    q = rng.normal(size=(Bx, Tx, Cx)).astype(np.float32)
    emb = rng.normal(size=(Vx, Cx)).astype(np.float32)
    return q, emb, items, skips, pos


def run_infonce(q, emb, items, skips, pos, variant=0, scale=1.0):
    dq, demb = np.zeros_like(q), np.zeros_like(emb)
    loss, n = _core.infonce(
        q, emb, items, skips, 0.1, variant, scale, dq, demb, None, pos
    )
    return loss, n, dq, demb


@pytest.mark.parametrize("seed", [0, 1])
def test_explicit_positives_match_loop_oracle(seed):
    torch = pytest.importorskip("torch")
    from torch_twins import infonce_given

    rng = np.random.default_rng(10 + seed)
    q, emb, items, skips, pos = explicit_case(rng)
    loss, n, dq, demb = run_infonce(q, emb, items, skips, pos, scale=0.5)

    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    te = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    expect = infonce_given(tq, te, items, skips, pos, 0.1)
    expect.backward()
    assert n == int((pos >= 0).sum()) > 5
    assert loss == pytest.approx(expect.item(), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(dq, 0.5 * tq.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(demb, 0.5 * te.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert not dq[pos < 0].any()


@pytest.mark.parametrize("variant", [0, 1])
def test_explicit_rule_positives_equal_the_rule(variant):
    pytest.importorskip("torch")
    from torch_twins import skip_rule_positives

    rng = np.random.default_rng(20 + variant)
    q, emb, items, skips, _ = explicit_case(rng)
    rule = skip_rule_positives(items, skips)
    implicit = run_infonce(q, emb, items, skips, None, variant)
    explicit = run_infonce(q, emb, items, skips, rule, variant)
    assert implicit[:2] == explicit[:2] and implicit[1] > 0
    for a, b in zip(implicit[2:], explicit[2:]):
        np.testing.assert_array_equal(a, b)


def test_bad_positives_raise_and_write_nothing():
    rng = np.random.default_rng(30)
    q, emb, items, skips, pos = explicit_case(rng)
    Tx = q.shape[1]
    pad_b, pad_j = np.argwhere(items == 0)[0]
    bad_values = [(0, 0, -2), (0, 0, Tx + 1), (pad_b, 0, pad_j)]
    for b, t, value in bad_values:
        bad = pos.copy()
        bad[b, t] = value
        dq, demb = np.zeros_like(q), np.zeros_like(emb)
        with pytest.raises(ValueError):
            _core.infonce(q, emb, items, skips, 0.1, 0, 1.0, dq, demb, None, bad)
        assert not dq.any() and not demb.any()
    with pytest.raises(ValueError):  # (B, T+1) instead of (B, T)
        run_infonce(q, emb, items, skips, np.full(items.shape, -1, np.int32))
    with pytest.raises(TypeError):
        run_infonce(q, emb, items, skips, pos.astype(np.int64))
    # -1 everywhere and T itself (the last slot, when real) are valid
    assert run_infonce(q, emb, items, skips, np.full_like(pos, -1))[:2] == (0.0, 0)
    full = int(np.argmax((items > 0).sum(1)))
    ok = np.full_like(pos, -1)
    ok[full, 0] = (items[full] > 0).sum() - 1
    assert run_infonce(q, emb, items, skips, ok)[1] == 1
