"""Non-neural baselines, evaluated exactly like the neural models.

* MostPopular scores every item by its play count in the training sessions,
  whatever the input sequence; it is the floor any model must clear.
* ItemKNN scores item j after a sequence s_1..s_L by
  ``sum_p sim(s_p, j) / (L - p + 1)``: the last item counts fully, the one
  before it half, and so on. ``sim`` is the cosine of item co-occurrence in
  training sessions, ``c_ij / sqrt(n_i n_j)``, where c_ij counts the
  sessions holding i and j (within ``window`` positions of each other, if
  given) and n_i the sessions holding i; only the ``neighbours`` most similar
  items of each item are kept.

Both share the models' interface (fit, score, recommend, evaluate) and
protocol: sampled candidates come from `metrics.sampled_candidates`, and the
counts of candidates scoring above and equal to the target are taken with
the rule of `_core.rank_targets` and fed to the same `MetricAccumulator`, so
tied scores (common here) count at their expected rank.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import InputError, NfclError
from .metrics import MetricAccumulator, sampled_candidates
from .models import _check_int, as_prefixes
from .sessions import Examples, Sessions

__all__ = ["ItemKNN", "MostPopular"]

log = logging.getLogger("nfcl")

PROTOCOLS = ("full", "sampled")
SCORE_BUDGET = 1 << 22  # dense scores held at once while ranking, in floats
PAIR_BUDGET = 1 << 22  # item pairs expanded at once while counting


class _Baseline:
    """Inputs, ranking and evaluation shared by the baselines.

    A subclass fills its statistics in ``fit`` and implements
    ``_scores_at(inputs, lengths, cols)``: float32 (N, K) scores of the item
    ids ``cols`` (K,) after each right-padded prefix.
    """

    def __init__(self, n_items, seed=0, item_keys=None, **config):
        n_items = _check_int("n_items", n_items, 2)
        if item_keys is not None and len(item_keys) != n_items:
            raise InputError(
                f"item_keys has {len(item_keys)} names for n_items={n_items}"
            )
        self.config = dict(n_items=n_items, seed=_check_int("seed", seed, 0), **config)
        self.item_keys = list(item_keys) if item_keys is not None else None
        self.fitted = False

    @property
    def n_items(self) -> int:
        return self.config["n_items"]

    # ------------------------------------------------------------------
    # training

    def fit(self, train: Sessions, valid: Examples | None = None, **ignored):
        """Count the statistics of ``train``; ``valid`` and the training
        options of the neural models are accepted and ignored.

        Returns:
            self.

        Raises:
            InputError: train is not a non-empty Sessions or holds ids >= n_items.
        """
        if not isinstance(train, Sessions):
            raise InputError(
                f"train must be nfcl.sessions.Sessions, got {type(train).__name__}"
            )
        if train.n_sessions == 0:
            raise InputError("train holds no sessions")
        if train.items.size and int(train.items.max()) >= self.n_items:
            raise InputError(
                f"train holds item id {int(train.items.max())}, but the model "
                f"has n_items={self.n_items}"
            )
        if ignored:
            log.debug("%s.fit ignores %s", type(self).__name__, sorted(ignored))
        self._fit(train)
        self.fitted = True
        return self

    def _fit(self, train: Sessions) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------
    # inputs

    def _prefixes(self, sequences) -> tuple:
        """Checked (inputs (N, T) int32, lengths (N,)); sequences kept whole."""
        if not self.fitted:
            raise NfclError(f"{type(self).__name__} is not fitted; call fit first")
        if not isinstance(sequences, (Examples, np.ndarray, list, tuple)):
            raise InputError(
                "sequences must be Examples, an array or a list of arrays of item "
                f"ids, got {type(sequences).__name__}"
            )
        inputs, lengths = as_prefixes(sequences, self.n_items, None)
        if isinstance(sequences, Examples):
            # Examples are checked for dtypes only: check the ids here
            T = inputs.shape[1]
            if len(lengths) == 0:
                raise InputError("no sequences given")
            if lengths.min() < 1 or lengths.max() > T:
                raise InputError(
                    f"Examples.lengths must lie in 1..{T} (no empty input)"
                )
            used = inputs[np.arange(T)[None, :] < lengths[:, None]]
            if used.min() < 1 or used.max() >= self.n_items:
                raise InputError(
                    f"Examples.inputs hold ids outside 1..{self.n_items - 1}"
                )
        return inputs, lengths

    def _batch_rows(self, n_cols: int) -> int:
        return max(1, SCORE_BUDGET // max(n_cols, 1))

    # ------------------------------------------------------------------
    # inference

    def score(self, sequences) -> np.ndarray:
        """Scores of every item after each sequence, (N, n_items); padding is -inf."""
        inputs, lengths = self._prefixes(sequences)
        scores = self._scores_at(inputs, lengths, np.arange(self.n_items))
        scores[:, 0] = -np.inf
        return scores

    def recommend(self, sequences, k=10, exclude_seen=False) -> np.ndarray:
        """Top-k item ids after each sequence, (N, k) int32, best first.

        Ties go to the lower id; padding (id 0) is never returned.

        Raises:
            InputError: bad sequences or k, or exclude_seen leaves fewer than
            k items.
        """
        inputs, lengths = self._prefixes(sequences)
        V = self.n_items
        if (
            isinstance(k, bool)
            or not isinstance(k, (int, np.integer))
            or not 1 <= k < V
        ):
            raise InputError(f"k must be an int in 1..{V - 1}, got {k!r}")
        k = int(k)
        out = np.empty((len(lengths), k), dtype=np.int32)
        items = np.arange(1, V)
        step = self._batch_rows(V)
        for s in range(0, len(lengths), step):
            rows = slice(s, s + step)
            scores = self._scores_at(inputs[rows], lengths[rows], items)
            if exclude_seen:
                seen = inputs[rows] - 1  # padding maps to -1, masked below
                r = np.broadcast_to(np.arange(len(seen))[:, None], seen.shape)
                scores[r[seen >= 0], seen[seen >= 0]] = -np.inf
            out[rows] = _topk(scores, k) + 1
        return out

    def _ranks(self, inputs, lengths, targets, cand) -> tuple:
        """Candidates scoring above and equal to each target, the target excluded.

        The rule of `_core.rank_targets`; cand None means every item 1..V-1.

        Shapes:
            inputs (N, T), lengths, targets (N,), cand (K,) or None. Returns
            (greater, ties) int64 (N,).
        """
        if cand is None:
            scores = self._scores_at(inputs, lengths, np.arange(1, self.n_items))
            at = targets - 1
            in_cand = np.ones(len(targets), dtype=bool)
        else:
            # targets outside the candidates get extra columns after them
            K = len(cand)
            extra = np.setdiff1d(targets, cand)
            cols = np.concatenate([cand, extra])
            order = np.argsort(cols, kind="stable")
            at = order[np.searchsorted(cols[order], targets)]
            in_cand = at < K
            scores = self._scores_at(inputs, lengths, cols)
        own = scores[np.arange(len(targets)), at][:, None]
        scores = scores[:, : len(cand)] if cand is not None else scores
        greater = np.count_nonzero(scores > own, axis=1).astype(np.int64)
        ties = np.count_nonzero(scores == own, axis=1) - in_cand
        return greater, ties.astype(np.int64)

    def evaluate(
        self,
        examples: Examples,
        protocols=PROTOCOLS,
        seed=0,
        n_neg=1000,
        ks=(1, 5, 10, 20),
    ) -> dict:
        """Rank each example's target; HR@k, MRR@10, NDCG@10, Skip-MRR@10.

        Same protocols, candidate sets and tie rule as
        `SequentialRecommender.evaluate`: "full" ranks against every item,
        "sampled" against the group's targets plus ``n_neg`` items drawn by
        `sampled_candidates(targets, n_items, seed, n_neg)`.

        Raises:
            InputError: not Examples, no example, ids out of range, or an
            unknown protocol.
        """
        if not isinstance(examples, Examples):
            raise InputError(
                f"examples must be nfcl.sessions.Examples, got {type(examples).__name__}"
            )
        if len(examples.targets) == 0:
            raise InputError("no examples to evaluate")
        if examples.targets.min() < 1 or examples.targets.max() >= self.n_items:
            raise InputError(f"targets hold ids outside 1..{self.n_items - 1}")
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        for protocol in protocols:
            if protocol not in PROTOCOLS:
                raise InputError(
                    f"unknown protocol {protocol!r}; use 'full' or 'sampled'"
                )
        inputs, lengths = self._prefixes(examples)
        targets = np.ascontiguousarray(examples.targets, dtype=np.int32)
        skips = examples.target_skips

        out = {}
        for protocol in protocols:
            acc = MetricAccumulator(protocol, ks=ks)
            if protocol == "full":
                step = self._batch_rows(self.n_items)
                parts = [
                    (s, min(s + step, len(targets)), None)
                    for s in range(0, len(targets), step)
                ]
            else:
                parts = sampled_candidates(targets, self.n_items, seed, n_neg=n_neg)
            for start, stop, cand in parts:
                rows = slice(start, stop)
                greater, ties = self._ranks(
                    inputs[rows], lengths[rows], targets[rows], cand
                )
                acc.update(greater, ties, skips[rows])
            out.update(acc.result())
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first, ties to the
    lower index.

    Shapes:
        scores float (N, K), k <= K. Returns int64 (N, k).

    Raises:
        InputError: a row has fewer than k finite scores (all excluded).
    """
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (N, 1)
    if np.isneginf(kth).any():
        raise InputError(f"exclude_seen leaves fewer than k={k} items to recommend")

    # everything above the k-th score, then the lowest-index ties to fill k
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= room))
    cols = np.nonzero(take)[1].reshape(len(scores), k)  # ascending per row
    best = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


