"""The C Transformer encoder (nfcl_tf_*) against PyTorch.

Dropout off: forward and every parameter gradient against torch's own
nn.TransformerEncoderLayer (the twin in torch_twins.py). Dropout on: against a
float64 functional twin that rebuilds the C masks from the counter-based RNG.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nfcl import _core  # noqa: E402
from torch_twins import TorchSASRec  # noqa: E402

CFG = dict(n_items=30, dim=16, heads=4, layers=2, max_len=10, ffn=24)
SITES_PER_STEP = 1024


def cfg_tuple(causal, dropout=0.0, **over):
    """The binding's config tuple, CFG with some entries replaced."""
    c = dict(CFG, **over)
    sizes = (c[k] for k in ("n_items", "dim", "heads", "layers", "max_len", "ffn"))
    return ("transformer", *sizes, dropout, causal)


def make_items(rng, B=3, T=7, V=30):
    """Right-padded sessions (B, T): lengths differ, one full, one of length 1."""
    lengths = [T, 1] + list(rng.integers(2, T, B - 2))
    items = np.zeros((B, T), np.int32)
    for b, n in enumerate(lengths):
        items[b, :n] = rng.integers(1, V, n)
    return items


class Encoder:
    """Flat buffers around the C encoder, as the model code will hold them."""

    def __init__(self, cfg, seed=1):
        self.cfg = cfg
        self.layout = _core.enc_layout(cfg)
        self.params = np.zeros(_core.enc_sizes(cfg, 1, 1)[0], np.float32)
        _core.enc_init(cfg, self.params, seed)

    def views(self, flat):
        return {
            name: flat[off : off + math.prod(shape)].reshape(shape)
            for name, shape, off in self.layout
        }

    def randomize(self, rng, std=0.3):
        """Weights large enough that attention is far from uniform."""
        self.params[:] = rng.normal(0.0, std, self.params.shape)
        w = self.views(self.params)
        w["item_emb"][0] = 0.0
        for name in w:
            if name.endswith(("ln1_w", "ln2_w")):
                w[name] += 1.0

    def forward(self, items, seed=0, step=0, train=False):
        B, T = items.shape
        _, n_acts, n_scratch = _core.enc_sizes(self.cfg, B, T)
        self.acts = np.zeros(n_acts, np.float32)
        self.scratch = np.zeros(n_scratch, np.float32)
        q = np.zeros((B, T, self.cfg[2]), np.float32)
        _core.enc_forward(self.cfg, self.params, self.acts, items, q, seed, step, train)
        return q

    def backward(self, items, dq, seed=0, step=0, train=False, grads=None, rs=None):
        if grads is None:
            grads = np.zeros_like(self.params)
        bufs = (self.params, grads, self.acts, self.scratch)
        _core.enc_backward(self.cfg, *bufs, items, dq, seed, step, train, rs)
        return grads


def new_rowset(V):
    return (np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64))


# ---------------------------------------------------------------------------
# a float64 twin with the C dropout masks


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def nfcl_uniform(seed, stream, n):
    """nfcl_uniform(seed, stream, i) for i in 0..n-1, as float32."""
    with np.errstate(over="ignore"):
        h = _mix64(np.array([(seed + 0x9E3779B97F4A7C15) % 2**64], np.uint64))
        h = _mix64(h ^ np.uint64((stream + 0x632BE59BD9B4E019) % 2**64))
        c = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h = _mix64(h ^ (c + np.uint64(0x2545F4914F6CDD1D)))
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def keep_mask(seed, step, site, shape, p):
    """The 0/1 keep mask of one dropout site, shaped like its tensor."""
    u = nfcl_uniform(seed, step * SITES_PER_STEP + site, math.prod(shape))
    return torch.from_numpy((u >= np.float32(p)).reshape(shape).astype(np.float64))


