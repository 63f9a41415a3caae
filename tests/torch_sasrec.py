"""A PyTorch twin of nfcl.SASRec and its losses: the test oracle.

Built from torch's own modules (nn.TransformerEncoderLayer, post-LN, ReLU) so
that a disagreement points at our C, not at a shared misunderstanding.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchSASRec(nn.Module):
    def __init__(self, cfg, causal=True):
        super().__init__()
        V, C, NH, L, T, Fw = (cfg[k] for k in ("n_items", "dim", "heads", "layers",
                                                "max_len", "ffn"))
        self.causal = causal
        self.item_emb = nn.Embedding(V, C, padding_idx=0)
        self.pos_emb = nn.Embedding(T, C)
        layer = nn.TransformerEncoderLayer(C, NH, Fw, dropout=0.0, activation="relu",
                                           batch_first=True, norm_first=False)
        self.enc = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
        self.head = nn.Linear(C, C)
        self.train()  # keeps torch off its inference fast path

    def forward(self, items):
        B, T = items.shape
        x = self.item_emb(items) + self.pos_emb.weight[:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if self.causal else None
        h = self.enc(x, mask=causal, src_key_padding_mask=items == 0)
        return F.gelu(self.head(h))

    def named_like_nfcl(self):
        """nfcl weight name -> torch parameter."""
        out = {"item_emb": self.item_emb.weight, "pos_emb": self.pos_emb.weight,
               "head_w": self.head.weight, "head_b": self.head.bias}
        for i, lay in enumerate(self.enc.layers):
            p = f"layer{i}."
            out.update({
                p + "attn_in_w": lay.self_attn.in_proj_weight,
                p + "attn_in_b": lay.self_attn.in_proj_bias,
                p + "attn_out_w": lay.self_attn.out_proj.weight,
                p + "attn_out_b": lay.self_attn.out_proj.bias,
                p + "ln1_w": lay.norm1.weight, p + "ln1_b": lay.norm1.bias,
                p + "ff1_w": lay.linear1.weight, p + "ff1_b": lay.linear1.bias,
                p + "ff2_w": lay.linear2.weight, p + "ff2_b": lay.linear2.bias,
                p + "ln2_w": lay.norm2.weight, p + "ln2_b": lay.norm2.bias,
            })
        return out

    def load_nfcl(self, weights):
        with torch.no_grad():
            for name, param in self.named_like_nfcl().items():
                param.copy_(torch.from_numpy(np.asarray(weights[name], np.float32)))


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


def infonce_ours(q, emb, items, skips, tau):
    """Same-session negatives, mean over anchors that have a negative.

    items, skips (B, T+1) numpy; q (B, T, C) torch."""
    B, T = q.shape[0], q.shape[1]
    losses = []
    for b in range(B):
        real = items[b] > 0
        neg = [j for j in range(T + 1) if real[j] and skips[b, j] == 1]
        if not neg:
            continue
        for t in range(T):
            if not real[t] or skips[b, t] == 1:
                continue
            later = [j for j in range(t + 1, T + 1) if real[j] and skips[b, j] == 0]
            if not later:
                continue
            keys = emb[[items[b, later[0]]] + [items[b, j] for j in neg]]
            logits = F.cosine_similarity(q[b, t][None], keys, eps=1e-12) / tau
            losses.append(-F.log_softmax(logits, 0)[0])
    if not losses:
        return q.sum() * 0.0
    return torch.stack(losses).mean()
