"""Caser encoder: the C core against a PyTorch twin (RecBole's layers), a float64
NumPy twin with finite differences, and its behaviour at padding and windows."""

import math

import numpy as np
import pytest

from nfcl import _core

V, C, N_H, N_V, MAX_LEN = 25, 8, 4, 2, 10
B, T = 3, 7
f32 = np.float32


def config(W, dropout=0.0, max_len=MAX_LEN):
    return ("caser", V, C, W, N_H, N_V, max_len, dropout)


def make_items(rng, B=B, T=T):
    """Right-padded sessions (B, T): one full, the others shorter, ids 1..V-1."""
    items = np.zeros((B, T), np.int32)
    lengths = [T] + list(rng.integers(2, T, B - 1))
    for b, n in enumerate(lengths):
        items[b, :n] = rng.integers(1, V, n)
    return items


def views(cfg, flat):
    """Name -> view of the flat buffer, shaped as enc_layout says."""
    return {
        name: flat[off : off + int(np.prod(shape))].reshape(shape)
        for name, shape, off in _core.enc_layout(cfg)
    }


def random_params(cfg, rng, scale=0.3):
    """Every tensor (biases too) ~ N(0, scale^2), item_emb row 0 zero."""
    n_params = _core.enc_sizes(cfg, 1, 1)[0]
    params = rng.normal(0.0, scale, n_params).astype(f32)
    views(cfg, params)["item_emb"][0] = 0.0
    return params


def run(cfg, params, items, dq, seed=0, step=0, train=False, rowset=None, grads=None):
    """C forward then backward; returns q (B,T,C) and grads (n_params,)."""
    Bx, Tx = items.shape
    n_params, n_acts, n_scratch = _core.enc_sizes(cfg, Bx, Tx)
    acts = np.zeros(n_acts, f32)
    q = np.zeros((Bx, Tx, C), f32)
    _core.enc_forward(cfg, params, acts, items, q, seed, step, train)
    if dq is None:
        return q, None
    grads = np.zeros(n_params, f32) if grads is None else grads
    scratch = np.zeros(n_scratch, f32)
    _core.enc_backward(
        cfg, params, grads, acts, scratch, items, dq, seed, step, train, rowset
    )
    return q, grads


def new_rowset():
    return (np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64))