class MostPopular(_Baseline):
    """Score = training play count of the item, the same for every sequence.

    Every position of every training session counts, skipped plays too.
    Items never played score 0 and tie with each other (expected rank). The
    seed is accepted for a uniform interface; the model is deterministic.

    Args:
        n_items: size of the id space (padding id 0 included).
        seed: unused.
        item_keys: optional names of the ids (``item_keys[0]`` is padding).
    """

    def _fit(self, train: Sessions) -> None:
        counts = np.bincount(train.items, minlength=self.n_items)
        self.counts = counts.astype(np.int64)  # (V,)
        self._scores = counts.astype(np.float32)  # (V,), what score() returns
        self._sorted_all = np.sort(self._scores[1:])

    def _scores_at(self, inputs, lengths, cols) -> np.ndarray:
        return np.repeat(self._scores[cols][None, :], len(lengths), axis=0)

    def _ranks(self, inputs, lengths, targets, cand) -> tuple:
        # one score vector for all rows: count with binary search, same rule
        if cand is None:
            ranked, in_cand = self._sorted_all, np.ones(len(targets), dtype=bool)
        else:
            ranked, in_cand = np.sort(self._scores[cand]), np.isin(targets, cand)
        own = self._scores[targets]
        above_or_equal = np.searchsorted(ranked, own, side="left")
        below_or_equal = np.searchsorted(ranked, own, side="right")
        greater = len(ranked) - below_or_equal
        ties = below_or_equal - above_or_equal - in_cand
        return greater.astype(np.int64), ties.astype(np.int64)


