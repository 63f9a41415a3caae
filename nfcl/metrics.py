"""Ranking metrics for next-item prediction and sampled candidate sets.

A target's rank comes as two counts from `_core.rank_targets`: candidates
scoring strictly above it (greater) and equal to it (ties). Ties are
resolved explicitly by `tie_mode`:

* "expected" (default): r = 1 + greater + ties / 2, the mean rank under a
  random order of the tied items, so ties help the target no more than
  chance does;
* "optimistic": r = 1 + greater;
* "pessimistic": r = 1 + greater + ties.

Metric names carry the protocol ("full" = every item is a candidate,
"sampled" = targets plus sampled negatives), e.g. "sampled:HR@10".
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["MetricAccumulator", "compute_metrics", "ranks", "sampled_candidates"]

TIE_MODES = ("expected", "optimistic", "pessimistic")


def ranks(greater, ties, tie_mode: str = "expected") -> np.ndarray:
    """1-based ranks from (greater, ties) counts.

    Shapes:
        greater, ties (N,) integer counts. Returns float64 (N,).
    """
    g = np.asarray(greater)
    t = np.asarray(ties)
    if g.shape != t.shape or g.ndim != 1:
        raise InputError(
            f"greater {g.shape} and ties {t.shape} must be equal 1-D shapes"
        )
    if len(g) and (g.min() < 0 or t.min() < 0):
        raise InputError("greater and ties must be counts >= 0")
    if tie_mode == "expected":
        return 1.0 + g + 0.5 * t
    if tie_mode == "optimistic":
        return 1.0 + g.astype(np.float64)
    if tie_mode == "pessimistic":
        return 1.0 + g + t.astype(np.float64)
    raise InputError(f"tie_mode: expected one of {TIE_MODES}, got {tie_mode!r}")


class MetricAccumulator:
    """Streaming HR@k, MRR@cutoff, NDCG@cutoff and Skip-MRR@cutoff.

    HR@k = share of examples with rank <= k; MRR = mean of 1/r (0 beyond
    the cutoff); NDCG = mean of 1/log2(r+1) (0 beyond the cutoff), the single
    relevant item having ideal DCG 1; Skip-MRR = MRR over the examples whose
    target was skipped (lower is better: skipped tracks ranked low), NaN if
    there is none. Sums are kept, so feeding batches equals one call on
    their concatenation.
    """

    def __init__(
        self,
        protocol: str = "full",
        ks=(1, 5, 10, 20),
        cutoff: int = 10,
        tie_mode: str = "expected",
    ):
        if not isinstance(protocol, str) or not protocol:
            raise InputError(f"protocol: expected a non-empty str, got {protocol!r}")
        ks = tuple(ks)
        if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
            raise InputError(f"ks: expected positive ints, got {ks!r}")
        if isinstance(cutoff, bool) or int(cutoff) != cutoff or cutoff < 1:
            raise InputError(f"cutoff: expected a positive int, got {cutoff!r}")
        if tie_mode not in TIE_MODES:
            raise InputError(f"tie_mode: expected one of {TIE_MODES}, got {tie_mode!r}")
        self.protocol = protocol
        self.ks = tuple(int(k) for k in ks)
        self.cutoff = int(cutoff)
        self.tie_mode = tie_mode
        self.reset()

    def reset(self) -> None:
        """Forget every example seen so far."""
        self.n = 0
        self.n_skipped = 0
        self._hits = np.zeros(len(self.ks), dtype=np.int64)
        self._rr = 0.0
        self._ndcg = 0.0
        self._skip_rr = 0.0

    def update(self, greater, ties, target_skips=None) -> None:
        """Add a batch of examples.

        Shapes:
            greater, ties (N,) counts; target_skips (N,) 0/1 or None (no
            skipped targets in this batch).
        """
        r = ranks(greater, ties, self.tie_mode)
        if target_skips is None:
            skipped = np.zeros(len(r), dtype=bool)
        else:
            skipped = np.asarray(target_skips)
            if skipped.shape != r.shape:
                raise InputError(f"target_skips {skipped.shape} != greater {r.shape}")
            skipped = skipped.astype(bool)

        # reciprocal ranks and gains, zero beyond the cutoff
        inside = r <= self.cutoff
        rr = np.where(inside, 1.0 / r, 0.0)
        gain = np.where(inside, 1.0 / np.log2(r + 1.0), 0.0)
        self._hits += np.array(
            [np.count_nonzero(r <= k) for k in self.ks], dtype=np.int64
        )
        self._rr += float(rr.sum())
        self._ndcg += float(gain.sum())
        self._skip_rr += float(rr[skipped].sum())
        self.n += len(r)
        self.n_skipped += int(skipped.sum())

    def result(self) -> dict[str, float]:
        """Metric name -> value (NaN where no example was seen)."""
        p, c = self.protocol, self.cutoff
        n = self.n if self.n else np.nan
        out = {
            f"{p}:HR@{k}": float(h / n)
            for k, h in zip(self.ks, self._hits, strict=True)
        }
        out[f"{p}:MRR@{c}"] = float(self._rr / n)
        out[f"{p}:NDCG@{c}"] = float(self._ndcg / n)
        ns = self.n_skipped if self.n_skipped else np.nan
        out[f"{p}:Skip-MRR@{c}"] = float(self._skip_rr / ns)
        return out


def compute_metrics(greater, ties, target_skips=None, protocol="full", **kw) -> dict:
    """One-shot MetricAccumulator: the metrics of one set of ranks."""
    acc = MetricAccumulator(protocol, **kw)
    acc.update(greater, ties, target_skips)
    return acc.result()


def sampled_candidates(
    targets, n_items: int, seed: int, n_neg: int = 1000, group: int = 64,
    first_group: int = 0,
) -> list[tuple[int, int, np.ndarray]]:
    """Candidate sets for sampled ranking, a pure function of (seed, order).

    The examples are cut into consecutive groups of `group` in the given
    order. Group g (stream g) ranks against the unique targets of the group
    followed by n_neg items drawn without replacement from the other items
    (`_core.sample_candidates`). When the catalogue holds fewer than n_neg
    other items, all of them are used instead. ``first_group`` numbers the
    first group (and so its stream): a slice of the examples that starts at
    example ``first_group * group`` gets the candidate sets the whole list
    gives those examples.

    Shapes:
        targets int (N,) ids 1..n_items-1. Returns [(start, stop, cand int32
        (K,))], one per group, covering targets[start:stop].
    """
    from . import _core

    t = np.ascontiguousarray(targets, dtype=np.int32)
    if t.ndim != 1:
        raise InputError(f"targets: expected 1-D, got shape {t.shape}")
    if len(t) and (t.min() < 1 or t.max() >= n_items):
        raise InputError(f"targets: ids must lie in 1..{n_items - 1}")
    if isinstance(group, bool) or int(group) != group or group < 1:
        raise InputError(f"group: expected a positive int, got {group!r}")
    if isinstance(n_neg, bool) or int(n_neg) != n_neg or n_neg < 0:
        raise InputError(f"n_neg: expected an int >= 0, got {n_neg!r}")
    if isinstance(first_group, bool) or int(first_group) != first_group or first_group < 0:
        raise InputError(f"first_group: expected an int >= 0, got {first_group!r}")

    seen = np.zeros(n_items, dtype=np.uint8)
    out = []
    for g, start in enumerate(range(0, len(t), int(group))):
        stop = min(start + int(group), len(t))
        part = t[start:stop]
        others = n_items - 1 - len(np.unique(part))
        cand, _ = _core.sample_candidates(
            part, n_items, min(int(n_neg), others), seed, int(first_group) + g, seen
        )
        out.append((start, stop, cand))
    return out
