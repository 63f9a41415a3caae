"""nfcl.SASRec against a PyTorch twin: outputs, every gradient, 10 Adam steps."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nfcl  # noqa: E402
from nfcl import _core  # noqa: E402
from nfcl.sessions import Sessions  # noqa: E402
from torch_twins import (TorchSASRec, full_softmax_loss, infonce_ours,  # noqa: E402
                          sampled_softmax_loss)

CFG = dict(n_items=40, dim=16, heads=4, layers=2, max_len=8, ffn=24)


def make_batch(rng, B=5, T=8, V=40):
    """Right-padded sessions (B, T+1) with skips; lengths 3..T+1."""
    items = np.zeros((B, T + 1), np.int32)
    skips = np.zeros((B, T + 1), np.uint8)
    for b in range(B):
        n = int(rng.integers(3, T + 2))
        items[b, :n] = rng.integers(1, V, n)
        skips[b, :n] = rng.random(n) < 0.35
    return items, skips


def twin(model):
    tm = TorchSASRec(CFG)
    tm.load_nfcl(model.weights)
    return tm


def test_forward_and_every_gradient_match_torch():
    rng = np.random.default_rng(0)
    model = nfcl.SASRec(dropout=0.0, seed=1, **CFG)
    items, skips = make_batch(rng)
    B, T = items.shape[0], items.shape[1] - 1
    inputs = np.ascontiguousarray(items[:, :T])
    targets = np.ascontiguousarray(items[:, 1:]).reshape(-1)

    # nfcl: forward, sampled softmax + 0.5 * InfoNCE, backward
    model._init_optimizer()
    grads, rowset = model._opt["grads"], model._opt["rowset"]
    V, C = CFG["n_items"], CFG["dim"]
    demb = grads[:V * C].reshape(V, C)
    q = model._forward(inputs, False, 1).copy()
    dq = np.zeros_like(q)
    cand, tgt_idx = _core.sample_candidates(targets, V, 10, 7, 1, model._opt["seen"])
    rec = _core.softmax_xent(q.reshape(-1, C), model.item_emb, cand, tgt_idx, 1.0,
                             dq.reshape(-1, C), demb, rowset)
    cl, n_anchors = _core.infonce(q, model.item_emb, items, skips, 0.1, 0, 0.5, dq,
                                  demb, rowset)
    model._backward(inputs, dq, 1, grads, rowset)
    assert n_anchors > 0

    # torch: the same weights, the same candidates
    tm = twin(model)
    tq = tm(torch.from_numpy(inputs).long())
    t_rec = sampled_softmax_loss(tq, tm.item_emb.weight, torch.from_numpy(cand).long(),
                                 torch.from_numpy(tgt_idx).long())
    t_cl = infonce_ours(tq, tm.item_emb.weight, items, skips, 0.1)
    (t_rec + 0.5 * t_cl).backward()

    np.testing.assert_allclose(q, tq.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert rec == pytest.approx(t_rec.item(), rel=1e-5, abs=1e-6)
    assert cl == pytest.approx(t_cl.item(), rel=1e-5, abs=1e-6)
    offsets = {name: off for name, _, off in model._layout}
    for name, param in tm.named_like_nfcl().items():
        g = grads[offsets[name]:offsets[name] + param.numel()].reshape(param.shape)
        expect = param.grad.numpy()
        scale = np.abs(expect).max() + 1e-12
        np.testing.assert_allclose(g, expect, rtol=1e-3, atol=2e-5 * scale,
                                   err_msg=f"gradient of {name}")


def sessions_from(items, skips):
    rows = [(r[r > 0], s[r > 0]) for r, s in zip(items, skips)]
    offsets = np.cumsum([0] + [len(r) for r, _ in rows]).astype(np.int64)
    E = int(offsets[-1])
    V = CFG["n_items"]
    return Sessions(items=np.concatenate([r for r, _ in rows]).astype(np.int32),
                    skips=np.concatenate([s for _, s in rows]).astype(np.uint8),
                    times=np.arange(E, dtype=np.float64), offsets=offsets,
                    users=np.zeros(len(rows), np.int32),
                    item_keys=["<pad>"] + [f"i{i}" for i in range(1, V)],
                    user_keys=["u"], dropped={}, source="test")


def test_ten_adam_steps_follow_torch_loss_curve():
    """Full softmax + contrastive term, clipping active: every row is touched each
    step, so the lazy embedding Adam equals torch's dense Adam."""
    rng = np.random.default_rng(3)
    items, skips = make_batch(rng, B=6)
    train = sessions_from(items, skips)
    model = nfcl.SASRec(dropout=0.0, seed=2, **CFG)
    tm = twin(model)
    opt = torch.optim.Adam(tm.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    model._init_optimizer()

    # one batch holding every session, in a fixed order, for both
    T = items.shape[1] - 1
    ours, theirs = [], []
    for _ in range(10):
        out = model._train_step(items, skips, lr=1e-2, w=0.5, tau=0.1, variant=0,
                                loss="full", n_neg=0, clip=1.0, weight_decay=0.0)
        ours.append(out["loss"])
        opt.zero_grad()
        tq = tm(torch.from_numpy(items[:, :T]).long())
        loss = (full_softmax_loss(tq, tm.item_emb.weight,
                                  torch.from_numpy(items[:, 1:]).long())
                + 0.5 * infonce_ours(tq, tm.item_emb.weight, items, skips, 0.1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        opt.step()
        theirs.append(loss.item())
    assert train.n_sessions == 6
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-5)
    assert ours[-1] < ours[0]
    for name, param in tm.named_like_nfcl().items():
        np.testing.assert_allclose(model.weights[name], param.detach().numpy(),
                                   rtol=1e-3, atol=1e-4, err_msg=name)