def twin_forward(w, items, causal, p=0.0, seed=0, step=0):
    """q (B,T,C) in float64 from weights w (name -> tensor); dropout sites as in C."""
    B, T = items.shape
    C, NH, L = CFG["dim"], CFG["heads"], CFG["layers"]
    hs = C // NH
    it = torch.from_numpy(items).long()

    def drop(x, site):
        if p == 0.0:
            return x
        return x * keep_mask(seed, step, site, tuple(x.shape), p) / (1.0 - p)

    vis = (it != 0)[:, None, None, :].expand(B, 1, T, T)
    if causal:
        vis = vis & torch.ones(T, T, dtype=torch.bool).tril()
    x = drop(w["item_emb"][it] + w["pos_emb"][:T], 0)
    for lay in range(L):
        g = {
            k[len(f"layer{lay}.") :]: v
            for k, v in w.items()
            if k.startswith(f"layer{lay}.")
        }
        site = 1 + 4 * lay
        qkv = x @ g["attn_in_w"].T + g["attn_in_b"]
        q, k, v = (t.reshape(B, T, NH, hs).transpose(1, 2) for t in qkv.split(C, -1))
        s = (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~vis, -math.inf)
        att = drop(torch.softmax(s, -1), site)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        z = drop(y @ g["attn_out_w"].T + g["attn_out_b"], site + 1)
        x = torch.layer_norm(x + z, (C,), g["ln1_w"], g["ln1_b"], 1e-5)
        h = drop(torch.relu(x @ g["ff1_w"].T + g["ff1_b"]), site + 2)
        z = drop(h @ g["ff2_w"].T + g["ff2_b"], site + 3)
        x = torch.layer_norm(x + z, (C,), g["ln2_w"], g["ln2_b"], 1e-5)
    return torch.nn.functional.gelu(x @ w["head_w"].T + w["head_b"])


def twin_weights(enc):
    return {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in enc.views(enc.params).items()
    }


def assert_grads_close(enc, grads, expect, rtol, atol_rel, what):
    """Every tensor, atol scaled by the tensor's largest expected entry."""
    ours = enc.views(grads)
    for name, e in expect.items():
        scale = np.abs(e).max() + 1e-12
        np.testing.assert_allclose(
            ours[name],
            e,
            rtol=rtol,
            atol=atol_rel * scale,
            err_msg=f"{what}: gradient of {name}",
        )


# ---------------------------------------------------------------------------
# dropout off: parity with torch's TransformerEncoderLayer


@pytest.mark.parametrize("causal,heads", [(1, 4), (0, 2)])
def test_forward_and_every_gradient_match_torch(causal, heads):
    rng = np.random.default_rng(10 + causal)
    cfg = cfg_tuple(causal, heads=heads)
    enc = Encoder(cfg)
    enc.randomize(rng)
    items = make_items(rng)
    q = enc.forward(items)
    dq = rng.normal(size=q.shape).astype(np.float32)
    grads = enc.backward(items, dq)

    tm = TorchSASRec(dict(CFG, heads=heads), causal=bool(causal))
    tm.load_nfcl(enc.views(enc.params))
    tq = tm(torch.from_numpy(items).long())
    (tq * torch.from_numpy(dq)).sum().backward()

    np.testing.assert_allclose(q, tq.detach().numpy(), rtol=1e-4, atol=1e-5)
    expect = {n: p.grad.numpy() for n, p in tm.named_like_nfcl().items()}
    assert_grads_close(enc, grads, expect, 1e-4, 1e-5, f"causal={causal}")


def test_functional_twin_matches_torch_modules():
    """The float64 twin used below agrees with nn.TransformerEncoderLayer."""
    rng = np.random.default_rng(4)
    enc = Encoder(cfg_tuple(1))
    enc.randomize(rng)
    items = make_items(rng)
    tm = TorchSASRec(CFG, causal=True)
    tm.load_nfcl(enc.views(enc.params))
    ref = tm(torch.from_numpy(items).long()).detach().numpy()
    twin = twin_forward(twin_weights(enc), items, True).detach().numpy()
    np.testing.assert_allclose(twin, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [1, 0])
