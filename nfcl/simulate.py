"""A listening simulator with known ground truth.

Assumptions (what the simulated world is, and is not):

* Users and items have latent taste vectors, drawn i.i.d. standard normal in
  ``dim`` dimensions and scaled to unit length. A user's true *affinity* for
  an item is the cosine of the two vectors, in [-1, 1]; it never changes.
* A session belongs to one user. Its tracks come one by one: with
  probability ``explore`` a track is drawn uniformly from the catalogue (a
  radio or shuffle jump); otherwise from a softmax over items of
  ``taste * affinity + sequence * cos(item, previous kept track)`` divided
  by ``temperature``. So the next track is near what the user likes and near
  the last track they did not skip; a skipped track does not steer the
  session. Item popularity is not modelled beyond this.
* A track is skipped with probability ``sigmoid(slope * (threshold -
  affinity))``: rising as the user likes the track less. ``threshold`` is
  set by bisection so that the realised share of skips is ``skip_rate``
  (so one parameter sets the overall skip rate; the sharpness ``slope`` is
  fixed).
* Times are synthetic (one play every 3 minutes, sessions a day apart), so
  temporal splits work; every session is one window (no cutting).

Everything is a pure function of ``seed``.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .sessions import PAD_KEY, Sessions

__all__ = ["ListeningSimulator", "true_affinity_at_k"]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ListeningSimulator:
    """Users and items with latent tastes; ``sessions()`` draws the plays.

    Args:
        n_users, n_items: sizes (``n_items`` real items, ids 1..n_items).
        n_sessions, session_len: how many sessions of how many plays.
        dim: latent dimension.
        skip_rate: target share of skipped plays, in (0, 1).
        explore: share of uniformly random tracks.
        taste, sequence, temperature: weights of the draw softmax.
        slope: sharpness of the skip probability in the affinity.
        seed: makes everything deterministic.
    """

    def __init__(self, n_users=60, n_items=400, n_sessions=600, session_len=12, dim=8,
                 skip_rate=0.3, explore=0.2, taste=1.0, sequence=1.0, temperature=0.25,
                 slope=6.0, seed=0):
        if not 0 < skip_rate < 1:
            raise InputError(f"skip_rate must be in (0, 1), got {skip_rate!r}")
        if not 0 <= explore <= 1:
            raise InputError(f"explore must be in [0, 1], got {explore!r}")
        for name, v in (("n_users", n_users), ("n_items", n_items),
                        ("n_sessions", n_sessions), ("session_len", session_len),
                        ("dim", dim)):
            if int(v) != v or v < 1:
                raise InputError(f"{name} must be a positive int, got {v!r}")
        self.params = dict(n_users=int(n_users), n_items=int(n_items),
                           n_sessions=int(n_sessions), session_len=int(session_len),
                           dim=int(dim), skip_rate=float(skip_rate), explore=float(explore),
                           taste=float(taste), sequence=float(sequence),
                           temperature=float(temperature), slope=float(slope),
                           seed=int(seed))
        rng = np.random.default_rng([int(seed), 0])
        self.user_vecs = _unit(rng.standard_normal((n_users, dim)))
        self.item_vecs = _unit(rng.standard_normal((n_items, dim)))
        # affinity (U, N): the ground truth; item_sim (N, N) steers sequences
        self.affinity = self.user_vecs @ self.item_vecs.T
        self._item_sim = self.item_vecs @ self.item_vecs.T
        self.session_users = rng.integers(0, n_users, n_sessions)
        self.threshold = self._calibrate()

    def _draw(self, threshold):
        """One pass of the generator; returns items (S, L) 0-based and skips."""
        p = self.params
        S, L, N = p["n_sessions"], p["session_len"], p["n_items"]
        rng = np.random.default_rng([p["seed"], 1])
        aff = self.affinity[self.session_users]  # (S, N)
        items = np.zeros((S, L), np.int64)
        skips = np.zeros((S, L), np.uint8)
        prev = None  # (S,) the last kept track of every session
        rows = np.arange(S)
        for t in range(L):
            # draw the next track: taste plus nearness to the last kept one
            logits = p["taste"] * aff
            if prev is not None:
                logits = logits + p["sequence"] * self._item_sim[prev]
            logits = logits / p["temperature"]
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            cdf = np.cumsum(prob, axis=1)
            u = rng.random(S) * cdf[:, -1]
            pick = np.minimum((cdf < u[:, None]).sum(axis=1), N - 1)
            jump = rng.random(S) < p["explore"]
            pick = np.where(jump, rng.integers(0, N, S), pick)

            # skip with probability rising as affinity falls
            a = aff[rows, pick]
            p_skip = 1.0 / (1.0 + np.exp(-p["slope"] * (threshold - a)))
            skip = rng.random(S) < p_skip
            items[:, t], skips[:, t] = pick, skip
            prev = pick if prev is None else np.where(skip, prev, pick)
        return items, skips

    def _calibrate(self) -> float:
        """The threshold whose realised skip share is ``skip_rate`` (bisection)."""
        lo, hi = -3.0, 3.0
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            if self._draw(mid)[1].mean() < self.params["skip_rate"]:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def sessions(self) -> Sessions:
        """The simulated plays as Sessions; item id i+1 is latent item i,
        user index u is simulated user u (``user_keys[u] == f"u{u}"``)."""
        p = self.params
        items, skips = self._draw(self.threshold)
        S, L = items.shape
        t0 = np.arange(S)[:, None] * 86400.0 + np.arange(L)[None, :] * 180.0
        return Sessions(
            items=(items.reshape(-1) + 1).astype(np.int32),
            skips=skips.reshape(-1).astype(np.uint8),
            times=t0.reshape(-1).astype(np.float64),
            offsets=(np.arange(S + 1) * L).astype(np.int64),
            users=self.session_users.astype(np.int32),
            item_keys=[PAD_KEY] + [f"i{i}" for i in range(p["n_items"])],
            user_keys=[f"u{u}" for u in range(p["n_users"])],
            source=f"nfcl.simulate(skip_rate={p['skip_rate']}, seed={p['seed']})",
        )

    def true_affinity(self, users, item_ids) -> np.ndarray:
        """True affinity of ``users`` (N,) for ``item_ids`` (N, K) (ids 1..n_items)."""
        users = np.asarray(users, np.int64)
        ids = np.asarray(item_ids, np.int64)
        if ids.min() < 1 or ids.max() > self.params["n_items"]:
            raise InputError("item ids must lie in 1..n_items")
        return self.affinity[users[:, None], ids - 1]


def true_affinity_at_k(model, examples, sessions: Sessions, sim: ListeningSimulator,
                       k=10) -> float:
    """Mean true affinity of the top-k recommended items over the test examples.

    ``examples.session`` indexes ``sessions`` (the source of the split), whose
    ``users`` give the simulated listener.
    """
    users = sessions.users[examples.session]
    rec = model.recommend(examples, k=k)
    return float(sim.true_affinity(users, rec).mean())
