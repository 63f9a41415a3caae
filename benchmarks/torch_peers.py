"""PyTorch peers of the nfcl models for the training benchmark.

Same architectures (nn.TransformerEncoderLayer post-LN ReLU, nn.GRU, Caser's
convolutions as conv1d + max-pool over the whole session), same losses
(sampled softmax over the same candidate count, or full softmax; the
skip-aware InfoNCE term vectorised as one batched matmul), torch.optim.Adam
(fused) + global-norm clipping. This is the strongest honest eager setting
we found: the loss only touches real positions, a causal Transformer uses
SDPA's causal kernel instead of a mask tensor, and a large item table can be
an nn.Embedding(sparse=True) updated by SparseAdam (lazy, like nfcl).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# encoders; each is embed (eager, may be sparse) + body (may be compiled)


class Transformer(nn.Module):
    """SASRec (causal) and BERT4Rec (bidirectional) encoder."""

    def __init__(self, rows, dim, heads, layers, max_len, ffn, dropout, causal, sparse):
        super().__init__()
        self.causal = causal
        self.item_emb = nn.Embedding(rows, dim, padding_idx=0, sparse=sparse)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ffn, dropout, activation="relu", batch_first=True
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, dim)
        self._causal_masks = {}

    def body(self, x, items):
        """x (B,T,C) item embeddings -> q (B,T,C)."""
        T = x.shape[1]
        x = self.drop(x + self.pos_emb.weight[:T])
        if self.causal:
            # right padding: real queries never see padding keys, so the
            # causal hint alone gives the same q at real positions
            mask = self._causal_masks.get(T)
            if mask is None:
                mask = nn.Transformer.generate_square_subsequent_mask(T)
                self._causal_masks[T] = mask
            h = self.enc(x, mask=mask, is_causal=True)
        else:
            h = self.enc(x, src_key_padding_mask=items == 0)
        return F.gelu(self.head(h))


class GRU(nn.Module):
    """GRU4Rec encoder: embedding, dropout, nn.GRU, dropout, GELU head."""

    def __init__(self, rows, dim, hidden, layers, dropout, sparse):
        super().__init__()
        self.item_emb = nn.Embedding(rows, dim, padding_idx=0, sparse=sparse)
        self.drop = nn.Dropout(dropout)
        inner = dropout if layers > 1 else 0.0
        self.gru = nn.GRU(dim, hidden, layers, batch_first=True, dropout=inner)
        self.head = nn.Linear(hidden, dim)

    def body(self, x, items):
        h, _ = self.gru(self.drop(x))
        return F.gelu(self.head(self.drop(h)))


class Caser(nn.Module):
    """Caser per position: the window of W items ending at t, every position.

    A horizontal filter of height h over every window equals one conv1d over
    the left-padded session followed by a max-pool of width W-h+1; the
    vertical filters are a weighted sum of the W shifted sequences.
    """

    def __init__(self, rows, dim, window, n_h, n_v, dropout, sparse):
        super().__init__()
        self.W, self.n_v = window, n_v
        self.item_emb = nn.Embedding(rows, dim, padding_idx=0, sparse=sparse)
        self.conv_v = nn.Linear(window, n_v)
        self.conv_h = nn.ModuleList(
            nn.Conv1d(dim, n_h, h) for h in range(1, window + 1)
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n_v * dim + n_h * window, dim)
        self.head = nn.Linear(dim, dim)

    def body(self, x, items):
        B, T, C = x.shape
        W = self.W
        pad = F.pad(x, (0, 0, W - 1, 0))  # (B, T+W-1, C)

        # vertical: v[b,t,f,c] = sum_i w[f,i] pad[b,t+i,c], flattened f-major
        win = pad.unfold(1, W, 1)  # (B,T,C,W)
        v = self.conv_v(win).transpose(2, 3).reshape(B, T, self.n_v * C)

        # horizontal: conv over the session, ReLU, max over the window's spans
        seq = pad.transpose(1, 2)  # (B,C,T+W-1)
        feats = [v]
        for h, conv in enumerate(self.conv_h, start=1):
            y = F.relu(conv(seq))  # (B,n_h,T+W-h)
            feats.append(F.max_pool1d(y, W - h + 1, 1).transpose(1, 2))
        z = F.relu(self.fc(self.drop(torch.cat(feats, dim=2))))
        return F.gelu(self.head(z))


# ---------------------------------------------------------------------------
# losses


def sample_candidates(targets, n_items, n_neg, gen):
    """The batch's unique targets + n_neg distinct uniform negatives.

    Shapes: targets (N,) int64 with 0 = padding. Returns cand (K,) and the
    index of each real target in cand (N,), -100 at padding.
    """
    real = targets > 0
    uniq, inv = torch.unique(targets[real], return_inverse=True)
    tgt_idx = torch.full_like(targets, -100)
    tgt_idx[real] = inv
    n_neg = min(n_neg, n_items - 1 - len(uniq))
    seen = torch.zeros(n_items, dtype=torch.bool)
    seen[uniq] = True
    neg = torch.empty(0, dtype=torch.int64)
    while len(neg) < n_neg:
        draw = torch.randint(1, n_items, (n_neg + n_neg // 2 + 16,), generator=gen)
        draw = torch.unique(torch.cat([neg, draw]))
        neg = draw[~seen[draw]]
    neg = neg[torch.randperm(len(neg), generator=gen)[:n_neg]]
    return torch.cat([uniq, neg]), tgt_idx


def next_item_loss(q, emb, targets, n_items, n_neg, gen):
    """Softmax cross-entropy at the real positions; n_neg None = full softmax."""
    flat = targets.reshape(-1)
    real = flat > 0
    qr = q.reshape(-1, q.shape[-1])[real]
    if n_neg is None:
        logits = qr @ emb.weight[1:n_items].T
        return F.cross_entropy(logits, flat[real] - 1)
    cand, tgt_idx = sample_candidates(flat, n_items, n_neg, gen)
    logits = qr @ emb(cand).T
    return F.cross_entropy(logits, tgt_idx[real])


def next_kept_positions(items, skips):
    """pos (B,T): the first later kept position of each kept t < T, else -1.

    Shapes: items, skips (B,T+1) int64 / bool."""
    _B, T1 = items.shape
    kept = (items > 0) & ~skips
    idx = torch.where(kept, torch.arange(T1), T1)
    after = idx.flip(1).cummin(1).values.flip(1)  # min of idx[t:]
    nxt = after[:, 1:]  # min of idx[t+1:], t = 0..T-1
    return torch.where(kept[:, :-1] & (nxt < T1), nxt, -1)


def infonce(q, emb, items, skips, pos, tau):
    """Mean over anchors of -log softmax(positive | session's skipped items).

    Cosine similarity / tau; anchors are rows with pos >= 0 whose session has
    at least one skipped item. Shapes: q (B,T,C); items, skips (B,T+1);
    pos (B,T) index into 0..T or -1.
    """
    neg = (items > 0) & skips  # (B,T+1)
    anchor = (pos >= 0) & neg.any(1, keepdim=True)
    if not bool(anchor.any()):
        return q.sum() * 0.0
    keys = F.normalize(emb(items), dim=-1, eps=1e-12)  # (B,T+1,C)
    sim = torch.bmm(F.normalize(q, dim=-1, eps=1e-12), keys.transpose(1, 2)) / tau
    pos_logit = sim.gather(2, pos.clamp(min=0).unsqueeze(-1))  # (B,T,1)
    neg_logits = sim.masked_fill(~neg.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(torch.cat([pos_logit, neg_logits], dim=2), dim=2)
    return (lse - pos_logit.squeeze(-1))[anchor].mean()


def cloze(items, skips, T, mask_id, mask_prob, append_prob, gen):
    """BERT4Rec rows as nfcl builds them, vectorised.

    Keeps the last T items of each row; a row is an appended-[MASK] row with
    probability append_prob (its last item masked), else about mask_prob of
    its items are masked (at least one). Returns inputs (B,T), targets (B,T)
    (0 where not masked), orig items and skips (B,T+1), pos (B,T).
    """
    B, T1 = items.shape
    n = (items > 0).sum(1)
    start = (n - T).clamp(min=0)
    m = n - start
    cols = torch.arange(T + 1)
    real = cols[None, :] < m[:, None]
    src = (start[:, None] + cols[None, :]).clamp(max=T1 - 1)
    orig = torch.where(real, items.gather(1, src), 0)
    oskip = real & skips.gather(1, src)

    # which positions become [MASK]
    append = torch.rand(B, generator=gen) < append_prob
    k = torch.where(append, 1, (mask_prob * m).round().long().clamp(min=1))
    r = torch.rand(B, T, generator=gen).masked_fill(~real[:, :T], 2.0)
    r = torch.where(append[:, None], -(cols[None, :T] == (m - 1)[:, None]).float(), r)
    rank = r.argsort(1).argsort(1)
    masked = rank < k[:, None]
    inputs = torch.where(masked, mask_id, orig[:, :T])
    targets = torch.where(masked, orig[:, :T], 0)
    keep = masked & ~oskip[:, :T] & real[:, :T]
    pos = torch.where(keep, cols[None, :T], -1)
    return inputs, targets, orig, oskip, pos


# ---------------------------------------------------------------------------
# the training step


class Trainer:
    """One torch model, its losses and optimizer; ``step`` mirrors nfcl's.

    Args:
        kind: "sasrec", "bert4rec", "gru4rec" or "caser".
        hp: dict with n_items, dim, heads, layers, max_len, dropout, w, tau,
            n_neg (None = full softmax), lr, clip.
        sparse: nn.Embedding(sparse=True) + SparseAdam for the item table.
        compile: torch.compile the encoder body (the item lookup stays eager).
    """

    def __init__(self, kind, hp, sparse=False, compile=False, seed=0):
        torch.manual_seed(seed)
        self.kind, self.hp, self.sparse = kind, hp, sparse
        V, C, T, p = hp["n_items"], hp["dim"], hp["max_len"], hp["dropout"]
        if kind in ("sasrec", "bert4rec"):
            rows = V + 1 if kind == "bert4rec" else V
            self.model = Transformer(
                rows, C, hp["heads"], hp["layers"], T, C, p, kind == "sasrec", sparse
            )
        elif kind == "gru4rec":
            self.model = GRU(V, C, C, 1, p, sparse)
        elif kind == "caser":
            self.model = Caser(V, C, 5, 16, 4, p, sparse)
        else:
            raise ValueError(f"unknown model kind {kind!r}")
        with torch.no_grad():  # nfcl's item init: the logits start on one scale
            nn.init.trunc_normal_(self.model.item_emb.weight, std=0.02)
            self.model.item_emb.weight[0].zero_()
        self.model.train()
        self.body = torch.compile(self.model.body) if compile else self.model.body
        self.gen = torch.Generator().manual_seed(seed)

        # optimizer: fused Adam, SparseAdam for a sparse item table
        emb = self.model.item_emb.weight
        dense = [p for p in self.model.parameters() if p is not emb]
        self.dense = dense if sparse else dense + [emb]
        self.table = [emb] if sparse else []
        self.opts = [torch.optim.Adam(self.dense, lr=hp["lr"], fused=True)]
        if sparse:
            self.opts.append(torch.optim.SparseAdam(self.table, lr=hp["lr"]))

    def _clip(self):
        """clip_grad_norm_ over the dense grads and the sparse table's rows."""
        grads = [p.grad for p in self.dense if p.grad is not None]
        sq = torch.stack(torch._foreach_norm(grads)).square().sum()
        for p in self.table:
            p.grad = p.grad.coalesce()
            sq = sq + p.grad._values().square().sum()
        coef = (self.hp["clip"] / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, coef)
        for p in self.table:
            p.grad._values().mul_(coef)

    def loss(self, items_np, skips_np):
        """The training loss of one batch of rows (B,T+1) as nfcl defines it."""
        hp = self.hp
        width = int((items_np > 0).sum(1).max())  # drop all-padding columns
        items = torch.from_numpy(items_np[:, :width]).long()
        skips = torch.from_numpy(skips_np[:, :width]).bool()
        emb = self.model.item_emb
        V = hp["n_items"]
        if self.kind == "bert4rec":
            T = min(hp["max_len"], width)
            inputs, targets, items, skips, pos = cloze(
                items, skips, T, V, 0.15, 0.5, self.gen
            )
        else:
            inputs, targets = items[:, :-1], items[:, 1:]
            pos = next_kept_positions(items, skips) if hp["w"] > 0 else None
        q = self.body(emb(inputs), inputs)
        loss = next_item_loss(q, emb, targets, V, hp["n_neg"], self.gen)
        if hp["w"] > 0:
            loss = loss + hp["w"] * infonce(q, emb, items, skips, pos, hp["tau"])
        return loss

    def step(self, items_np, skips_np):
        """fwd + bwd + clip + Adam on one batch; returns the loss."""
        loss = self.loss(items_np, skips_np)
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip()
        for opt in self.opts:
            opt.step()
        return float(loss.detach())