def test_padding_columns_do_not_change_real_positions(causal):
    rng = np.random.default_rng(20 + causal)
    enc = Encoder(cfg_tuple(causal))
    enc.randomize(rng)
    items = make_items(rng, B=4, T=6)
    wide = np.zeros((4, CFG["max_len"]), np.int32)
    wide[:, :6] = items
    q, q_wide = enc.forward(items), enc.forward(wide)
    real = items > 0
    np.testing.assert_allclose(q_wide[:, :6][real], q[real], rtol=1e-5, atol=1e-6)


def test_all_padding_session_gives_zero_attention_not_nan():
    """A row with no visible key (never in real batches) must stay finite."""
    rng = np.random.default_rng(5)
    enc = Encoder(cfg_tuple(0))
    enc.randomize(rng)
    items = make_items(rng)
    with_empty = np.concatenate([items, np.zeros((1, items.shape[1]), np.int32)])
    q_ref = enc.forward(items)
    q = enc.forward(with_empty)
    grads = enc.backward(with_empty, np.ones_like(q))
    assert np.isfinite(q).all() and np.isfinite(grads).all()
    np.testing.assert_allclose(q[:-1], q_ref, rtol=1e-5, atol=1e-6)


def test_embedding_gradient_rows_and_rowset():
    rng = np.random.default_rng(6)
    cfg = cfg_tuple(1)
    enc = Encoder(cfg)
    enc.randomize(rng)
    items = make_items(rng, B=4)
    q = enc.forward(items)
    rs = new_rowset(CFG["n_items"])
    dq = rng.normal(size=q.shape).astype(np.float32)
    grads = enc.backward(items, dq, rs=rs)

    demb = enc.views(grads)["item_emb"]
    used = set(np.unique(items[items > 0]).tolist())
    mask, rows, count = rs
    assert set(rows[: count[0]].tolist()) == used and count[0] == len(used)
    assert set(np.flatnonzero(mask).tolist()) == used
    assert np.all(demb[0] == 0.0)
    untouched = sorted(set(range(CFG["n_items"])) - used)
    assert np.all(demb[untouched] == 0.0)
    assert np.all(np.abs(demb[sorted(used)]).sum(1) > 0)

    # backward adds: a second call doubles every gradient
    twice = enc.backward(items, dq, grads=grads.copy())
    np.testing.assert_allclose(twice, 2 * grads, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# dropout on


def test_dropout_is_deterministic_and_keyed_by_step():
    rng = np.random.default_rng(7)
    enc = Encoder(cfg_tuple(1, 0.3))
    enc.randomize(rng)
    items = make_items(rng)
    a = enc.forward(items, seed=3, step=5, train=True)
    b = enc.forward(items, seed=3, step=5, train=True)
    c = enc.forward(items, seed=3, step=6, train=True)
    d = enc.forward(items, seed=4, step=5, train=True)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - d).max() > 1e-3

    # train=0 is the identity: the same q as a model built without dropout
    off = enc.forward(items, seed=3, step=5, train=False)
    plain = Encoder(cfg_tuple(1, 0.0))
    plain.params[:] = enc.params
    np.testing.assert_array_equal(off, plain.forward(items))


