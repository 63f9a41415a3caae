"""The GRU4Rec encoder of the C core (csrc/gru4rec.c).

Three oracles: torch.nn.GRU (float64) for the forward and every gradient, a NumPy
float64 twin of the recurrence with central finite differences for the backward
(padding and dropout included), and behavioural checks (batch independence,
padding row, touched rows, dropout keys, argument errors).
"""

import math

import numpy as np
import pytest

from nfcl import _core

V, C, H, T, B = 30, 12, 10, 7, 4
LENGTHS = (7, 3, 5, 1)  # real positions per session, right-padded to T


def config(layers, dropout=0.0):
    """The cfg tuple of the binding: ("gru", V, C, H, L, max_len, dropout)."""
    return ("gru", V, C, H, layers, T, dropout)


def make_items(rng, lengths=LENGTHS):
    """Right-padded sessions (B, T) int32 with ids 1..V-1 on real positions."""
    items = np.zeros((len(lengths), T), np.int32)
    for b, n in enumerate(lengths):
        items[b, :n] = rng.integers(1, V, n)
    return items


def make_params(cfg, rng):
    """Init, then wider random values so that every gate is away from saturation
    and from zero (row 0 of item_emb included: padding must not read it)."""
    n_params = _core.enc_sizes(cfg, 1, 1)[0]
    params = np.zeros(n_params, np.float32)
    _core.enc_init(cfg, params, 5)
    params[:] = rng.normal(0.0, 0.35, n_params).astype(np.float32)
    return params


def views(cfg, flat):
    """Name -> view of the flat buffer, shaped as the layout says."""
    out = {}
    for name, shape, off in _core.enc_layout(cfg):
        out[name] = flat[off : off + math.prod(shape)].reshape(shape)
    return out


def forward(cfg, params, items, seed=0, step=0, train=False):
    """Run the C forward; returns (q (B,T,C), acts)."""
    Bn, Tn = items.shape
    n_acts = _core.enc_sizes(cfg, Bn, Tn)[1]
    acts = np.full(n_acts, np.nan, np.float32)  # every slot must be written
    q = np.full((Bn, Tn, C), np.nan, np.float32)
    _core.enc_forward(cfg, params, acts, items, q, seed, step, train)
    return q, acts


def new_rowset():
    return (np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64))


def backward(
    cfg, params, acts, items, dq, seed=0, step=0, train=False, rowset=None, grads=None
):
    """Run the C backward into zeroed (or the given) grads; returns grads."""
    n_params, _, n_scratch = _core.enc_sizes(cfg, *items.shape)
    if grads is None:
        grads = np.zeros(n_params, np.float32)
    scratch = np.full(n_scratch, np.nan, np.float32)  # never read before written
    _core.enc_backward(
        cfg, params, grads, acts, scratch, items, dq, seed, step, train, rowset
    )
    return grads


def assert_close_scaled(actual, expect, rtol, atol_frac, msg=""):
    """allclose with an atol that is a fraction of the expected magnitude."""
    scale = float(np.abs(expect).max()) + 1e-12
    np.testing.assert_allclose(
        actual, expect, rtol=rtol, atol=atol_frac * scale, err_msg=msg
    )


# ---------------------------------------------------------------------------
# NumPy float64 twin of the forward


_erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def twin_forward(cfg, params, items, masks=None):
    """q (B,T,C) in float64. Padding carries the state; masks are the dropout
    multipliers (0 or 1/(1-p)) of the embedding and of each layer's output."""
    P = {k: v.astype(np.float64) for k, v in views(cfg, params).items()}
    L = cfg[4]
    real = (items != 0)[:, :, None]
    x = P["item_emb"][items]
    if masks is not None:
        x = x * masks[0]
    for l in range(L):
        w_ih, w_hh = P[f"gru{l}.w_ih"], P[f"gru{l}.w_hh"]
        b_ih, b_hh = P[f"gru{l}.b_ih"], P[f"gru{l}.b_hh"]
        h = np.zeros((items.shape[0], H))
        out = np.zeros(items.shape + (H,))
        for t in range(items.shape[1]):
            a = x[:, t] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            r = sigmoid(a[:, :H] + gh[:, :H])
            z = sigmoid(a[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(a[:, 2 * H :] + r * gh[:, 2 * H :])
            h = np.where(real[:, t], (1.0 - z) * n + z * h, h)
            out[:, t] = h
        x = out if masks is None else out * masks[1 + l]
    hp = x @ P["head_w"].T + P["head_b"]
    return 0.5 * hp * (1.0 + _erf(hp / math.sqrt(2.0)))


def dropout_masks(cfg, params, acts, items):
    """Read the dropout multipliers the C forward used from its saved activations
    (layout in csrc/gru4rec.c: x0, then per layer gates, hn, h, y of 3H, H, H, H)."""
    Bn, Tn = items.shape
    N, L = Bn * Tn, cfg[4]
    x0 = acts[: N * C].reshape(Bn, Tn, C)
    emb = views(cfg, params)["item_emb"][items]
    masks = [np.divide(x0, emb, out=np.zeros(x0.shape), where=emb != 0)]
    for l in range(L):
        base = N * C + l * N * 6 * H
        h = acts[base + 4 * N * H : base + 5 * N * H].reshape(Bn, Tn, H)
        y = acts[base + 5 * N * H : base + 6 * N * H].reshape(Bn, Tn, H)
        masks.append(np.divide(y, h, out=np.zeros(y.shape), where=h != 0))
    return [np.round(m, 4) for m in masks]


# ---------------------------------------------------------------------------
# torch oracle


def torch_gradients(cfg, params, items, dq):
    """Forward q and d(sum(q * dq))/d(param) from torch.nn.GRU in float64, each
    session run alone on its real positions (torch does not carry state across
    padding)."""
    torch = pytest.importorskip("torch")
    from torch_twins import TorchGRU4Rec

    sizes = {"n_items": V, "dim": C, "hidden": H, "layers": cfg[4]}
    tm = TorchGRU4Rec(sizes).double()
    named = tm.named_like_nfcl()
    assert set(named) == set(views(cfg, params))
    tm.load_nfcl(views(cfg, params))

    q = np.zeros(items.shape + (C,))
    loss = 0.0
    for b in range(items.shape[0]):
        n = int((items[b] != 0).sum())
        qb = tm(torch.from_numpy(items[b : b + 1, :n].astype(np.int64)))
        dq_b = torch.from_numpy(dq[b : b + 1, :n].astype(np.float64))
        loss = loss + (qb * dq_b).sum()
        q[b, :n] = qb[0].detach().numpy()
    loss.backward()
    return q, {name: p.grad.numpy() for name, p in named.items()}


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_and_every_gradient_match_torch(layers):
    pytest.importorskip("torch")
    rng = np.random.default_rng(layers)
    cfg = config(layers)
    params = make_params(cfg, rng)
    items = make_items(rng)
    real = (items != 0)[:, :, None]
    dq = (rng.normal(size=(B, T, C)) * real).astype(np.float32)

    q, acts = forward(cfg, params, items)
    grads = backward(cfg, params, acts, items, dq)
    tq, tgrads = torch_gradients(cfg, params, items, dq)

    assert_close_scaled(q * real, tq, rtol=1e-4, atol_frac=1e-5, msg="q")
    G = views(cfg, grads)
    for name, expect in tgrads.items():
        assert G[name].shape == expect.shape
        assert_close_scaled(G[name], expect, rtol=1e-4, atol_frac=2e-5, msg=name)


# ---------------------------------------------------------------------------
# finite differences of the twin


def check_fd(cfg, params, items, dq, grads, masks=None, per_tensor=4, seed=0):
    """C gradients against central differences of the float64 twin on a few
    coordinates of every tensor; returns the worst relative error."""
    rng = np.random.default_rng(seed)
    base = params.astype(np.float64)
    dq64 = dq.astype(np.float64)
    used = np.unique(items[items != 0])
    worst, eps = 0.0, 1e-5

    def loss(flat):
        return float((twin_forward(cfg, flat, items, masks) * dq64).sum())

    for name, shape, off in _core.enc_layout(cfg):
        size = math.prod(shape)
        if name == "item_emb":  # rows the batch reads, row 0 excluded
            picks = rng.choice(used, per_tensor) * C + rng.integers(0, C, per_tensor)
        else:
            picks = rng.choice(size, min(per_tensor, size), replace=False)
        g_c = grads[off : off + size]
        scale = float(np.abs(g_c).max()) + 1e-12
        for i in picks:
            plus, minus = base.copy(), base.copy()
            plus[off + i] += eps
            minus[off + i] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            err = abs(g_c[i] - fd)
            assert err <= 1e-3 * abs(fd) + 2e-5 * scale, (name, i, g_c[i], fd)
            worst = max(worst, err / (abs(fd) + 1e-3 * scale))
    return worst


@pytest.mark.parametrize("layers", [1, 2])
def test_twin_forward_matches_c_everywhere(layers):
    """Padding positions included: the twin carries the state there too."""
    rng = np.random.default_rng(10 + layers)
    cfg = config(layers)
    params = make_params(cfg, rng)
    items = make_items(rng)
    q, _ = forward(cfg, params, items)
    expect = twin_forward(cfg, params, items)
    assert_close_scaled(q, expect, rtol=1e-4, atol_frac=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_backward_matches_finite_differences(layers):
    """dq is non-zero at padding too, so the carried-state path is exercised."""
    rng = np.random.default_rng(20 + layers)
    cfg = config(layers)
    params = make_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32)
    _, acts = forward(cfg, params, items)
    grads = backward(cfg, params, acts, items, dq)
    check_fd(cfg, params, items, dq, grads, seed=layers)


def test_backward_with_dropout_matches_finite_differences():
    rng = np.random.default_rng(30)
    cfg = config(2, dropout=0.3)
    params = make_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32)
    q, acts = forward(cfg, params, items, seed=4, step=9, train=True)
    masks = dropout_masks(cfg, params, acts, items)
    keep = 1.0 / (1.0 - 0.3)
    for m in masks:
        assert set(np.unique(m)) <= {0.0, round(keep, 4)}
    masks = [np.where(m > 0, keep, 0.0) for m in masks]
    assert 0.15 < np.mean(masks[1] == 0) < 0.45
    assert_close_scaled(q, twin_forward(cfg, params, items, masks), 1e-4, 1e-5)
    grads = backward(cfg, params, acts, items, dq, seed=4, step=9, train=True)
    check_fd(cfg, params, items, dq, grads, masks=masks, seed=3)


# ---------------------------------------------------------------------------
# behaviour


def test_session_alone_equals_session_in_batch():
    rng = np.random.default_rng(40)
    cfg = config(2)
    params = make_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32) * (items != 0)[:, :, None]
    q, acts = forward(cfg, params, items)
    grads = backward(cfg, params, acts, items, dq)

    total = np.zeros_like(grads)
    for b, n in enumerate(LENGTHS):
        alone = np.ascontiguousarray(items[b : b + 1, :n])
        qa, acts_a = forward(cfg, params, alone)
        np.testing.assert_allclose(qa[0], q[b, :n], rtol=0, atol=1e-6)
        dq_a = np.ascontiguousarray(dq[b : b + 1, :n])
        backward(cfg, params, acts_a, alone, dq_a, grads=total)
    assert_close_scaled(total, grads, rtol=1e-5, atol_frac=1e-6)