def assert_close(got, want, rtol=1e-4, rel_atol=1e-5, name=""):
    """atol scales with the reference's magnitude; rtol on top."""
    assert got.shape == want.shape, name
    atol = rel_atol * max(float(np.abs(want).max()), 1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


# ---------------------------------------------------------------------------
# the counter-based uniform of csrc/common.c, to rebuild the dropout masks

M64 = (1 << 64) - 1


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def uniform(seed, stream, counter):
    h = _mix64((seed + 0x9E3779B97F4A7C15) & M64)
    h = _mix64(h ^ ((stream + 0x632BE59BD9B4E019) & M64))
    h = _mix64(h ^ ((counter * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & M64))
    return (h >> 40) / 16777216.0


def dropout_mask(n, p, seed, step, site=700):
    """Keep-and-scale factors (n,) of the feature dropout."""
    keep = np.array([uniform(seed, step * 1024 + site, i) >= p for i in range(n)])
    return keep / (1.0 - p)


def test_uniform_twin_matches_core_trunc_normal():
    # trunc_normal's first try for x[i] uses counters (i << 8) and +1
    x = np.zeros(64, f32)
    _core.trunc_normal(x, 1.0, 11, 3)
    u1 = np.array([1.0 - uniform(11, 3, i << 8) for i in range(64)])
    u2 = np.array([uniform(11, 3, (i << 8) + 1) for i in range(64)])
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
    first = np.abs(z) <= 2.0
    assert first.sum() > 40
    np.testing.assert_allclose(x[first], z[first], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# float64 NumPy twin


def numpy_twin(cfg, params, items, mask=None):
    """Caser per position in float64. Returns q (B,T,C) and a signature of the
    discrete choices (pool argmaxes, ReLU patterns) for finite differences."""
    W = cfg[3]
    p = {k: v.astype(np.float64) for k, v in views(cfg, params).items()}
    Bx, Tx = items.shape
    emb = p["item_emb"][items] * (items > 0)[..., None]  # (B,T,C)
    pad = np.concatenate([np.zeros((Bx, W - 1, C)), emb], axis=1)  # (B,S,C)
    E = np.lib.stride_tricks.sliding_window_view(pad, W, axis=1)  # (B,T,C,W)
    E = E.transpose(0, 1, 3, 2)  # (B,T,W,C)

    # vertical filters: (B,T,n_v,C), flattened f-major
    v = np.einsum("fi,btic->btfc", p["conv_v_w"], E) + p["conv_v_b"][:, None]
    feats, sig = [v.reshape(Bx, Tx, N_V * C)], []
    for h in range(1, W + 1):
        spans = np.lib.stride_tricks.sliding_window_view(E, h, axis=2)
        spans = spans.transpose(0, 1, 2, 4, 3).reshape(Bx, Tx, W - h + 1, h * C)
        y = spans @ p[f"conv_h{h}_w"].T + p[f"conv_h{h}_b"]  # (B,T,W-h+1,n_h)
        feats.append(np.maximum(y, 0.0).max(axis=2))
        sig += [np.where(y.max(axis=2) > 0, y.argmax(axis=2), -1)]
    x = np.concatenate(feats, axis=-1)  # (B,T,D)
    if mask is not None:
        x = x * mask.reshape(x.shape)
    a = x @ p["fc_w"].T + p["fc_b"]
    z = np.maximum(a, 0.0)
    u = z @ p["head_w"].T + p["head_b"]
    q = 0.5 * u * (1.0 + np.vectorize(math.erf)(u / np.sqrt(2.0)))
    sig.append(a > 0)
    return q, sig


def same_signature(s1, s2):
    return all(np.array_equal(a, b) for a, b in zip(s1, s2))


def fd_check(cfg, params, items, dq, grads, rng, mask=None, per_tensor=3):
    """C gradients vs central differences of the float64 twin on a few
    coordinates of every tensor, away from pooling and ReLU switches."""
    p64 = params.astype(np.float64)
    _, sig0 = numpy_twin(cfg, p64, items, mask)
    used = np.unique(items[items > 0])
    eps, worst = 1e-6, 0.0
    for name, shape, off in _core.enc_layout(cfg):
        size = int(np.prod(shape))
        if name == "item_emb":
            cand = [r * C + c for r in used for c in range(C)]
        else:
            cand = list(range(size))
        checked = 0
        for k in rng.permutation(cand):
            i = off + int(k)
            hi, lo = p64.copy(), p64.copy()
            hi[i] += eps
            lo[i] -= eps
            q_hi, s_hi = numpy_twin(cfg, hi, items, mask)
            q_lo, s_lo = numpy_twin(cfg, lo, items, mask)
            if not (same_signature(s_hi, sig0) and same_signature(s_lo, sig0)):
                continue
            num = float(((q_hi - q_lo) * dq).sum() / (2 * eps))
            err = abs(grads[i] - num)
            assert err <= 1e-3 * abs(num) + 2e-4, (name, int(k), grads[i], num)
            worst = max(worst, err / (abs(num) + 1e-3))
            checked += 1
            if checked == per_tensor:
                break
        assert checked == min(per_tensor, size), name
    return worst


# ---------------------------------------------------------------------------
# layout and init


def test_layout_is_contiguous_with_item_emb_first():
    W = 4
    cfg = config(W)
    layout = _core.enc_layout(cfg)
    names = [n for n, _, _ in layout]
    hnames = [f"conv_h{h}_{s}" for h in range(1, W + 1) for s in "wb"]
    tail = ["fc_w", "fc_b", "head_w", "head_b"]
    assert names == ["item_emb", "conv_v_w", "conv_v_b", *hnames, *tail]
    shapes = {n: s for n, s, _ in layout}
    assert shapes["item_emb"] == (V, C) and shapes["conv_v_w"] == (N_V, W)
    assert shapes["conv_h3_w"] == (N_H, 3 * C)
    assert shapes["fc_w"] == (C, N_V * C + N_H * W)
    offset = 0
    for _, shape, off in layout:
        assert off == offset
        offset += int(np.prod(shape))
    assert offset == _core.enc_sizes(cfg, 1, 1)[0]


def test_init_rows_biases_and_scale():
    cfg = config(3)
    n = _core.enc_sizes(cfg, 1, 1)[0]
    a, b = np.full(n, 9.0, f32), np.zeros(n, f32)
    _core.enc_init(cfg, a, 5)
    _core.enc_init(cfg, b, 5)
    np.testing.assert_array_equal(a, b)
    w = views(cfg, a)
    assert not w["item_emb"][0].any()
    for name, t in w.items():
        if name.endswith("_b"):
            assert not t.any(), name
        else:
            body = t[1:] if name == "item_emb" else t
            assert 0.01 < body.std() < 0.03 and np.abs(body).max() <= 0.04, name
    assert not np.array_equal(w["conv_h1_w"].ravel()[:8], w["conv_h2_w"].ravel()[:8])


# ---------------------------------------------------------------------------
# PyTorch twin: RecBole's Caser layers, applied to every position's window


def torch_caser(cfg, params):
    """The torch twin in float64 with these weights, and a function returning
    its gradients by nfcl name."""
    pytest.importorskip("torch")
    from torch_twins import TorchCaser

    sizes = {"n_items": V, "dim": C, "window": cfg[3], "n_h": N_H, "n_v": N_V}
    m = TorchCaser(sizes).double()
    m.load_nfcl(views(cfg, params))

    def grads():
        return {k: p.grad.numpy() for k, p in m.named_like_nfcl().items()}

    return m, grads


@pytest.mark.parametrize("W", [3, 5])
def test_forward_and_every_gradient_match_torch(W):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(W)
    cfg = config(W)
    params = random_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(f32)
    q, grads = run(cfg, params, items, dq)

    model, torch_grads = torch_caser(cfg, params)
    q_ref = model(torch.tensor(items, dtype=torch.long))
    (q_ref * torch.tensor(dq, dtype=torch.float64)).sum().backward()
    assert_close(q, q_ref.detach().numpy(), name="q")
    want = torch_grads()
    got = views(cfg, grads)
    assert set(got) == set(want)
    for name in got:
        assert_close(got[name], want[name].reshape(got[name].shape), name=name)


@pytest.mark.parametrize("W", [3, 5])
def test_numpy_twin_and_finite_differences(W):
    rng = np.random.default_rng(10 + W)
    cfg = config(W)
    params = random_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(f32)
    q, grads = run(cfg, params, items, dq)
    q64, _ = numpy_twin(cfg, params, items)
    assert_close(q, q64, name="q vs twin")
    fd_check(cfg, params, items, dq, grads, rng)


def test_dropout_mask_scale_and_gradient():
    W, p, seed, step = 3, 0.4, 21, 6
    rng = np.random.default_rng(3)
    cfg = config(W, dropout=p)
    params = random_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(f32)
    q, grads = run(cfg, params, items, dq, seed=seed, step=step, train=True)
    mask = dropout_mask(B * T * (N_V * C + N_H * W), p, seed, step)
    q64, _ = numpy_twin(cfg, params, items, mask)
    assert_close(q, q64, name="q with dropout")
    fd_check(cfg, params, items, dq, grads, rng, mask=mask, per_tensor=2)

    # another step draws another mask; eval ignores dropout
    q_step, _ = run(cfg, params, items, None, seed=seed, step=step + 1, train=True)
    assert not np.allclose(q_step, q)
    q_eval, _ = run(cfg, params, items, None, seed=seed, step=step, train=False)
    q_nodrop, _ = run(config(W), params, items, None)
    np.testing.assert_array_equal(q_eval, q_nodrop)
    big = dropout_mask(4000, p, seed, step)
    assert abs((big == 0).mean() - p) < 0.03


# ---------------------------------------------------------------------------
# behaviour


def test_right_padding_does_not_change_real_positions():
    rng = np.random.default_rng(4)
    cfg = config(4)
    params = random_params(cfg, rng)
    items = make_items(rng)
    longer = np.zeros((B, T + 3), np.int32)
    longer[:, :T] = items
    q, _ = run(cfg, params, items, None)
    q_long, _ = run(cfg, params, longer, None)
    real = items > 0
    np.testing.assert_allclose(q_long[:, :T][real], q[real], rtol=1e-6, atol=1e-7)


def test_prediction_depends_only_on_its_window():
    W = 3
    rng = np.random.default_rng(5)
    cfg = config(W)
    params = random_params(cfg, rng)
    items = rng.integers(1, V, (B, T)).astype(np.int32)
    q, _ = run(cfg, params, items, None)
    s = 2
    changed = items.copy()
    changed[:, s] = items[:, s] % (V - 1) + 1
    q2, _ = run(cfg, params, changed, None)
    for t in range(T):
        inside = s <= t <= s + W - 1
        diff = np.abs(q2[:, t] - q[:, t]).max()
        assert (diff > 1e-6) if inside else (diff == 0.0), (t, diff)


def test_padding_row_gradient_is_zero_and_rowset_lists_inputs():
    rng = np.random.default_rng(6)
    cfg = config(3)
    params = random_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(f32)
    rowset = new_rowset()
    _, grads = run(cfg, params, items, dq, rowset=rowset)
    demb = views(cfg, grads)["item_emb"]
    assert np.all(demb[0] == 0.0)
    used = np.unique(items[items > 0])
    mask, rows, count = rowset
    assert count[0] == len(used)
    assert sorted(rows[: count[0]]) == list(used)
    np.testing.assert_array_equal(np.flatnonzero(mask), used)
    unused = np.setdiff1d(np.arange(1, V), used)
    assert not demb[unused].any()


def test_backward_accumulates_and_leaves_inputs_alone():
    rng = np.random.default_rng(7)
    cfg = config(3)
    params = random_params(cfg, rng)
    items = make_items(rng)
    dq = rng.normal(size=(B, T, C)).astype(f32)
    keep = (params.copy(), items.copy(), dq.copy())
    _, once = run(cfg, params, items, dq)
    _, twice = run(cfg, params, items, dq, grads=once.copy())
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6, atol=1e-7)
    for before, after in zip(keep, (params, items, dq)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "field, value",
    [
        (1, 1),
        (2, 0),
        (3, 0),
        (3, 33),
        (4, 0),
        (5, 0),
        (6, 0),
        (7, 1.0),
        (7, -0.1),
        (7, math.nan),
    ],
)
def test_bad_config_raises(field, value):
    # fields: kind, n_items, dim, window, n_h, n_v, max_len, dropout
    cfg = list(config(3))
    cfg[field] = value
    with pytest.raises(ValueError):
        _core.enc_layout(tuple(cfg))
    with pytest.raises(ValueError):
        _core.enc_sizes(tuple(cfg), B, 1)


def test_bad_items_and_sizes_raise_before_writing():
    rng = np.random.default_rng(8)
    cfg = config(3)
    params = random_params(cfg, rng)
    _, n_acts, _ = _core.enc_sizes(cfg, B, T)
    for bad_id in (V, -1):
        items = make_items(rng)
        items[1, 0] = bad_id
        acts = np.full(n_acts, 7.0, f32)
        q = np.full((B, T, C), 7.0, f32)
        with pytest.raises(ValueError):
            _core.enc_forward(cfg, params, acts, items, q, 0, 0, False)
        assert np.all(q == 7.0) and np.all(acts == 7.0)
    long_items = np.ones((B, MAX_LEN + 1), np.int32)
    with pytest.raises(ValueError):
        run(cfg, params, long_items, None)
    with pytest.raises(ValueError):
        _core.enc_sizes(cfg, B, MAX_LEN + 1)
    acts = np.zeros(n_acts - 1, f32)
    with pytest.raises(ValueError):
        _core.enc_forward(
            cfg, params, acts, make_items(rng), np.zeros((B, T, C), f32), 0, 0, False
        )