def test_dropout_keep_rate_and_mask():
    """x0 = dropout(embedding sum) opens the activation buffer (see transformer.c)."""
    p, B, T = 0.3, 64, 10
    rng = np.random.default_rng(8)
    enc = Encoder(cfg_tuple(1, p))
    enc.randomize(rng)
    items = rng.integers(1, CFG["n_items"], (B, T)).astype(np.int32)
    enc.forward(items, seed=11, step=2, train=True)
    x0 = enc.acts[: B * T * CFG["dim"]]
    kept = x0 != 0.0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 3 * math.sqrt(p * (1 - p) / n)

    w = enc.views(enc.params)
    emb = (w["item_emb"][items] + w["pos_emb"][:T]).reshape(-1)
    expect_keep = keep_mask(11, 2, 0, (n,), p).numpy() > 0
    np.testing.assert_array_equal(kept, expect_keep)
    np.testing.assert_allclose(x0[kept], emb[kept] / (1 - p), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("causal", [1, 0])
def test_dropout_forward_and_backward_match_float64_twin(causal):
    p, seed, step = 0.2, 9, 3
    rng = np.random.default_rng(30 + causal)
    enc = Encoder(cfg_tuple(causal, p))
    enc.randomize(rng)
    items = make_items(rng)
    q = enc.forward(items, seed, step, train=True)
    dq = rng.normal(size=q.shape).astype(np.float32)
    grads = enc.backward(items, dq, seed, step, train=True)

    w = twin_weights(enc)
    tq = twin_forward(w, items, bool(causal), p, seed, step)
    (tq * torch.from_numpy(dq).double()).sum().backward()
    np.testing.assert_allclose(q, tq.detach().numpy(), rtol=1e-4, atol=1e-5)
    expect = {n: t.grad.numpy() for n, t in w.items()}
    expect["item_emb"][0] = 0.0  # padding row: no gradient by contract
    assert_grads_close(enc, grads, expect, 1e-4, 1e-5, f"dropout causal={causal}")


# ---------------------------------------------------------------------------
# init and argument checks


def test_init_layout_and_values():
    cfg = cfg_tuple(1)
    enc = Encoder(cfg, seed=5)
    w = enc.views(enc.params)
    assert enc.layout[0][0] == "item_emb" and enc.layout[0][2] == 0
    assert enc.layout[-1][2] + math.prod(enc.layout[-1][1]) == enc.params.size
    assert np.all(w["item_emb"][0] == 0.0)
    for name, t in w.items():
        if name.endswith(("ln1_w", "ln2_w")):
            assert np.all(t == 1.0), name
        elif t.ndim == 1:
            assert np.all(t == 0.0), name
        else:
            body = t[1:] if name == "item_emb" else t
            assert np.abs(body).max() <= 0.04 + 1e-7, name
            assert 0.01 < body.std() < 0.03, name
    # distinct streams per tensor, equal seeds give equal weights
    assert not np.allclose(w["layer0.ff1_w"][:16], w["layer1.ff1_w"][:16])
    np.testing.assert_array_equal(Encoder(cfg, seed=5).params, enc.params)
    assert not np.array_equal(Encoder(cfg, seed=6).params, enc.params)


def test_bad_arguments_raise_value_error_and_touch_nothing():
    rng = np.random.default_rng(9)
    enc = Encoder(cfg_tuple(1))
    items = make_items(rng)
    q = enc.forward(items)
    acts = enc.acts.copy()

    too_long = np.ones((2, CFG["max_len"] + 1), np.int32)
    out = np.zeros((2, CFG["max_len"] + 1, CFG["dim"]), np.float32)
    with pytest.raises(ValueError):
        _core.enc_forward(enc.cfg, enc.params, enc.acts, too_long, out, 0, 0, False)
    for bad in (CFG["n_items"], -1):
        wrong = items.copy()
        wrong[0, -1] = bad
        q_out = np.full_like(q, 7.0)
        with pytest.raises(ValueError):
            args = (enc.params, enc.acts, wrong, q_out, 0, 0, False)
            _core.enc_forward(enc.cfg, *args)
        grads = np.zeros_like(enc.params)
        with pytest.raises(ValueError):
            enc.backward(wrong, np.ones_like(q), grads=grads)
        assert np.all(q_out == 7.0) and np.all(grads == 0.0)
        np.testing.assert_array_equal(enc.acts, acts)
    for cfg in (
        cfg_tuple(1, heads=3),
        cfg_tuple(1, dropout=1.0),
        cfg_tuple(1, dropout=-0.1),
        cfg_tuple(1, n_items=1),
        cfg_tuple(1, dim=0),
        cfg_tuple(1, layers=33),
        cfg_tuple(2),
    ):
        with pytest.raises(ValueError):
            _core.enc_layout(cfg)