def test_padding_row_gets_no_gradient_and_rowset_lists_inputs():
    rng = np.random.default_rng(50)
    cfg = config(1)
    params = make_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32)
    _, acts = forward(cfg, params, items)
    rs = new_rowset()
    grads = backward(cfg, params, acts, items, dq, rowset=rs)

    item_grad = views(cfg, grads)["item_emb"]
    assert np.all(item_grad[0] == 0.0)
    flat = items.ravel()
    first_seen = list(dict.fromkeys(flat[flat != 0].tolist()))
    mask, rows, count = rs
    assert count[0] == len(first_seen)
    assert rows[: count[0]].tolist() == first_seen
    assert sorted(np.flatnonzero(mask).tolist()) == sorted(first_seen)
    untouched = np.setdiff1d(np.arange(V), first_seen)
    assert np.all(item_grad[untouched] == 0.0)


def test_backward_adds_into_grads():
    rng = np.random.default_rng(55)
    cfg = config(2)
    params = make_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(np.float32)
    _, acts = forward(cfg, params, items)
    once = backward(cfg, params, acts, items, dq)
    start = rng.normal(size=once.shape).astype(np.float32)
    added = backward(cfg, params, acts, items, dq, grads=start.copy())
    # several terms land in most entries, so the sums round differently
    np.testing.assert_allclose(added, start + once, rtol=1e-6, atol=1e-6)


