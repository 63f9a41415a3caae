"""GRU4Rec, Caser and BERT4Rec train like their PyTorch twins (torch_twins.py).

Dropout off, full softmax + 0.5 * skip-aware InfoNCE: one step of
model._train_step gives every parameter the gradient torch's autograd gives,
and ten Adam steps with clipping follow torch's loss curve to the same weights.
The twins see the very batch the model built (recorded from _make_batch), so
BERT4Rec's masks are the ones of each step. Then behaviour shared by the
models: batch independence and padding never recommended.
"""

import numpy as np
import pytest

import nfcl
from nfcl import _core

N_ITEMS, MAX_LEN = 30, 8
STEP = {
    "loss": "full",
    "clip": 1.0,
    "lr": 1e-2,
    "w": 0.5,
    "tau": 0.1,
    "variant": 0,
    "n_neg": 0,
    "weight_decay": 0.0,
}
BUILD = {
    "gru4rec": lambda **kw: nfcl.GRU4Rec(dim=12, hidden=10, layers=2, **kw),
    "caser": lambda **kw: nfcl.Caser(dim=12, window=3, n_h=4, n_v=2, **kw),
    "bert4rec": lambda **kw: nfcl.BERT4Rec(dim=12, heads=2, layers=2, ffn=16, **kw),
    "sasrec": lambda **kw: nfcl.SASRec(dim=12, heads=2, layers=1, ffn=16, **kw),
}
TRAINED = ("gru4rec", "caser", "bert4rec")  # SASRec: test_sasrec_parity.py


def build(kind, seed=1, n_items=N_ITEMS):
    return BUILD[kind](n_items=n_items, max_len=MAX_LEN, dropout=0.0, seed=seed)


def make_rows(rng, B=10):
    """Training rows (B, MAX_LEN+1), right-padded, the first one full (so
    _train_step crops no column); about a third of the plays skipped."""
    S = MAX_LEN + 1
    items = np.zeros((B, S), np.int32)
    skips = np.zeros((B, S), np.uint8)
    for b in range(B):
        n = S if b == 0 else int(rng.integers(3, S + 1))
        items[b, :n] = rng.integers(1, N_ITEMS, n)
        skips[b, :n] = rng.random(n) < 0.35
    return items, skips


def randomize(model, rng, std=0.3):
    """Weights far from init, so every gradient is well away from zero."""
    model.params[:] = rng.normal(0.0, std, model.params.size)
    model.item_emb[0] = 0.0
    for name, w in model.weights.items():
        if name.endswith(("ln1_w", "ln2_w")):
            w += 1.0


def record_batches(model, monkeypatch):
    """Wrap model._make_batch; the returned list gets a copy of each batch."""
    seen, make = [], model._make_batch

    def recorded(items_ext, skips, step):
        batch = make(items_ext, skips, step)
        seen.append({k: None if v is None else v.copy() for k, v in batch.items()})
        return batch

    monkeypatch.setattr(model, "_make_batch", recorded)
    return seen


def torch_losses(tw, tm, batch, n_items, tau):
    """(next-item loss, InfoNCE) of the twin on one recorded batch."""
    tq = tm(tw.torch.from_numpy(batch["inputs"]).long())
    emb = tm.item_emb.weight
    targets = tw.torch.from_numpy(batch["targets"]).long()
    rec = tw.full_softmax_loss(tq, emb[:n_items], targets)  # no [MASK] row
    items, skips, pos = batch["cl_items"], batch["cl_skips"], batch["cl_pos"]
    if pos is None:
        pos = tw.skip_rule_positives(items, skips)
    return rec, tw.infonce_given(tq, emb, items, skips, pos, tau)


@pytest.fixture
def tw():
    """The torch twins module (skips the test without torch)."""
    pytest.importorskip("torch")
    import torch_twins

    return torch_twins


@pytest.mark.parametrize("kind", TRAINED)
def test_one_step_every_gradient_matches_torch(kind, tw, monkeypatch):
    rng = np.random.default_rng(len(kind))
    model = build(kind)
    randomize(model, rng)
    items, skips = make_rows(rng)
    batches = record_batches(model, monkeypatch)

    # the gradient Adam would get: _train_step with adam_step replaced
    got = {}

    def no_update(params, grads, *args):
        got["grads"] = grads.copy()
        return 1.0

    monkeypatch.setattr(_core, "adam_step", no_update)
    model._init_optimizer()
    before = model.params.copy()
    out = model._train_step(items, skips, **STEP)
    np.testing.assert_array_equal(model.params, before)
    assert len(batches) == 1 and out["anchors"] > 0

    tm = tw.twin_of(model)
    rec, cl = torch_losses(tw, tm, batches[0], model.n_items, STEP["tau"])
    (rec + STEP["w"] * cl).backward()
    assert out["rec"] == pytest.approx(rec.item(), rel=1e-5, abs=1e-6)
    assert out["cl"] == pytest.approx(cl.item(), rel=1e-5, abs=1e-6)

    named = tm.named_like_nfcl()
    assert len(named) == len(list(tm.parameters())) == len(model.weights)
    offsets = {name: off for name, _, off in model._layout}
    for name, param in named.items():
        off = offsets[name]
        ours = got["grads"][off : off + param.numel()].reshape(param.shape)
        expect = param.grad.numpy()
        scale = np.abs(expect).max()
        assert scale > 0, name
        np.testing.assert_allclose(
            ours,
            expect,
            rtol=1e-4,
            atol=2e-5 * scale,
            err_msg=f"{kind}: gradient of {name}",
        )