class ItemKNN(_Baseline):
    """Item co-occurrence neighbours, weighted towards recent items.

    See the module docstring for the score. Pairs are counted once per
    session (a session is a set of items, or of item pairs within
    ``window`` positions), in both directions, never an item with itself;
    similarity ties keep the lower id. The similarity table is sparse (CSR):
    at most ``neighbours`` entries per item; while counting, memory grows
    with the number of distinct co-occurring pairs, never with n_items^2.

    Args:
        n_items: size of the id space (padding id 0 included).
        neighbours: similar items kept per item.
        window: count only pairs at most this many positions apart (None:
            the whole session).
        seed: unused (the model is deterministic).
        item_keys: optional names of the ids (``item_keys[0]`` is padding).

    Attributes (after fit):
        indptr int64 (V+1,), indices int32 (nnz,), data float32 (nnz,): row i
        lists sim(i, j) for its kept neighbours j, most similar first.
        n_sessions int64 (V,): training sessions holding each item.
    """

    def __init__(self, n_items, neighbours=100, window=None, seed=0, item_keys=None):
        if window is not None:
            window = _check_int("window", window, 1)
        super().__init__(
            n_items,
            seed,
            item_keys,
            neighbours=_check_int("neighbours", neighbours, 1),
            window=window,
        )

    def _fit(self, train: Sessions) -> None:
        V = self.n_items
        codes, counts, n_sess = _cooccurrence(train, V, self.config["window"])
        self.n_sessions = n_sess
        i, j = codes // V, codes % V
        sim = counts / np.sqrt(n_sess[i].astype(np.float64) * n_sess[j])

        # keep the most similar `neighbours` of each row, lower id on ties
        order = np.lexsort((j, -sim, i))
        i, j, sim = i[order], j[order], sim[order]
        row_start = np.searchsorted(i, i, side="left")
        keep = np.arange(len(i)) - row_start < self.config["neighbours"]
        i, j, sim = i[keep], j[keep], sim[keep]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=V))])
        self.indices = j.astype(np.int32)
        self.data = sim.astype(np.float32)

    def _scores_at(self, inputs, lengths, cols) -> np.ndarray:
        N, T = inputs.shape
        K = len(cols)
        where = np.full(self.n_items, -1, dtype=np.int64)  # item id -> column
        where[cols] = np.arange(K)

        # one weight per used input position: 1 for the last, 1/2 before it, ...
        pos = np.arange(T)[None, :]
        used = pos < lengths[:, None]
        weight = 1.0 / (lengths[:, None] - pos)[used]
        row = np.broadcast_to(np.arange(N)[:, None], (N, T))[used]
        item = inputs[used]

        # expand each position into its neighbour list, keep the asked columns
        start = self.indptr[item]
        n_nb = self.indptr[item + 1] - start
        first = np.cumsum(n_nb) - n_nb
        flat = np.repeat(start - first, n_nb) + np.arange(n_nb.sum())
        col = where[self.indices[flat]]
        hit = col >= 0
        contrib = np.repeat(weight, n_nb)[hit] * self.data[flat][hit]
        cell = np.repeat(row, n_nb)[hit] * K + col[hit]
        dense = np.bincount(cell, weights=contrib, minlength=N * K)
        return dense.reshape(N, K).astype(np.float32)


