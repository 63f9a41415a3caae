"""Sequential recommenders whose forward, backward, losses and optimizer run in C.

Every model maps a right-padded session prefix ``items`` (B, T) to one
prediction vector per position, ``q`` (B, T, C), and scores item ``v`` at
position ``t`` as ``q[b, t] . item_emb[v]`` (the item table is shared between
input and output). Training adds, with weight ``w``, the skip-aware InfoNCE
term to the next-item loss; ``w = 0`` is the plain recommender.

Ids: ``n_items`` is the size of the id space, ``len(item_keys)``; id 0 is
padding and is never recommended, real items are ``1 .. n_items - 1``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time

import numpy as np
from tqdm.auto import tqdm

from . import _core
from .errors import InputError, NfclError
from .metrics import MetricAccumulator, sampled_candidates
from .sessions import Examples, Sessions, training_batches

log = logging.getLogger("nfcl")

FORMAT_VERSION = 1
CONTRASTIVE_VARIANTS = {"ours": 0, "reference": 1}
LOSSES = ("sampled", "full")


class TrainingError(NfclError, FloatingPointError):
    """Training produced a NaN or infinite value; the weights were not updated."""


def _derive_seed(seed: int, purpose: int, rank: int = 0) -> int:
    """A 64-bit seed for one purpose (init, dropout, sampling, shuffling);
    ``rank`` > 0 gives a data-parallel process its own."""
    key = [seed, purpose] if rank == 0 else [seed, purpose, rank]
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class _Buffers:
    """Work arrays reused across calls, grown on demand; NumPy owns them."""

    def __init__(self):
        self._arrays = {}

    def get(self, name: str, n: int, dtype=np.float32) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.size < n:
            a = np.empty(max(n, 1), dtype=dtype)
            self._arrays[name] = a
        return a[:n]


def _count_anchors(items, skips, pos, tau, variant) -> int:
    """Rows (B,T) that enter the contrastive mean, by the kernel's own rule.

    The rule reads only items, skips and pos, so zero queries against a
    one-wide zero table count the anchors at a small cost (no gradient:
    scale 0, no rowset)."""
    B, S = items.shape
    if B == 0:
        return 0
    q = np.zeros((B, S - 1, 1), np.float32)
    table = np.zeros((int(items.max()) + 1, 1), np.float32)
    _, n = _core.infonce(q, table, items, skips, tau, variant, 0.0, np.zeros_like(q),
                         table, None, pos)
    return int(n)


def _check_int(name, value, low=1, high=2**31 - 1):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not low <= value <= high):
        raise InputError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return int(value)


def as_prefixes(sequences, n_items: int, max_len: int | None) -> tuple:
    """sequences -> (inputs (N, T) int32 right-padded, lengths (N,)).

    ``sequences`` is an Examples, one sequence (a 1-D array or a list of
    ints) or a list of sequences; each is cut to its last ``max_len`` items
    (None: kept whole).

    Raises:
        InputError: no sequence, an empty or non-integer one, or ids
        outside 1..n_items-1.
    """
    if isinstance(sequences, Examples):
        inputs, lengths = sequences.inputs, sequences.lengths
        if inputs.size and (inputs.min() < 0 or inputs.max() >= n_items):
            raise InputError(f"examples: inputs hold ids outside 1..{n_items - 1}")
        if max_len is None or inputs.shape[1] <= max_len:
            return inputs, lengths
        sequences = [row[:n] for row, n in zip(inputs, lengths)]
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1:
        sequences = [sequences]
    elif isinstance(sequences, (list, tuple)) and sequences and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            for v in sequences):
        sequences = [np.asarray(sequences)]  # one flat sequence of ids
    if not hasattr(sequences, "__len__"):
        raise InputError(f"sequences must be a list of item-id sequences, got "
                         f"{type(sequences).__name__}")
    if len(sequences) == 0:
        raise InputError("no sequences given")
    rows = []
    for i, seq in enumerate(sequences):
        arr = np.asarray(seq)
        if arr.ndim != 1 or arr.size == 0:
            raise InputError(f"sequence {i} must be a non-empty 1-D list of item ids")
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"sequence {i} must hold integer item ids, got {arr.dtype}")
        if arr.min() < 1 or arr.max() >= n_items:
            raise InputError(f"sequence {i} holds ids outside 1..{n_items - 1}")
        rows.append(arr if max_len is None else arr[-max_len:])
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    inputs = np.zeros((len(rows), int(lengths.max())), dtype=np.int32)
    for i, r in enumerate(rows):
        inputs[i, :len(r)] = r
    return inputs, lengths


class SequentialRecommender:
    """What every encoder shares: weights, training, inference, persistence.

    A subclass names its encoder kind and builds the C config tuple from
    ``self.config``; everything else (losses, optimizer, evaluation) is here.
    """

    kind = ""

    # data-parallel hook (nfcl.distributed): None trains in this process alone
    _parallel = None

    def __init__(self, config: dict, item_keys=None):
        n_items = config["n_items"]
        if n_items < 2:
            raise InputError(f"n_items must be >= 2 (padding + one item), got {n_items}")
        dropout = config["dropout"]
        if isinstance(dropout, bool) or not (isinstance(dropout, (int, float))
                                             and 0.0 <= dropout < 1.0):
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        if item_keys is not None and len(item_keys) != n_items:
            raise InputError(f"item_keys has {len(item_keys)} names for n_items={n_items}")
        self.config = dict(config, dropout=float(dropout))
        try:
            self._layout = _core.enc_layout(self._cfg)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.item_keys = list(item_keys) if item_keys is not None else None
        n_params = self._layout[-1][2] + int(np.prod(self._layout[-1][1]))
        self.params = np.zeros(n_params, dtype=np.float32)
        _core.enc_init(self._cfg, self.params, _derive_seed(self.config["seed"], 0))
        self.weights = {name: self.params[off:off + int(np.prod(shape))].reshape(shape)
                        for name, shape, off in self._layout}
        self._buf = _Buffers()
        self._opt = None  # optimizer state, created by fit
        self.history = []

    # ------------------------------------------------------------------
    # configuration helpers

    @property
    def _cfg(self) -> tuple:
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        return self.config["n_items"]

    @property
    def dim(self) -> int:
        return self.config["dim"]

    @property
    def max_len(self) -> int:
        return self.config["max_len"]

    @property
    def item_emb(self) -> np.ndarray:
        """The tied item table (rows, dim), a view into the parameters."""
        return self.weights["item_emb"]

    @property
    def _out_emb(self) -> np.ndarray:
        """The rows that can be scored and recommended: ids 0..n_items-1."""
        return self.item_emb[:self.n_items]

    def get_weights(self) -> dict:
        """A copy of every named weight array."""
        return {k: v.copy() for k, v in self.weights.items()}

    def set_weights(self, weights: dict) -> None:
        """Overwrite named weights; names and shapes must match exactly."""
        for name, value in weights.items():
            if name not in self.weights:
                raise InputError(f"unknown weight {name!r}; known: {sorted(self.weights)}")
            value = np.asarray(value)
            if value.shape != self.weights[name].shape:
                raise InputError(f"weight {name!r} must have shape "
                                 f"{self.weights[name].shape}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise InputError(f"weight {name!r} holds NaN or infinite values")
        for name, value in weights.items():
            self.weights[name][...] = value

    # ------------------------------------------------------------------
    # forward and backward through the C encoder

    def _sizes(self, B: int, T: int) -> tuple:
        return _core.enc_sizes(self._cfg, B, T)

    def _forward(self, items: np.ndarray, train: bool, step: int) -> np.ndarray:
        """items (B, T) int32 -> q (B, T, C); keeps activations for _backward."""
        B, T = items.shape
        _, n_acts, _ = self._sizes(B, T)
        acts = self._buf.get("acts", n_acts)
        q = self._buf.get("q", B * T * self.dim).reshape(B, T, self.dim)
        _core.enc_forward(self._cfg, self.params, acts, items, q, self._dropout_seed,
                         step, train)
        return q

    @property
    def _dropout_seed(self) -> int:
        """Seed of the dropout masks. A mask is keyed by the element's place in
        the batch, so each data-parallel process draws its own: the same row
        slot on two processes would otherwise share one mask."""
        rank = 0 if self._parallel is None else self._parallel.rank
        return _derive_seed(self.config["seed"], 1, rank)

    def _backward(self, items, dq, step, grads, rowset) -> None:
        B, T = items.shape
        _, n_acts, n_scratch = self._sizes(B, T)
        _core.enc_backward(self._cfg, self.params, grads, self._buf.get("acts", n_acts),
                          self._buf.get("scratch", n_scratch), items, dq,
                          self._dropout_seed, step, True, rowset)

    # ------------------------------------------------------------------
    # training

    def _init_optimizer(self):
        V, n = self.item_emb.shape[0], self.params.size
        self._opt = dict(
            grads=np.zeros(n, np.float32), m=np.zeros(n, np.float32),
            v=np.zeros(n, np.float32), t=0,
            rowset=(np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64)),
            seen=np.zeros(V, np.uint8), epoch=0)

    def _make_batch(self, items_ext, skips, step) -> dict:
        """Training rows -> encoder inputs, targets and contrastive arrays.

        Next-item training: inputs (B,T) = rows[:, :-1], targets (B*T,) =
        rows[:, 1:]; the contrastive term sees the whole rows (B,T+1) and
        finds its anchors by the skip rule (pos None)."""
        T = items_ext.shape[1] - 1
        return dict(inputs=np.ascontiguousarray(items_ext[:, :T]),
                    targets=np.ascontiguousarray(items_ext[:, 1:]).reshape(-1),
                    cl_items=items_ext, cl_skips=skips, cl_pos=None)

    def _train_step(self, items_ext, skips, *, lr, w, tau, variant, loss, n_neg,
                    clip, weight_decay) -> dict:
        """One optimizer step on a batch of training rows (B, T+1).

        Data-parallel (``self._parallel`` set), every process holds the same
        batch; the hook has each process compute the gradient of its part of
        the rows and sums the parts, so every process takes the same step."""
        opt = self._opt
        step = opt["t"] + 1
        width = int((items_ext > 0).sum(axis=1).max())  # drop all-padding columns
        batch = self._make_batch(np.ascontiguousarray(items_ext[:, :width]),
                                 np.ascontiguousarray(skips[:, :width]), step)
        loss_args = dict(w=w, tau=tau, variant=variant, loss=loss, n_neg=n_neg)
        if self._parallel is None:
            out = self._gradients(batch, step, **loss_args)
        else:
            out = self._parallel.gradients(self, batch, step, **loss_args)

        # one Adam step on the gradient of the whole batch
        gnorm = self._guarded(step, "gradient", _core.adam_step, self.params, opt["grads"],
                              opt["m"], opt["v"], self.item_emb.shape[0], self.dim,
                              opt["rowset"], lr, 0.9, 0.999, 1e-8, weight_decay, clip, step)
        opt["t"] = step
        rec, cl = out["rec"], out["cl"]
        return dict(loss=rec + w * cl, rec=rec, cl=cl, anchors=out["anchors"], gnorm=gnorm)

    def _gradients(self, batch, step, *, w, tau, variant, loss, n_neg, part=None) -> dict:
        """Add the gradient of the batch's loss into opt["grads"], marking the
        touched item rows in opt["rowset"]; returns the mean losses and the
        number of contrastive anchors.

        ``part``, a dict with ``lo`` and ``hi``, takes only rows lo:hi of the
        batch and scales each loss by the part's share of the batch's mean,
        so the gradients of the parts sum to the batch's; the negatives are
        still drawn from the targets of the whole batch. Before any loss runs
        it gets the counts of rows with a target and of anchors (``n_rec``,
        ``anchors``: whole batch; ``n_rec_part``, ``anchors_part``) and
        ``shared``: the item rows every part touches (the candidates, a slice
        for the whole catalogue; none when the batch has no target). The
        returned losses are then the part's own means.
        """
        opt = self._opt
        V, C = self.n_items, self.dim
        inputs, targets = batch["inputs"], batch["targets"]
        items, skips, pos = batch["cl_items"], batch["cl_skips"], batch["cl_pos"]
        B, T = inputs.shape
        grads, rowset = opt["grads"], opt["rowset"]
        emb = self._out_emb
        demb = grads[:emb.size].reshape(emb.shape)

        # the next-item candidates, drawn from the targets of the whole batch
        if loss == "sampled":
            n_unique = np.unique(targets[targets > 0]).size
            n_draw = min(n_neg, V - 1 - n_unique)
            cand, tgt_idx = _core.sample_candidates(
                targets, V, n_draw, _derive_seed(self.config["seed"], 2), step,
                opt["seen"][:V])
        else:
            cand, tgt_idx = None, (targets - 1).astype(np.int32)

        # a part: its rows, and its share of each mean
        rec_scale, cl_scale = 1.0, w
        if part is not None:
            lo, hi = part["lo"], part["hi"]
            n_rec = int(np.count_nonzero(tgt_idx >= 0))
            tgt_idx = tgt_idx[lo * T:hi * T]
            part.update(n_rec=n_rec, n_rec_part=int(np.count_nonzero(tgt_idx >= 0)),
                        anchors=0, anchors_part=0,
                        shared=(np.empty(0, np.int32) if n_rec == 0 else
                                slice(1, V) if cand is None else cand))
            rec_scale = part["n_rec_part"] / n_rec if n_rec else 0.0
            if w > 0:
                part["anchors"] = _count_anchors(items, skips, pos, tau, variant)
                items, skips = items[lo:hi], skips[lo:hi]
                pos = None if pos is None else pos[lo:hi]
                part["anchors_part"] = _count_anchors(items, skips, pos, tau, variant)
                if part["anchors"]:
                    cl_scale = w * (part["anchors_part"] / part["anchors"])
            inputs, B = inputs[lo:hi], hi - lo
            if B == 0:
                return dict(rec=0.0, cl=0.0, anchors=0)

        # forward to the prediction vectors, then the next-item loss
        # (work arrays come from self._buf: fresh multi-MB arrays every step
        # made the allocator grow and trim its heap each step)
        q = self._forward(inputs, True, step)
        dq = self._buf.get("dq", q.size).reshape(q.shape)
        dq.fill(0.0)
        q2, dq2 = q.reshape(B * T, C), dq.reshape(B * T, C)
        # score only the rows that have a target (padding and, for BERT4Rec,
        # unmasked positions have none): their logits would be thrown away
        rows = np.flatnonzero(tgt_idx >= 0)
        if rows.size < tgt_idx.size:
            q_rows = np.take(q2, rows, axis=0,
                             out=self._buf.get("q_rows", rows.size * C).reshape(-1, C))
            dq_rows = self._buf.get("dq_rows", rows.size * C).reshape(-1, C)
            dq_rows.fill(0.0)
            rec = self._guarded(step, "next-item loss", _core.softmax_xent, q_rows, emb,
                                cand, np.ascontiguousarray(tgt_idx[rows]), rec_scale,
                                dq_rows, demb, rowset) if rows.size else 0.0
            dq2[rows] = dq_rows  # dq is still zero here; rows are distinct
        else:
            rec = self._guarded(step, "next-item loss", _core.softmax_xent, q2, emb, cand,
                                tgt_idx, rec_scale, dq2, demb, rowset)

        # the skip-aware contrastive term, weighted by w
        cl, n_anchors = 0.0, 0
        if w > 0:
            cl, n_anchors = self._guarded(
                step, "contrastive loss", _core.infonce, q, emb, items, skips, tau,
                variant, cl_scale, dq, demb, rowset, pos)

        # backward through the encoder
        self._backward(inputs, dq, step, grads, rowset)
        if part is not None and w > 0 and n_anchors != part["anchors_part"]:
            raise NfclError(f"step {step}: the contrastive term counted {n_anchors} "
                            f"anchors, the part's count was {part['anchors_part']}")
        return dict(rec=rec, cl=cl, anchors=n_anchors)

    def _guarded(self, step, term, kernel, *args):
        """Run a loss or optimizer kernel; a NaN or inf stops training cleanly.

        The kernels refuse non-finite values before writing, and Adam runs
        last, so the weights stay those of the previous step."""
        try:
            out = kernel(*args)
        except FloatingPointError:
            out = math.nan
        value = out[0] if isinstance(out, tuple) else out
        if not math.isfinite(value):
            self._clear_grads()
            raise TrainingError(f"step {step}: the {term} is NaN or infinite; training "
                                f"stopped, the weights are those after step {step - 1}")
        return out

    def _clear_grads(self):
        opt = self._opt
        opt["grads"][:] = 0
        mask, rows, count = opt["rowset"]
        mask[:] = 0
        count[0] = 0

    def fit(self, train: Sessions, valid: Examples | None = None, *, epochs=20,
            batch_size=64, lr=5e-3, w=0.5, tau=0.1, contrastive="ours",
            loss="sampled", n_neg=1000, clip=5.0, weight_decay=0.0,
            restore_best=True, eval_seed=0, progress=True, checkpoint=None,
            resume=False):
        """Train on the sessions of ``train`` (each a training sequence).

        Args:
            train: training sequences; ids must be < n_items.
            valid: optional validation examples, evaluated (sampled protocol,
                MRR@10) after every epoch; with ``restore_best`` the weights
                of the best epoch are kept at the end.
            w: weight of the skip-aware contrastive term (0 turns it off).
            tau: temperature of the contrastive term.
            contrastive: "ours" (same-session negatives, mean over anchors) or
                "reference" (the published code's behaviour, for ablation).
            loss: "sampled" (softmax over the batch's targets plus ``n_neg``
                uniform negatives, redrawn every batch) or "full".
            checkpoint: optional path; the training state is written there
                (atomically) after every epoch, see nfcl.checkpoint.
            resume: continue from ``checkpoint`` (same model, config, data and
                fit arguments); ``epochs`` more epochs are run.

        Returns:
            self. ``self.history`` gets one dict per epoch.

        Raises:
            InputError: bad arguments or data; TrainingError: NaN or inf.
        """
        self._check_fit_args(train, valid, epochs, batch_size, lr, w, tau, contrastive,
                             loss, n_neg, clip)
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)
                and weight_decay >= 0):
            raise InputError(f"weight_decay must be a finite number >= 0, got "
                             f"{weight_decay!r}")
        par = self._parallel  # data-parallel: the first process shows and writes
        root = par is None or par.rank == 0
        if par is not None:
            par.begin_fit(self, train, w=float(w), contrastive=contrastive, fit_args=dict(
                epochs=epochs, batch_size=batch_size, lr=lr, w=w, tau=tau,
                contrastive=contrastive, loss=loss, n_neg=n_neg, clip=clip,
                weight_decay=weight_decay, restore_best=restore_best, eval_seed=eval_seed,
                valid=None if valid is None else len(valid.targets), resume=resume))
        if self._opt is None:
            self._init_optimizer()
        variant = CONTRASTIVE_VARIANTS[contrastive]
        step_args = dict(lr=float(lr), w=float(w), tau=float(tau), variant=variant,
                         loss=loss, n_neg=int(n_neg), clip=float(clip),
                         weight_decay=float(weight_decay))
        best, best_params = -math.inf, None
        ckpt = self._checkpoint_open(train, checkpoint, resume,
                                     dict(step_args, batch_size=int(batch_size),
                                          eval_seed=eval_seed))
        if resume:
            best, best_params = ckpt.restore()
        shuffle_seed = _derive_seed(self.config["seed"], 3)
        # disable=None: tqdm draws only on a terminal, never into a log file
        bar = tqdm(total=epochs, desc=f"{type(self).__name__} w={w:g}",
                   disable=None if (progress and root) else True, leave=False)
        for _ in range(epochs):
            epoch = self._opt["epoch"]
            rng = np.random.default_rng([shuffle_seed, epoch])
            t0, sums, n_batches = time.perf_counter(), {}, 0
            for items_ext, skips in training_batches(train, batch_size, self.max_len, rng):
                try:
                    out = self._train_step(items_ext, skips, **step_args)
                except BaseException:  # Ctrl-C or an error between two kernels
                    self._clear_grads()
                    raise
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
            row = {k: v / max(n_batches, 1) for k, v in sums.items()}
            row.update(epoch=epoch + 1, seconds=time.perf_counter() - t0)
            if valid is not None and len(valid.targets):
                score = self.evaluate(valid, protocols=("sampled",), seed=eval_seed)
                row["valid:MRR@10"] = score["sampled:MRR@10"]
                if row["valid:MRR@10"] > best:
                    best, best_params = row["valid:MRR@10"], self.params.copy()
            self._opt["epoch"] = epoch + 1
            self.history.append(row)
            if ckpt is not None and root:
                ckpt.save(best, best_params)
            log.info("epoch %d %s", epoch + 1,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
            bar.update(1)
        bar.close()
        if restore_best and best_params is not None:
            self.params[:] = best_params
        return self

    def _checkpoint_open(self, train, path, resume, fit_args):
        """A checkpoint writer/reader for fit, or None without a path."""
        if path is None:
            if resume:
                raise InputError("resume=True needs a checkpoint path")
            return None
        from .checkpoint import FitCheckpoint
        return FitCheckpoint(self, path, train.fingerprint(), fit_args)

    def _check_fit_args(self, train, valid, epochs, batch_size, lr, w, tau,
                        contrastive, loss, n_neg, clip):
        if not isinstance(train, Sessions):
            raise InputError(f"train must be nfcl.sessions.Sessions, got {type(train).__name__}")
        if train.n_sessions == 0:
            raise InputError("train holds no sessions")
        if not np.any(train.lengths >= 2):
            raise InputError("train has no session with 2 or more items, so there is no "
                             "next-item target to learn")
        if train.items.size and int(train.items.max()) >= self.n_items:
            raise InputError(f"train holds item id {int(train.items.max())}, but the model "
                             f"has n_items={self.n_items}")
        if valid is not None and not isinstance(valid, Examples):
            raise InputError(f"valid must be nfcl.sessions.Examples, got {type(valid).__name__}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        for name, value, low in (("lr", lr, 0.0), ("tau", tau, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
                raise InputError(f"{name} must be a positive finite number, got {value!r}")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise InputError(f"w must be a finite number >= 0, got {w!r}")
        if not (isinstance(clip, (int, float)) and math.isfinite(clip)):
            raise InputError(f"clip must be a finite number (<= 0 disables it), got {clip!r}")
        if contrastive not in CONTRASTIVE_VARIANTS:
            raise InputError(f"contrastive must be one of {list(CONTRASTIVE_VARIANTS)}, "
                             f"got {contrastive!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        if isinstance(n_neg, bool) or not isinstance(n_neg, (int, np.integer)) or n_neg < 0:
            raise InputError(f"n_neg must be an int >= 0, got {n_neg!r}")

    # ------------------------------------------------------------------
    # inference

    def _as_prefixes(self, sequences) -> tuple:
        """sequences -> (inputs (N, T) int32 right-padded, lengths (N,))."""
        return as_prefixes(sequences, self.n_items, self.max_len)

    def predict_vectors(self, sequences, batch_size=256) -> np.ndarray:
        """The prediction vector after the last item of each sequence, (N, C)."""
        batch_size = _check_int("batch_size", batch_size)
        return self._prefix_vectors(*self._as_prefixes(sequences), batch_size)

    def _prefix_vectors(self, inputs, lengths, batch_size=256) -> np.ndarray:
        out = np.empty((len(lengths), self.dim), dtype=np.float32)
        for s in range(0, len(lengths), batch_size):
            lens = lengths[s:s + batch_size]
            T = int(lens.max())
            items = np.ascontiguousarray(inputs[s:s + batch_size, :T], dtype=np.int32)
            q = self._forward(items, False, 0)
            out[s:s + len(lens)] = q[np.arange(len(lens)), lens - 1]
        if not np.isfinite(out).all():
            raise FloatingPointError("the prediction vectors hold NaN or inf: the model's "
                                     "weights are not finite (see set_weights / load)")
        return out

    def score(self, sequences) -> np.ndarray:
        """Scores of every item after each sequence, (N, n_items); padding is -inf."""
        q = self.predict_vectors(sequences)
        emb = self._out_emb
        if not np.isfinite(emb).all():
            raise FloatingPointError("the item table holds NaN or inf values")
        scores = q @ emb.T
        scores[:, 0] = -np.inf
        return scores

    def recommend(self, sequences, k=10, exclude_seen=False) -> np.ndarray:
        """Top-k item ids after each sequence, (N, k), best first."""
        inputs, lengths = self._as_prefixes(sequences)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < self.n_items:
            raise InputError(f"k must be an int in 1..{self.n_items - 1}, got {k!r}")
        q = self._prefix_vectors(inputs, lengths)
        exclude = None
        if exclude_seen:  # every item of the sequence, not only the last max_len
            exclude, _ = as_prefixes(sequences, self.n_items, None)
            if int(k) > self.n_items - 1 - exclude.shape[1]:
                raise InputError(f"k={k} is more than the items left after excluding "
                                 "the seen ones")
        ids, _ = _core.topk(q, self._out_emb, int(k),
                            None if exclude is None else np.ascontiguousarray(exclude))
        return ids

    def evaluate(self, examples: Examples, protocols=("full", "sampled"), seed=0,
                 n_neg=1000, ks=(1, 5, 10, 20)) -> dict:
        """Rank each example's target; HR@k, MRR@10, NDCG@10, Skip-MRR@10.

        "full" ranks against every item; "sampled" against the targets of the
        example's group of 64 plus ``n_neg`` items drawn as a pure function of
        (seed, example order), so two models see the same candidates. Ties
        count at their expected rank.
        """
        if not isinstance(examples, Examples):
            raise InputError(f"examples must be nfcl.sessions.Examples, got "
                             f"{type(examples).__name__}")
        if len(examples.targets) == 0:
            raise InputError("no examples to evaluate")
        if examples.targets.min() < 1 or examples.targets.max() >= self.n_items:
            raise InputError(f"targets hold ids outside 1..{self.n_items - 1}")
        if isinstance(protocols, str):
            protocols = (protocols,)
        seed = _check_int("seed", seed, 0, 2**63 - 1)
        n_neg = _check_int("n_neg", n_neg, 0)
        for protocol in protocols:
            MetricAccumulator(protocol, ks=ks)  # refuses a bad protocol type or ks
            if protocol not in ("full", "sampled"):
                raise InputError(f"unknown protocol {protocol!r}; use 'full' or 'sampled'")
        if self._parallel is not None:
            return self._parallel.evaluate(self, examples, protocols, seed, n_neg, ks)
        q = self.predict_vectors(examples)
        targets = np.ascontiguousarray(examples.targets, dtype=np.int32)
        out = {}
        for protocol in protocols:
            acc = MetricAccumulator(protocol, ks=ks)
            for start, stop, greater, ties in self._rank_counts(q, targets, protocol,
                                                                seed, n_neg):
                acc.update(greater, ties, examples.target_skips[start:stop])
            out.update(acc.result())
        return out

    def _rank_counts(self, q, targets, protocol, seed, n_neg, first=0) -> list:
        """The targets' rank counts in the pieces the metrics add up, as
        [(start, stop, greater, ties)]: one piece for "full", one per group of
        64 examples for "sampled". ``first``, a multiple of 64, is the place of
        q[0] among all the examples, so a slice gets its groups' candidates.

        Shapes: q (N,C), targets (N,) int32."""
        if protocol == "full":
            greater, ties = _core.rank_targets(q, self._out_emb, None, targets)
            return [(0, len(targets), greater, ties)]
        if first % 64:
            raise InputError(f"first={first} must be a multiple of the group size 64")
        out = []
        for start, stop, cand in sampled_candidates(targets, self.n_items, seed, n_neg=n_neg,
                                                    group=64, first_group=first // 64):
            greater, ties = _core.rank_targets(np.ascontiguousarray(q[start:stop]),
                                               self._out_emb, cand, targets[start:stop])
            out.append((start, stop, greater, ties))
        return out

    # ------------------------------------------------------------------
    # persistence

    def save(self, path) -> None:
        """Write weights, config and item keys to ``path`` (.npz) atomically."""
        header = dict(format_version=FORMAT_VERSION, model=type(self).__name__,
                      config=self.config, item_keys=self.item_keys,
                      sha256=hashlib.sha256(self.params.tobytes()).hexdigest())
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".nfcl-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, params=self.params, header=np.array(json.dumps(header)))
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what users expect
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path):
        """Read a model written by ``save``; raises NfclError if it is not valid."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                params = np.array(z["params"])
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except FileNotFoundError:
            raise
        except Exception as e:  # zip, npy, JSON and key errors alike
            raise NfclError(f"{path}: not a readable nfcl model file "
                            f"({type(e).__name__}: {e})") from None
        if header.get("format_version") != FORMAT_VERSION:
            raise NfclError(f"{path}: format version {header.get('format_version')} is not "
                            f"supported (this nfcl reads {FORMAT_VERSION})")
        if header.get("model") != cls.__name__:
            raise NfclError(f"{path}: holds a {header.get('model')}, not a {cls.__name__}")
        if hashlib.sha256(params.tobytes()).hexdigest() != header.get("sha256"):
            raise NfclError(f"{path}: checksum mismatch, the file is corrupted")
        try:
            model = cls(item_keys=header.get("item_keys"), **header["config"])
        except (TypeError, KeyError, InputError) as e:
            raise NfclError(f"{path}: the stored config is not valid ({e})") from None
        if params.shape != model.params.shape or params.dtype != np.float32:
            raise NfclError(f"{path}: parameter buffer does not match the config")
        if not np.all(np.isfinite(params)):
            raise NfclError(f"{path}: the weights hold NaN or infinite values")
        model.params[:] = params
        return model


class SASRec(SequentialRecommender):
    """SASRec: a causal Transformer encoder over the session (Kang & McAuley 2018).

    Post-LN layers with ReLU feed-forward (as the paper's authors used), learned
    position embeddings, prediction head ``q = GELU(W h + b)`` scored against the
    tied item table.

    Args:
        n_items: size of the id space (padding id 0 included).
        dim, heads, layers, ffn: widths; ``ffn`` defaults to ``dim``.
        max_len: longest input prefix T.
        dropout: dropout rate at every dropout site.
        seed: seeds initialisation, dropout, negative sampling and shuffling.
        item_keys: optional names of the ids (``item_keys[0]`` is padding).

    Raises:
        InputError: on an impossible configuration.
    """

    causal = 1

    def __init__(self, n_items, dim=128, heads=8, layers=2, max_len=20, dropout=0.2,
                 ffn=None, seed=0, item_keys=None):
        ffn = dim if ffn is None else ffn
        if _check_int("dim", dim) % _check_int("heads", heads):
            raise InputError(f"heads={heads} must divide dim={dim}")
        config = dict(n_items=_check_int("n_items", n_items, 2), dim=_check_int("dim", dim),
                      heads=_check_int("heads", heads),
                      layers=_check_int("layers", layers, 1, 32),
                      max_len=_check_int("max_len", max_len), ffn=_check_int("ffn", ffn),
                      dropout=dropout, seed=_check_int("seed", seed, 0))
        super().__init__(config, item_keys)

    @property
    def _cfg(self) -> tuple:
        c = self.config
        return ("transformer", c["n_items"], c["dim"], c["heads"], c["layers"],
                c["max_len"], c["ffn"], c["dropout"], self.causal)


class GRU4Rec(SequentialRecommender):
    """GRU4Rec: a recurrent encoder over the session (Hidasi et al. 2016).

    Item embedding, ``layers`` GRU layers (PyTorch's gate layout), dropout,
    and the same prediction head and tied scoring as SASRec. The hidden state
    is read at every position, so the skip-aware term attaches per position.
    """

    def __init__(self, n_items, dim=128, hidden=128, layers=1, max_len=20, dropout=0.2,
                 seed=0, item_keys=None):
        config = dict(n_items=_check_int("n_items", n_items, 2), dim=_check_int("dim", dim),
                      hidden=_check_int("hidden", hidden),
                      layers=_check_int("layers", layers, 1, 32),
                      max_len=_check_int("max_len", max_len), dropout=dropout,
                      seed=_check_int("seed", seed, 0))
        super().__init__(config, item_keys)

    @property
    def _cfg(self) -> tuple:
        c = self.config
        return ("gru", c["n_items"], c["dim"], c["hidden"], c["layers"], c["max_len"],
                c["dropout"])


class Caser(SequentialRecommender):
    """Caser: horizontal and vertical convolutions over recent items (Tang & Wang 2018).

    One prediction vector per position t from the window of the ``window``
    items ending at t (left-padded), so training uses every position and the
    skip-aware term attaches per position (the original trains on sliding
    windows with a few targets each, and adds a user embedding we do not have).
    """

    def __init__(self, n_items, dim=128, window=5, n_h=16, n_v=4, max_len=20,
                 dropout=0.2, seed=0, item_keys=None):
        config = dict(n_items=_check_int("n_items", n_items, 2), dim=_check_int("dim", dim),
                      window=_check_int("window", window, 1, 32), n_h=_check_int("n_h", n_h),
                      n_v=_check_int("n_v", n_v), max_len=_check_int("max_len", max_len),
                      dropout=dropout, seed=_check_int("seed", seed, 0))
        super().__init__(config, item_keys)

    @property
    def _cfg(self) -> tuple:
        c = self.config
        return ("caser", c["n_items"], c["dim"], c["window"], c["n_h"], c["n_v"],
                c["max_len"], c["dropout"])


class BERT4Rec(SASRec):
    """BERT4Rec: a bidirectional Transformer trained by cloze (Sun et al. 2019).

    The item table has one extra row, the [MASK] token (id ``n_items``),
    which is never scored or recommended. Each training row is either a cloze
    row (about ``mask_prob`` of its real positions replaced by [MASK], at
    least one) or, with probability ``append_prob``, a next-item row whose
    only [MASK] is appended after its last item; prediction reads the output
    at such an appended [MASK].

    The skip-aware term must not see its own answer in a bidirectional
    encoder: with ``anchors="masked"`` (default) the anchors are the masked
    positions whose item was not skipped, the positive is the masked item and
    the negatives the session's skipped items. ``anchors="all"`` is the
    published code's rule (every non-skipped position, positive = the next
    non-skipped item, which the encoder can see in its input).
    """

    causal = 0
    ANCHOR_RULES = ("masked", "all")

    def __init__(self, n_items, dim=128, heads=8, layers=2, max_len=20, dropout=0.2,
                 ffn=None, seed=0, item_keys=None, mask_prob=0.15, append_prob=0.5,
                 anchors="masked"):
        if not (isinstance(mask_prob, (int, float)) and 0 < mask_prob < 1):
            raise InputError(f"mask_prob must be in (0, 1), got {mask_prob!r}")
        if not (isinstance(append_prob, (int, float)) and 0 <= append_prob <= 1):
            raise InputError(f"append_prob must be in [0, 1], got {append_prob!r}")
        if anchors not in self.ANCHOR_RULES:
            raise InputError(f"anchors must be one of {list(self.ANCHOR_RULES)}, "
                             f"got {anchors!r}")
        self.cloze = dict(mask_prob=float(mask_prob), append_prob=float(append_prob),
                          anchors=anchors)
        super().__init__(n_items, dim=dim, heads=heads, layers=layers, max_len=max_len,
                         dropout=dropout, ffn=ffn, seed=seed, item_keys=item_keys)
        self.config.update(self.cloze)

    @property
    def mask_id(self) -> int:
        return self.n_items

    @property
    def _cfg(self) -> tuple:
        c = self.config
        return ("transformer", c["n_items"] + 1, c["dim"], c["heads"], c["layers"],
                c["max_len"], c["ffn"], c["dropout"], self.causal)

    def _make_batch(self, items_ext, skips, step) -> dict:
        """Cloze and appended-[MASK] rows from the training rows (B, T+1)."""
        B = items_ext.shape[0]
        T = min(self.max_len, items_ext.shape[1])
        rng = np.random.default_rng([_derive_seed(self.config["seed"], 4), step])
        lengths = (items_ext > 0).sum(axis=1)
        orig = np.zeros((B, T + 1), np.int32)
        oskip = np.zeros((B, T + 1), np.uint8)
        inputs = np.zeros((B, T), np.int32)
        masked = np.zeros((B, T), bool)
        append = rng.random(B) < self.cloze["append_prob"]
        for b in range(B):
            n = int(lengths[b])
            start = max(0, n - T)  # the last T items fit
            m = n - start
            orig[b, :m] = items_ext[b, start:n]
            oskip[b, :m] = skips[b, start:n]
            inputs[b, :m] = orig[b, :m]
            if append[b]:
                masked[b, m - 1] = True  # the last item becomes the appended [MASK]
            else:
                k = max(1, int(round(self.cloze["mask_prob"] * m)))
                masked[b, rng.choice(m, size=k, replace=False)] = True
        inputs[masked] = self.mask_id
        targets = np.where(masked, orig[:, :T], 0).astype(np.int32).reshape(-1)
        pos = None
        if self.cloze["anchors"] == "masked":
            keep = masked & (oskip[:, :T] == 0) & (orig[:, :T] > 0)
            pos = np.where(keep, np.arange(T)[None, :], -1).astype(np.int32)
        return dict(inputs=inputs, targets=targets, cl_items=orig, cl_skips=oskip,
                    cl_pos=pos)

    def _prefix_vectors(self, inputs, lengths, batch_size=256) -> np.ndarray:
        """Append [MASK] after the last max_len-1 items and read it there."""
        N = len(lengths)
        keep = np.minimum(lengths, self.max_len - 1)
        rows = np.zeros((N, self.max_len), np.int32)
        for i in range(N):
            rows[i, :keep[i]] = inputs[i, lengths[i] - keep[i]:lengths[i]]
            rows[i, keep[i]] = self.mask_id
        return super()._prefix_vectors(rows, (keep + 1).astype(np.int32), batch_size)