@pytest.mark.parametrize("kind", TRAINED)
def test_ten_adam_steps_follow_torch(kind, tw, monkeypatch):
    """Full softmax: every real row gets a gradient each step (BERT4Rec's [MASK]
    row too, every row has a mask), so the lazy Adam equals torch's dense one."""
    torch = tw.torch

    rng = np.random.default_rng(10 + len(kind))
    items, skips = make_rows(rng)
    model = build(kind, seed=2)
    tm = tw.twin_of(model)
    opt = torch.optim.Adam(tm.parameters(), lr=STEP["lr"], betas=(0.9, 0.999), eps=1e-8)
    batches = record_batches(model, monkeypatch)
    model._init_optimizer()

    ours, theirs, gnorms = [], [], []
    for _ in range(10):
        out = model._train_step(items, skips, **STEP)
        ours.append(out["loss"])
        opt.zero_grad()
        rec, cl = torch_losses(tw, tm, batches[-1], model.n_items, STEP["tau"])
        loss = rec + STEP["w"] * cl
        loss.backward()
        gnorms.append(torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0).item())
        opt.step()
        theirs.append(loss.item())

    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-6)
    if kind != "bert4rec":  # BERT4Rec's loss moves with each step's masks
        assert ours[-1] < 0.95 * ours[0]
    assert max(gnorms) > 1.0  # clipping took part
    for name, param in tm.named_like_nfcl().items():
        w = model.weights[name].reshape(param.shape)
        np.testing.assert_allclose(
            w,
            param.detach().numpy(),
            rtol=1e-4,
            atol=5e-5,
            err_msg=f"{kind}: {name} after 10 steps",
        )
    if kind == "bert4rec":  # a new cloze mask every step
        assert len({b["inputs"].tobytes() for b in batches}) > 5


# ---------------------------------------------------------------------------
# behaviour


def test_gru4rec_session_alone_equals_session_in_batch():
    rng = np.random.default_rng(20)
    model = build("gru4rec")
    randomize(model, rng)
    sessions = [rng.integers(1, N_ITEMS, n) for n in (5, 2, MAX_LEN + 3, 7, 1)]
    together = model.predict_vectors(sessions)
    assert np.abs(together[0] - together[1]).max() > 1e-3
    for i, s in enumerate(sessions):
        alone = model.predict_vectors(s)
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-6)
    # only the last max_len items count
    long = sessions[2]
    cut = model.predict_vectors(long[-MAX_LEN:])
    np.testing.assert_array_equal(cut[0], model.predict_vectors(long)[0])


def constant_prediction(model, target):
    """head_w = 0, head_b = 1: q = GELU(1) at every position, so scores are
    fixed. The padding row (and BERT4Rec's [MASK] row) then outscore every item,
    and ``target`` outscores every other item."""
    rng = np.random.default_rng(0)
    model.weights["head_w"][...] = 0.0
    model.weights["head_b"][...] = 1.0
    emb = model.item_emb
    emb[...] = rng.normal(0.0, 0.05, emb.shape)
    emb[target] = 1.0
    emb[0] = 10.0
    if emb.shape[0] > model.n_items:
        emb[model.n_items :] = 20.0


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec", "caser", "bert4rec"])
def test_padding_and_mask_rows_are_never_recommended_or_counted(kind):
    model = build(kind, n_items=12)
    target = 5
    constant_prediction(model, target)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 12, n) for n in (1, 4, MAX_LEN + 2)]

    every = model.recommend(seqs, k=11)
    for row in every:
        assert sorted(row.tolist()) == list(range(1, 12))
    assert (every[:, 0] == target).all()
    scores = model.score(seqs)
    assert scores.shape == (3, 12) and np.isneginf(scores[:, 0]).all()

    # the target ranks first: neither padding nor [MASK] counts as a candidate
    inputs, lengths = nfcl.models.as_prefixes(seqs, 12, MAX_LEN)
    ex = nfcl.sessions.Examples(
        inputs=inputs,
        lengths=lengths,
        targets=np.full(3, target, np.int32),
        target_skips=np.zeros(3, np.uint8),
        session=np.arange(3, dtype=np.int64),
    )
    metrics = model.evaluate(ex, n_neg=4)
    assert metrics["full:HR@1"] == 1.0 and metrics["sampled:HR@1"] == 1.0


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec", "caser", "bert4rec"])
def test_examples_wider_than_max_len_are_cut_like_lists(kind):
    model = build(kind)
    rng = np.random.default_rng(30)
    seqs = [rng.integers(1, N_ITEMS, n) for n in (3, MAX_LEN + 4, 2 * MAX_LEN)]
    inputs, lengths = nfcl.models.as_prefixes(seqs, N_ITEMS, None)
    ex = nfcl.sessions.Examples(
        inputs=inputs,
        lengths=lengths,
        targets=np.ones(3, np.int32),
        target_skips=np.zeros(3, np.uint8),
        session=np.arange(3, dtype=np.int64),
    )
    np.testing.assert_array_equal(
        model.predict_vectors(ex), model.predict_vectors(seqs)
    )