def test_dropout_is_keyed_by_seed_and_step():
    rng = np.random.default_rng(60)
    cfg = config(2, dropout=0.25)
    params = make_params(cfg, rng)
    items = make_items(rng)
    q1, _ = forward(cfg, params, items, seed=3, step=7, train=True)
    q2, _ = forward(cfg, params, items, seed=3, step=7, train=True)
    q_step, _ = forward(cfg, params, items, seed=3, step=8, train=True)
    q_seed, _ = forward(cfg, params, items, seed=4, step=7, train=True)
    q_eval, _ = forward(cfg, params, items, seed=3, step=7, train=False)
    q_off, _ = forward(config(2), params, items)
    np.testing.assert_array_equal(q1, q2)
    assert np.abs(q1 - q_step).max() > 1e-3
    assert np.abs(q1 - q_seed).max() > 1e-3
    np.testing.assert_array_equal(q_eval, q_off)


def test_init():
    cfg = config(2)
    n_params = _core.enc_sizes(cfg, 1, 1)[0]
    a = np.full(n_params, np.nan, np.float32)
    b = np.full(n_params, np.nan, np.float32)
    _core.enc_init(cfg, a, 11)
    _core.enc_init(cfg, b, 11)
    np.testing.assert_array_equal(a, b)
    P = views(cfg, a)
    bound = 1.0 / math.sqrt(H)
    assert np.all(P["item_emb"][0] == 0.0)
    for name in ("item_emb", "head_w"):
        w = P[name][1:] if name == "item_emb" else P[name]
        assert np.abs(w).max() <= 0.04 + 1e-7
        assert 0.012 < w.std() < 0.025
    for name, w in P.items():
        if name.startswith("gru"):
            assert np.abs(w).max() <= bound
            assert np.abs(w).max() > 0.8 * bound, name
    assert np.all(P["head_b"] == 0.0)
    assert not np.array_equal(P["gru0.w_hh"], P["gru1.w_hh"])
    assert sum(math.prod(s) for _, s, _ in _core.enc_layout(cfg)) == n_params


@pytest.mark.parametrize(
    "bad",
    [
        ("gru", 1, C, H, 1, T, 0.0),
        ("gru", V, 0, H, 1, T, 0.0),
        ("gru", V, C, 0, 1, T, 0.0),
        ("gru", V, C, H, 0, T, 0.0),
        ("gru", V, C, H, 1, 0, 0.0),
        ("gru", V, C, H, 1, T, 1.0),
        ("gru", V, C, H, 1, T, -0.1),
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        _core.enc_layout(bad)
    with pytest.raises(ValueError):
        _core.enc_sizes(bad, 1, 1)


@pytest.mark.parametrize("bad_id", [-1, V])
def test_out_of_range_ids_raise(bad_id):
    rng = np.random.default_rng(70)
    cfg = config(1)
    params = make_params(cfg, rng)
    items = make_items(rng)
    _, acts = forward(cfg, params, items)
    before = acts.copy()
    items[1, 0] = bad_id
    q = np.zeros((B, T, C), np.float32)
    with pytest.raises(ValueError):
        _core.enc_forward(cfg, params, acts, items, q, 0, 0, False)
    np.testing.assert_array_equal(acts, before)
    dq = np.ones((B, T, C), np.float32)
    with pytest.raises(ValueError):
        backward(cfg, params, acts, items, dq)


def test_bad_shapes_raise():
    rng = np.random.default_rng(80)
    cfg = config(1)
    params = make_params(cfg, rng)
    long_items = np.ones((B, T + 1), np.int32)
    with pytest.raises(ValueError):
        _core.enc_sizes(cfg, B, T + 1)
    acts = np.zeros(_core.enc_sizes(cfg, B, T)[1], np.float32)
    with pytest.raises(ValueError):
        _core.enc_forward(
            cfg,
            params,
            acts,
            long_items,
            np.zeros((B, T + 1, C), np.float32),
            0,
            0,
            False,
        )
    with pytest.raises(ValueError):  # B = 0
        _core.enc_forward(
            cfg,
            params,
            acts,
            np.ones((0, T), np.int32),
            np.zeros((0, T, C), np.float32),
            0,
            0,
            False,
        )
    with pytest.raises(ValueError):
        _core.enc_forward(
            cfg,
            params[:-1].copy(),
            acts,
            np.ones((B, T), np.int32),
            np.zeros((B, T, C), np.float32),
            0,
            0,
            False,
        )