def _cooccurrence(train: Sessions, V: int, window) -> tuple:
    """Session co-occurrence counts of item pairs, streamed over sessions.

    Returns:
        codes int64 (P,) sorted i * V + j of every pair seen, counts int64
        (P,) sessions holding the pair, n_sessions int64 (V,) sessions
        holding each item.
    """
    L = train.lengths
    m = L - 1 if window is None else np.minimum(L - 1, window)
    pairs = m * L - m * (m + 1) // 2  # position pairs per session

    # chunks of sessions: bounded pair count, and session-pair keys in int64
    max_sessions = max(1, (1 << 62) // (V * V))
    codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_sess = np.zeros(V, dtype=np.int64)
    a = 0
    cum = np.concatenate([[0], np.cumsum(pairs)])
    while a < train.n_sessions:
        b = int(np.searchsorted(cum, cum[a] + PAIR_BUDGET, side="right")) - 1
        b = min(max(b, a + 1), a + max_sessions, train.n_sessions)
        c_codes, c_counts, c_items = _chunk_pairs(train, a, b, V, window)
        codes, counts = _merge_counts(codes, counts, c_codes, c_counts)
        n_sess += c_items
        a = b
    return codes, counts, n_sess


def _chunk_pairs(train: Sessions, a: int, b: int, V: int, window) -> tuple:
    """Pair codes and counts of sessions a..b-1, and their sessions per item."""
    e0, e1 = train.offsets[a], train.offsets[b]
    items = train.items[e0:e1].astype(np.int64)
    lens = train.lengths[a:b]
    sess = np.repeat(np.arange(b - a, dtype=np.int64), lens)
    after = train.offsets[a + 1 : b + 1][sess] - e0 - np.arange(e1 - e0) - 1

    # positions sorted by how many follow them: lag d pairs a prefix
    order = np.argsort(-after, kind="stable")
    fewer = -after[order]  # ascending
    max_lag = int(after.max()) if window is None else min(int(after.max()), window)
    left, right, owner = [], [], []
    for d in range(1, max_lag + 1):
        n = int(np.searchsorted(fewer, -d, side="right"))
        ev = order[:n]
        left.append(items[ev])
        right.append(items[ev + d])
        owner.append(sess[ev])
    i = np.concatenate(left) if left else np.zeros(0, np.int64)
    j = np.concatenate(right) if right else np.zeros(0, np.int64)
    s = np.concatenate(owner) if owner else np.zeros(0, np.int64)

    # both directions, no self pairs, each pair once per session
    keep = i != j
    i, j, s = i[keep], j[keep], s[keep]
    i, j, s = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, s])
    per_session = np.unique((s * V + i) * V + j)
    codes, counts = np.unique(per_session % (V * V), return_counts=True)
    present = np.unique(sess * V + items) % V
    return codes, counts.astype(np.int64), np.bincount(present, minlength=V)


def _merge_counts(codes, counts, new_codes, new_counts) -> tuple:
    """Sum two sorted (code, count) lists into one."""
    if len(codes) == 0:
        return new_codes, new_counts
    all_codes = np.concatenate([codes, new_codes])
    all_counts = np.concatenate([counts, new_counts])
    order = np.argsort(all_codes, kind="stable")  # two sorted runs: linear
    all_codes, all_counts = all_codes[order], all_counts[order]
    first = np.flatnonzero(np.r_[True, all_codes[1:] != all_codes[:-1]])
    return all_codes[first], np.add.reduceat(all_counts, first)
