"""_core.adam_step against torch.optim.Adam, clip_grad_norm_ and SparseAdam."""

import numpy as np
import pytest

from nfcl import _core

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-5, 1e-6
SHAPES = [(4, 3), (5,), (2, 3, 2)]


def rowset(V):
    return np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64)


def mark(rs, rows):
    mask, listed, count = rs
    for r in rows:
        if not mask[r]:
            mask[r] = 1
            listed[count[0]] = r
            count[0] += 1


def clip_arg(clip):
    """torch's max_norm for our clip (<= 0 disables it, inf never clips)."""
    return clip if clip > 0 else float("inf")


@pytest.mark.parametrize("clip", [0.0, 0.5, 1e3])
@pytest.mark.parametrize("wd,eps", [(0.0, 1e-8), (0.05, 1e-8), (0.05, 0.1)])
def test_dense_matches_torch_adam(clip, wd, eps):
    rng = np.random.default_rng(0)
    lr, b1, b2 = 1e-2, 0.9, 0.99
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
    opt = torch.optim.Adam(tp, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)

    params = np.concatenate([p.ravel() for p in init])
    grads, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    for t in range(1, 11):
        g = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        for p, gi in zip(tp, g, strict=True):
            p.grad = torch.from_numpy(gi.copy())
        t_norm = torch.nn.utils.clip_grad_norm_(tp, clip_arg(clip))
        opt.step()

        grads[:] = np.concatenate([gi.ravel() for gi in g])
        norm = _core.adam_step(
            params, grads, m, v, 0, 1, None, lr, b1, b2, eps, wd, clip, t
        )
        assert norm == pytest.approx(t_norm.item(), rel=1e-5)
        assert not grads.any()

    want = np.concatenate([p.detach().numpy().ravel() for p in tp])
    np.testing.assert_allclose(params, want, rtol=RTOL, atol=ATOL)
    want_m = np.concatenate([opt.state[p]["exp_avg"].numpy().ravel() for p in tp])
    want_v = np.concatenate([opt.state[p]["exp_avg_sq"].numpy().ravel() for p in tp])
    np.testing.assert_allclose(m, want_m, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(v, want_v, rtol=RTOL, atol=ATOL)


def test_embedding_rows_match_sparse_adam():
    """Rows move only when listed; their moments follow torch's SparseAdam."""
    rng = np.random.default_rng(1)
    V, C, D = 15, 4, 7
    lr, b1, b2, eps, clip = 2e-2, 0.8, 0.95, 1e-8, 1.5
    emb0 = rng.standard_normal((V, C)).astype(np.float32)
    dense0 = rng.standard_normal(D).astype(np.float32)
    t_emb = torch.nn.Parameter(torch.from_numpy(emb0.copy()))
    t_dense = torch.nn.Parameter(torch.from_numpy(dense0.copy()))
    holder = torch.zeros(V, C, requires_grad=True)  # dense view of the sparse grad
    sparse_opt = torch.optim.SparseAdam([t_emb], lr=lr, betas=(b1, b2), eps=eps)
    dense_opt = torch.optim.Adam([t_dense], lr=lr, betas=(b1, b2), eps=eps)

    params = np.concatenate([emb0.ravel(), dense0])
    grads, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    rs = rowset(V)
    for t in range(1, 11):
        rows = rng.choice(np.arange(1, V), int(rng.integers(1, 6)), replace=False)
        g_rows = rng.standard_normal((len(rows), C)).astype(np.float32)
        g_dense = rng.standard_normal(D).astype(np.float32)

        # torch: clip over dense + touched rows, then the two optimizers
        holder.grad = torch.zeros(V, C)
        holder.grad[torch.from_numpy(rows)] = torch.from_numpy(g_rows)
        t_dense.grad = torch.from_numpy(g_dense.copy())
        t_norm = torch.nn.utils.clip_grad_norm_([holder, t_dense], clip)
        idx = torch.from_numpy(rows)[None].long()
        t_emb.grad = torch.sparse_coo_tensor(
            idx, holder.grad[idx[0]], (V, C), check_invariants=True
        )
        sparse_opt.step()
        dense_opt.step()

        # nfcl: one call for both parts
        before = params.copy(), m.copy(), v.copy()
        grads[: V * C].reshape(V, C)[rows] = g_rows
        grads[V * C :] = g_dense
        mark(rs, rows)
        norm = _core.adam_step(
            params, grads, m, v, V, C, rs, lr, b1, b2, eps, 0.0, clip, t
        )
        assert norm == pytest.approx(t_norm.item(), rel=1e-5)
        assert not grads.any() and not rs[0].any() and rs[2][0] == 0

        # untouched rows: parameters and moments exactly as before
        still = np.setdiff1d(np.arange(V), rows)
        for new, old in zip((params, m, v), before, strict=True):
            np.testing.assert_array_equal(
                new[: V * C].reshape(V, C)[still], old[: V * C].reshape(V, C)[still]
            )

    state = sparse_opt.state[t_emb]
    np.testing.assert_allclose(
        params[: V * C], t_emb.detach().numpy().ravel(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        params[V * C :], t_dense.detach().numpy(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        m[: V * C], state["exp_avg"].numpy().ravel(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        v[: V * C], state["exp_avg_sq"].numpy().ravel(), rtol=RTOL, atol=ATOL
    )


def test_lazy_rows_follow_adam_formula_with_decay():
    """Weight decay and eps on listed rows as in torch Adam (float64 reference)."""
    rng = np.random.default_rng(2)
    V, C = 6, 3
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 0.1, 0.2
    params = rng.standard_normal(V * C + 2).astype(np.float32)
    start = params.copy()
    grads, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    p64 = params.astype(np.float64).reshape(-1)
    m64, v64 = np.zeros_like(p64), np.zeros_like(p64)
    rs = rowset(V)
    for t, rows in enumerate([[1, 4], [4], [2, 5, 1]], start=1):
        g = rng.standard_normal(V * C + 2).astype(np.float32)
        dense = [V * C, V * C + 1]
        sel = np.concatenate([np.arange(r * C, r * C + C) for r in rows] + [dense])
        grads[sel] = g[sel]
        mark(rs, rows)
        _core.adam_step(params, grads, m, v, V, C, rs, lr, b1, b2, eps, wd, 0.0, t)

        gi = g[sel] + wd * p64[sel]
        m64[sel] = b1 * m64[sel] + (1 - b1) * gi
        v64[sel] = b2 * v64[sel] + (1 - b2) * gi * gi
        denom = np.sqrt(v64[sel]) / np.sqrt(1 - b2**t) + eps
        p64[sel] -= lr / (1 - b1**t) * m64[sel] / denom
    np.testing.assert_allclose(params, p64, rtol=RTOL, atol=ATOL)
    for r in (0, 3):  # never listed: untouched
        np.testing.assert_array_equal(
            params[r * C : r * C + C], start[r * C : r * C + C]
        )
    np.testing.assert_allclose(m, m64, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("where", ["dense", "row"])
def test_nonfinite_gradient_changes_nothing(where):
    rng = np.random.default_rng(3)
    V, C = 5, 2
    params = rng.standard_normal(V * C + 4).astype(np.float32)
    grads = rng.standard_normal(params.size).astype(np.float32)
    m, v = np.full_like(params, 0.1), np.full_like(params, 0.2)
    grads[V * C + 1 if where == "dense" else 3 * C] = (
        np.nan if where == "dense" else np.inf
    )
    rs = rowset(V)
    mark(rs, [3, 1])
    saved = [a.copy() for a in (params, grads, m, v, *rs)]
    with pytest.raises(FloatingPointError):
        _core.adam_step(
            params, grads, m, v, V, C, rs, 1e-2, 0.9, 0.99, 1e-8, 0.0, 1.0, 1
        )
    for new, old in zip((params, grads, m, v, *rs), saved, strict=True):
        np.testing.assert_array_equal(new, old)


def test_row_out_of_range_rejected():
    V, C = 4, 2
    params = np.ones(V * C + 3, np.float32)
    grads, m, v = np.ones_like(params), np.zeros_like(params), np.zeros_like(params)
    mask, rows, count = rowset(V)
    rows[0], count[0] = V + 2, 1
    with pytest.raises(ValueError):
        _core.adam_step(
            params,
            grads,
            m,
            v,
            V,
            C,
            (mask, rows, count),
            1e-2,
            0.9,
            0.99,
            1e-8,
            0.0,
            0.0,
            1,
        )
    assert (params == 1).all() and (grads == 1).all()
