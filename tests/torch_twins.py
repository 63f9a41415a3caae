"""PyTorch twins of the nfcl encoders and of their losses: the test oracles.

Each twin is built from torch's own modules (nn.TransformerEncoderLayer,
nn.GRU, nn.Conv2d), so a disagreement points at our C, not at a shared
misunderstanding. ``named_like_nfcl()`` maps every nfcl weight name to the
torch parameter holding it; nfcl arrays and torch parameters hold their values
in the same order, only the shapes may differ (Caser's convolutions).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _NfclNamed(nn.Module):
    """Weight exchange with nfcl by name."""

    def named_like_nfcl(self):
        raise NotImplementedError

    def load_nfcl(self, weights):
        with torch.no_grad():
            for name, param in self.named_like_nfcl().items():
                value = np.asarray(weights[name], np.float32).reshape(param.shape)
                param.copy_(torch.from_numpy(value))


class TorchSASRec(_NfclNamed):
    """SASRec (causal) or BERT4Rec's encoder (causal=False); post-LN, ReLU."""

    def __init__(self, cfg, causal=True):
        super().__init__()
        V, C, NH, L, T, Fw = (
            cfg[k] for k in ("n_items", "dim", "heads", "layers", "max_len", "ffn")
        )
        self.causal = causal
        self.item_emb = nn.Embedding(V, C, padding_idx=0)
        self.pos_emb = nn.Embedding(T, C)
        layer = nn.TransformerEncoderLayer(
            C,
            NH,
            Fw,
            dropout=0.0,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.enc = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
        self.head = nn.Linear(C, C)
        self.train()  # keeps torch off its inference fast path

    def forward(self, items):
        T = items.shape[1]
        x = self.item_emb(items) + self.pos_emb.weight[:T]
        causal = None
        if self.causal:
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        h = self.enc(x, mask=causal, src_key_padding_mask=items == 0)
        return F.gelu(self.head(h))

    def named_like_nfcl(self):
        out = {
            "item_emb": self.item_emb.weight,
            "pos_emb": self.pos_emb.weight,
            "head_w": self.head.weight,
            "head_b": self.head.bias,
        }
        for i, lay in enumerate(self.enc.layers):
            p = f"layer{i}."
            out.update(
                {
                    p + "attn_in_w": lay.self_attn.in_proj_weight,
                    p + "attn_in_b": lay.self_attn.in_proj_bias,
                    p + "attn_out_w": lay.self_attn.out_proj.weight,
                    p + "attn_out_b": lay.self_attn.out_proj.bias,
                    p + "ln1_w": lay.norm1.weight,
                    p + "ln1_b": lay.norm1.bias,
                    p + "ff1_w": lay.linear1.weight,
                    p + "ff1_b": lay.linear1.bias,
                    p + "ff2_w": lay.linear2.weight,
                    p + "ff2_b": lay.linear2.bias,
                    p + "ln2_w": lay.norm2.weight,
                    p + "ln2_b": lay.norm2.bias,
                }
            )
        return out


class TorchGRU4Rec(_NfclNamed):
    """Embedding, nn.GRU, GELU head. torch's GRU also steps over padding, but
    with right padding that only changes padding positions, which no loss reads
    (nfcl carries the state there instead)."""

    def __init__(self, cfg):
        super().__init__()
        V, C, H, L = (cfg[k] for k in ("n_items", "dim", "hidden", "layers"))
        self.item_emb = nn.Embedding(V, C, padding_idx=0)
        self.gru = nn.GRU(C, H, L, batch_first=True)
        self.head = nn.Linear(H, C)

    def forward(self, items):
        out, _ = self.gru(self.item_emb(items))
        return F.gelu(self.head(out))

    def named_like_nfcl(self):
        out = {
            "item_emb": self.item_emb.weight,
            "head_w": self.head.weight,
            "head_b": self.head.bias,
        }
        for l in range(self.gru.num_layers):
            for ours, theirs in (
                ("w_ih", "weight_ih"),
                ("w_hh", "weight_hh"),
                ("b_ih", "bias_ih"),
                ("b_hh", "bias_hh"),
            ):
                out[f"gru{l}.{ours}"] = getattr(self.gru, f"{theirs}_l{l}")
        return out


class TorchCaser(_NfclNamed):
    """RecBole's Caser layers applied to the window of ``window`` items ending
    at every position (left-padded with zero vectors), no user embedding."""

    def __init__(self, cfg):
        super().__init__()
        V, C, W, n_h, n_v = (cfg[k] for k in ("n_items", "dim", "window", "n_h", "n_v"))
        self.W, self.C = W, C
        self.item_emb = nn.Embedding(V, C, padding_idx=0)
        self.conv_v = nn.Conv2d(1, n_v, (W, 1))
        self.conv_h = nn.ModuleList(nn.Conv2d(1, n_h, (h, C)) for h in range(1, W + 1))
        self.fc = nn.Linear(n_v * C + n_h * W, C)
        self.head = nn.Linear(C, C)

    def forward(self, items):
        B, T = items.shape
        W, C = self.W, self.C
        pad = F.pad(self.item_emb(items), (0, 0, W - 1, 0))  # (B,T+W-1,C)
        win = pad.unfold(1, W, 1).permute(0, 1, 3, 2).reshape(B * T, 1, W, C)
        feats = [self.conv_v(win).view(B * T, -1)]  # (B*T, n_v*C)
        for conv in self.conv_h:
            h = F.relu(conv(win).squeeze(3))  # (B*T, n_h, W-h+1)
            feats.append(F.max_pool1d(h, h.size(2)).squeeze(2))
        z = F.relu(self.fc(torch.cat(feats, 1)))
        return F.gelu(self.head(z)).view(B, T, C)

    def named_like_nfcl(self):
        out = {
            "item_emb": self.item_emb.weight,
            "conv_v_w": self.conv_v.weight,
            "conv_v_b": self.conv_v.bias,
            "fc_w": self.fc.weight,
            "fc_b": self.fc.bias,
            "head_w": self.head.weight,
            "head_b": self.head.bias,
        }
        for h, conv in enumerate(self.conv_h, start=1):
            out[f"conv_h{h}_w"] = conv.weight
            out[f"conv_h{h}_b"] = conv.bias
        return out


def twin_of(model):
    """The float32 torch twin of an nfcl model, holding a copy of its weights."""
    kind = model._cfg[0]
    if kind == "gru":
        tm = TorchGRU4Rec(model.config)
    elif kind == "caser":
        tm = TorchCaser(model.config)
    else:  # BERT4Rec's table has the extra [MASK] row
        cfg = dict(model.config, n_items=model.item_emb.shape[0])
        tm = TorchSASRec(cfg, causal=bool(model.causal))
    tm.load_nfcl(model.weights)
    return tm


# ---------------------------------------------------------------------------
# losses


def full_softmax_loss(q, emb, targets):
    """Mean cross-entropy over non-padding targets, against items 1..V-1."""
    logits = q.reshape(-1, q.shape[-1]) @ emb[1:].T
    t = targets.reshape(-1)
    keep = t > 0
    return F.cross_entropy(logits[keep], t[keep] - 1)


def sampled_softmax_loss(q, emb, cand, tgt_idx):
    logits = q.reshape(-1, q.shape[-1]) @ emb[cand].T
    keep = tgt_idx >= 0
    return F.cross_entropy(logits[keep], tgt_idx[keep])


def skip_rule_positives(items, skips):
    """pos (B,T): for each kept (real, non-skipped) t < T the first kept
    position after it, else -1. items, skips (B,T+1) numpy."""
    B, T = items.shape[0], items.shape[1] - 1
    kept = (items > 0) & (skips == 0)
    pos = np.full((B, T), -1, np.int32)
    for b in range(B):
        later = -1
        for j in range(T, -1, -1):
            if j < T and kept[b, j]:
                pos[b, j] = later
            later = j if kept[b, j] else later
    return pos


def infonce_given(q, emb, items, skips, pos, tau):
    """InfoNCE with the caller's positives, one anchor at a time.

    Row (b, t) with pos[b, t] >= 0 is an anchor whose positive is the item at
    slot pos[b, t]; its negatives are every skipped item of session b (slots
    0..T, even the positive's own slot); cosine / tau; mean over the anchors
    that have a negative. q (B,T,C) torch; items, skips (B,T+1), pos (B,T) numpy.
    """
    losses = []
    for b, t in zip(*np.nonzero(pos >= 0)):
        negs = [v for v, s in zip(items[b], skips[b]) if v > 0 and s == 1]
        if not negs:
            continue
        keys = emb[[int(items[b, pos[b, t]])] + [int(v) for v in negs]]
        logits = F.cosine_similarity(q[b, t][None], keys, eps=1e-12) / tau
        losses.append(-F.log_softmax(logits, 0)[0])
    if not losses:
        return q.sum() * 0.0
    return torch.stack(losses).mean()


def infonce_ours(q, emb, items, skips, tau):
    """Variant 0 with the skip rule's anchors (same-session negatives)."""
    return infonce_given(q, emb, items, skips, skip_rule_positives(items, skips), tau)
