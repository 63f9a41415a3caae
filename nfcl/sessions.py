"""Listening sessions, their train/valid/test splits and training batches.

A `Sessions` holds every kept play of a data set as flat arrays cut into
sessions by `offsets` (CSR layout). Item ids are 1..V-1, numbered by sorted
item key, and 0 is padding, so the same events give the same ids whatever
order they arrive in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

PAD_KEY = "<pad>"

__all__ = [
    "PAD_KEY",
    "Examples",
    "Sessions",
    "Split",
    "from_events",
    "leave_last_out",
    "temporal_split",
    "training_batches",
]


def _check_array(owner: str, name: str, a, dtype, ndim: int = 1) -> np.ndarray:
    """Return `a` C-contiguous if it is an ndarray of `dtype` and `ndim`."""
    if not isinstance(a, np.ndarray):
        raise InputError(f"{owner}.{name}: expected a numpy array, got {type(a)}")
    if a.dtype != np.dtype(dtype):
        raise InputError(f"{owner}.{name}: expected dtype {dtype}, got {a.dtype}")
    if a.ndim != ndim:
        raise InputError(f"{owner}.{name}: expected {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_len(owner: str, name: str, a: np.ndarray, n: int, what: str) -> None:
    if len(a) != n:
        raise InputError(f"{owner}.{name}: length {len(a)} != {what} {n}")


@dataclass(eq=False)
class Sessions:
    """Plays grouped into sessions.

    Shapes:
        items int32 (E,) item ids 1..V-1; skips uint8 (E,) 1 = skipped;
        times float64 (E,) unix seconds, NaN only where unknown;
        offsets int64 (S+1,), session i is events offsets[i]:offsets[i+1];
        users int32 (S,) index into user_keys; item_keys list (V,) with
        item_keys[0] == "<pad>".

    `dropped` maps a reason to the number of input rows dropped for it;
    `source` says where the data came from. Both are for reporting only.

    Raises:
        InputError: naming the field, if an array has the wrong dtype or
        shape, offsets are not strictly increasing from 0 to E (an empty
        session), or an id is out of range.
    """

    items: np.ndarray
    skips: np.ndarray
    times: np.ndarray
    offsets: np.ndarray
    users: np.ndarray
    item_keys: list
    user_keys: list
    dropped: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        own = "Sessions"
        self.items = _check_array(own, "items", self.items, np.int32)
        self.skips = _check_array(own, "skips", self.skips, np.uint8)
        self.times = _check_array(own, "times", self.times, np.float64)
        self.offsets = _check_array(own, "offsets", self.offsets, np.int64)
        self.users = _check_array(own, "users", self.users, np.int32)
        E = len(self.items)
        _check_len(own, "skips", self.skips, E, "len(items)")
        _check_len(own, "times", self.times, E, "len(items)")
        self._check_offsets(E)
        _check_len(own, "users", self.users, self.n_sessions, "n_sessions")
        self._check_keys()

        # value ranges
        V = len(self.item_keys)
        if E and (self.items.min() < 1 or self.items.max() >= V):
            raise InputError(f"Sessions.items: ids must lie in 1..{V - 1}")
        if E and self.skips.max() > 1:
            raise InputError("Sessions.skips: values must be 0 or 1")
        if np.isinf(self.times).any():
            raise InputError("Sessions.times: infinite time")
        U = len(self.user_keys)
        if len(self.users) and (self.users.min() < 0 or self.users.max() >= U):
            raise InputError(f"Sessions.users: ids must lie in 0..{U - 1}")
        if not isinstance(self.dropped, dict):
            raise InputError("Sessions.dropped: expected a dict")

    def _check_offsets(self, E: int) -> None:
        off = self.offsets
        if len(off) < 1 or off[0] != 0 or off[-1] != E:
            raise InputError(f"Sessions.offsets: must start at 0 and end at E={E}")
        if len(off) > 1 and np.any(np.diff(off) <= 0):
            raise InputError(
                "Sessions.offsets: must be strictly increasing (no empty session)"
            )

    def _check_keys(self) -> None:
        for name in ("item_keys", "user_keys"):
            keys = getattr(self, name)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise InputError(f"Sessions.{name}: expected a list of str")
        if not self.item_keys or self.item_keys[0] != PAD_KEY:
            raise InputError(f"Sessions.item_keys: item_keys[0] must be {PAD_KEY!r}")

    @property
    def n_items(self) -> int:
        """V: the vocabulary size, padding id 0 included."""
        return len(self.item_keys)

    @property
    def n_sessions(self) -> int:
        """S: the number of sessions."""
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        """E: the number of plays."""
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (S,) plays per session."""
        return np.diff(self.offsets)

    @property
    def skip_rate(self) -> float:
        """Share of plays that were skipped (NaN if there are none)."""
        return float(self.skips.mean()) if len(self.skips) else float("nan")

    def session(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (items int32 (L,), skips uint8 (L,)) of session i, as views."""
        if not -self.n_sessions <= i < self.n_sessions:
            raise InputError(f"session index {i} out of range 0..{self.n_sessions - 1}")
        i %= self.n_sessions
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.items[a:b], self.skips[a:b]

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the arrays and keys; `dropped` and `source` excluded.

        Arrays enter little-endian with their dtype and shape, so the value
        does not depend on the machine.
        """
        h = hashlib.sha256(b"nfcl.Sessions/1")
        for name in ("items", "skips", "times", "offsets", "users"):
            a = getattr(self, name)
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        keys = json.dumps([self.item_keys, self.user_keys], ensure_ascii=False)
        h.update(keys.encode("utf-8"))
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"Sessions(n_sessions={self.n_sessions}, n_events={self.n_events}, "
            f"n_items={self.n_items}, users={len(self.user_keys)}, "
            f"skip_rate={self.skip_rate:.4f}, source={self.source!r})"
        )


@dataclass(eq=False)
class Examples:
    """Next-item prediction cases for evaluation.

    Shapes:
        inputs int32 (M,T): the last <= T items before the target, in order,
        right-padded with 0; lengths int32 (M,); targets int32 (M,);
        target_skips uint8 (M,); session int64 (M,) index of the source
        session; input_skips uint8 (M,T) skip flags of the inputs (0 at
        padding), so input_skips[m, lengths[m]-1] is the skip flag of the play
        just before the target.
    """

    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    target_skips: np.ndarray
    session: np.ndarray
    input_skips: np.ndarray | None = None

    def __post_init__(self) -> None:
        own = "Examples"
        self.inputs = _check_array(own, "inputs", self.inputs, np.int32, 2)
        M = len(self.inputs)
        for name, dtype in (
            ("lengths", np.int32),
            ("targets", np.int32),
            ("target_skips", np.uint8),
            ("session", np.int64),
        ):
            a = _check_array(own, name, getattr(self, name), dtype)
            _check_len(own, name, a, M, "len(inputs)")
            setattr(self, name, a)
        T = self.inputs.shape[1]
        if M and (self.lengths.min() < 1 or self.lengths.max() > T):
            raise InputError(f"Examples.lengths: every length must be in 1..{T} (the "
                             f"width of inputs), got {self.lengths.min()}.."
                             f"{self.lengths.max()}")
        if self.input_skips is not None:
            a = _check_array(own, "input_skips", self.input_skips, np.uint8, 2)
            if a.shape != self.inputs.shape:
                shape = self.inputs.shape
                raise InputError(f"Examples.input_skips: shape {a.shape} != {shape}")
            self.input_skips = a

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def skip_rate(self) -> float:
        """Share of targets that were skipped (NaN if there are none)."""
        return float(self.target_skips.mean()) if len(self) else float("nan")


@dataclass(eq=False)
class Split:
    """A train/valid/test split.

    `train` holds the training parts as sessions (same item ids as the
    source); `dropped` counts the sessions left out, by reason; `cut_times`
    holds the temporal cut times (t1, t2), None for leave-last-out.
    """

    train: Sessions
    valid: Examples
    test: Examples
    dropped: dict = field(default_factory=dict)
    cut_times: tuple[float, float] | None = None


# ---------------------------------------------------------------------------
# building sessions from events


def _as_keys(name: str, x) -> np.ndarray:
    """A 1-D array of str keys; numbers are written as str, None is refused."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"{name}: expected a 1-D sequence, got shape {a.shape}")
    if a.dtype.kind == "U":
        return a
    if a.dtype.kind == "O":
        for i, v in enumerate(a):
            if v is None:
                raise InputError(f"{name}: missing key (None) at index {i}")
        return np.array([str(v) for v in a], dtype=str) if len(a) else a.astype(str)
    return a.astype(str)


def _as_skips(x) -> np.ndarray:
    """uint8 0/1 from booleans or numbers that are exactly 0 or 1."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"skips: expected a 1-D sequence, got shape {a.shape}")
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind not in "iuf":
        raise InputError(f"skips: expected booleans or 0/1 numbers, got {a.dtype}")
    bad = np.flatnonzero((a != 0) & (a != 1))
    if len(bad):
        raise InputError(f"skips: value {a[bad[0]]!r} at index {bad[0]} is not 0 or 1")
    return a.astype(np.uint8)


def _as_float(name: str, x, n: int) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: expected numbers ({e})") from None
    if a.shape != (n,):
        raise InputError(f"{name}: expected shape ({n},), got {a.shape}")
    return a


def _event_arrays(users, items, times, skips):
    """Checked event columns: (user keys, user codes int64 (E,), item keys (E,),
    times float64 (E,), skips uint8 (E,))."""
    u_keys, u = np.unique(_as_keys("users", users), return_inverse=True)
    keys = _as_keys("items", items)
    E = len(keys)
    if len(u) != E:
        raise InputError(f"users: length {len(u)} != len(items) {E}")
    t = _as_float("times", times, E)
    s = _as_skips(skips)
    if len(s) != E:
        raise InputError(f"skips: length {len(s)} != len(items) {E}")
    if E == 0:
        raise InputError("no events")
    if np.isinf(t).any():
        at = np.flatnonzero(np.isinf(t))[0]
        raise InputError(f"times: infinite value at index {at}")
    return u_keys, u.astype(np.int64), keys, t, s


def _order(u, t, session_ids, durations, gap_minutes):
    """(order, new): the event order and each session's first event in it."""
    nan = np.isnan(t)
    E = len(t)
    if session_ids is None:
        if nan.any():
            raise InputError(
                f"times: NaN at index {np.flatnonzero(nan)[0]} "
                "(unknown times need session_ids)"
            )
        dur = None
        if durations is not None:
            dur = _as_float("durations", durations, E)
            if not np.all(dur >= 0):
                raise InputError("durations: expected finite values >= 0")
        gap = None if gap_minutes is None else 60.0 * gap_minutes
        return _order_by_gap(u, t, dur, gap)

    sid = _as_keys("session_ids", session_ids)
    if len(sid) != E:
        raise InputError(f"session_ids: length {len(sid)} != len(items) {E}")
    if nan.any() and not nan.all():
        at = np.flatnonzero(nan)[0]
        raise InputError(f"times: NaN at index {at} among known times")
    return _order_by_id(u, np.arange(E, dtype=np.float64) if nan.all() else t, sid)


def _order_by_gap(u, t, dur, gap):
    """Sort events by (user, time) and flag each session's first event.

    Shapes: u int64 (E,) user codes; t, dur float64 (E,). Returns (order (E,),
    new bool (E,)) in sorted order.
    """
    order = np.lexsort((t, u))
    u, t = u[order], t[order]
    new = np.ones(len(u), dtype=bool)
    new[1:] = u[1:] != u[:-1]
    if gap is None:
        return order, new

    # The idle time before a play is measured from the latest end of any
    # earlier play of that user, so overlapping plays do not open sessions.
    if dur is None:
        last_end = t
    else:
        last_end = t + dur[order]
        starts = np.flatnonzero(new)
        for a, b in zip(starts, np.append(starts[1:], len(u)), strict=True):
            last_end[a:b] = np.maximum.accumulate(last_end[a:b])
    new[1:] |= t[1:] - last_end[:-1] > gap
    return order, new


def _order_by_id(u, t, sid):
    """Sort events by (user, session start, session id, time).

    A session is every event sharing (user, session id); sessions of a user
    are ordered by their earliest time, events within one by time.
    """
    _, s = np.unique(sid, return_inverse=True)
    _, g = np.unique(u * (s.max() + 1) + s, return_inverse=True)
    g_start = np.full(g.max() + 1, np.inf)
    np.minimum.at(g_start, g, t)
    order = np.lexsort((t, g, g_start[g], u))
    g = g[order]
    new = np.ones(len(g), dtype=bool)
    new[1:] = g[1:] != g[:-1]
    return order, new


def _windows(new, skips, max_len, min_len, require_skip, dropped):
    """Cut sessions into windows of max_len and apply the filters.

    Returns (w_start int64 (W,), w_len int64 (W,), keep bool (W,)) and adds
    the dropped row counts to `dropped`.
    """
    E = len(new)
    sess = np.cumsum(new) - 1
    pos = np.arange(E) - np.flatnonzero(new)[sess]
    w_new = new if max_len is None else new | (pos % max_len == 0)
    w_start = np.flatnonzero(w_new)
    w_len = np.diff(np.append(w_start, E))
    keep = np.ones(len(w_start), dtype=bool)

    # filters, each counted on the rows that reach it
    if min_len is not None:
        short = w_len < min_len
        dropped["too_short"] = dropped.get("too_short", 0) + int(w_len[short].sum())
        keep &= ~short
    if require_skip:
        w_skips = np.add.reduceat(skips.astype(np.int64), w_start) if E else w_len
        none = keep & (w_skips == 0)
        dropped["no_skip"] = dropped.get("no_skip", 0) + int(w_len[none].sum())
        keep &= ~none
    return w_start, w_len, keep


def from_events(
    users,
    items,
    times,
    skips,
    session_ids=None,
    gap_minutes: float | None = 30,
    min_len: int | None = 6,
    require_skip: bool = True,
    max_len: int | None = 20,
    source: str = "",
    durations=None,
    dropped: dict | None = None,
) -> Sessions:
    """Group plays into sessions, cut long ones into windows and filter them.

    Events are sorted stably by (user, time). Without `session_ids` a new
    session starts where a user was idle for more than `gap_minutes`: the
    time since the previous play (or, given `durations` in seconds, since the
    latest end of an earlier play). With `session_ids` a session is every
    event of one (user, id), in time order; times may then be all NaN
    (unknown), and input order is kept. Sessions longer than `max_len` are cut
    into consecutive windows of `max_len` (the last may be shorter); windows
    shorter than `min_len`, or without a skip if `require_skip`, are dropped
    and their rows counted in `dropped` ("too_short", "no_skip"). Item ids are
    assigned after filtering, by sorted key. min_len=None, require_skip=False,
    max_len=None or gap_minutes=None turn the respective step off.

    Shapes:
        users, items (E,) keys (converted to str); times float (E,) unix
        seconds; skips (E,) bool or 0/1; session_ids (E,) keys or None;
        durations float (E,) seconds or None.

    Returns:
        Sessions (possibly with no session if the filters drop everything).

    Raises:
        InputError: mismatched lengths, non-0/1 skips, NaN or infinite times
        (NaN allowed only when all times are NaN and session_ids are given).
    """
    u_keys, u, keys, t, s = _event_arrays(users, items, times, skips)
    for name, v in (("max_len", max_len), ("min_len", min_len)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise InputError(f"{name}: expected a positive int or None, got {v!r}")
    if gap_minutes is not None and not gap_minutes >= 0:
        raise InputError(f"gap_minutes: expected >= 0 or None, got {gap_minutes!r}")
    order, new = _order(u, t, session_ids, durations, gap_minutes)

    # windows and filters
    drop = dict(dropped or {})
    s = s[order]
    w_start, w_len, keep = _windows(new, s, max_len, min_len, require_skip, drop)
    ev = order[np.repeat(keep, w_len)]

    # ids after filtering, by sorted key
    i_keys, ids = np.unique(keys[ev], return_inverse=True)
    w_user = u[order[w_start[keep]]]
    kept_users, users_out = np.unique(w_user, return_inverse=True)
    lens = w_len[keep]
    return Sessions(
        items=(ids + 1).astype(np.int32),
        skips=s[np.repeat(keep, w_len)],
        times=t[ev].astype(np.float64),
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        users=users_out.astype(np.int32),
        item_keys=[PAD_KEY] + i_keys.tolist(),
        user_keys=[str(u_keys[k]) for k in kept_users],
        dropped=drop,
        source=str(source),
    )


# ---------------------------------------------------------------------------
# splits


def _take(ses: Sessions, start: np.ndarray, stop: np.ndarray, idx: np.ndarray):
    """Sessions made of events start[j]:stop[j] of sessions idx[j] (all > 0 long)."""
    lens = (stop - start).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ev = np.arange(off[-1]) - np.repeat(off[:-1], lens) + np.repeat(start, lens)
    return Sessions(
        items=ses.items[ev],
        skips=ses.skips[ev],
        times=ses.times[ev],
        offsets=off,
        users=ses.users[idx],
        item_keys=ses.item_keys,
        user_keys=ses.user_keys,
        dropped=dict(ses.dropped),
        source=ses.source,
    )


def most_recent(sessions: Sessions, max_events: int) -> Sessions:
    """The latest whole sessions holding at most ``max_events`` plays in all.

    Sessions are kept from the end (they are in time order); item ids are
    renumbered to the items still used, so the id space shrinks with them.
    Used to give every listener of a many-listener study the same budget.
    """
    if isinstance(max_events, bool) or int(max_events) != max_events or max_events < 1:
        raise InputError(f"max_events: expected a positive int, got {max_events!r}")
    lens = sessions.lengths
    from_end = np.cumsum(lens[::-1])
    n_keep = int(np.searchsorted(from_end, max_events, side="right"))
    if n_keep == 0:
        raise InputError(f"most_recent: the last session alone has {int(lens[-1])} "
                         f"plays, more than max_events={max_events}")
    idx = np.arange(sessions.n_sessions - n_keep, sessions.n_sessions)
    off = sessions.offsets
    kept = _take(sessions, off[idx], off[idx + 1], idx)
    used = np.unique(kept.items)
    remap = np.zeros(len(sessions.item_keys), np.int32)
    remap[used] = np.arange(1, len(used) + 1, dtype=np.int32)
    kept.items = remap[kept.items]
    kept.item_keys = [sessions.item_keys[0]] + [sessions.item_keys[i] for i in used]
    return kept


def concat(parts: list, user_keys: list | None = None) -> Sessions:
    """Several Sessions as one: sessions in the order given, item ids
    renumbered over the union of item keys (sorted, as everywhere), users
    kept apart (``user_keys`` names them, default: each part's own keys).

    Used to pool listeners into one training set while knowing, through
    ``users``, whose session is whose.
    """
    if not parts:
        raise InputError("concat: no Sessions given")
    keys = sorted(set().union(*(p.item_keys[1:] for p in parts)))
    index = {k: i + 1 for i, k in enumerate(keys)}
    items, skips, times, offsets, users, names, dropped = [], [], [], [], [], [], {}
    n_events, n_users = 0, 0
    for p in parts:
        remap = np.array([0] + [index[k] for k in p.item_keys[1:]], dtype=np.int32)
        items.append(remap[p.items])
        skips.append(p.skips)
        times.append(p.times)
        offsets.append(p.offsets[1:] + n_events)
        users.append(p.users + n_users)
        names += list(p.user_keys)
        n_events += p.n_events
        n_users += len(p.user_keys)
        for k, v in p.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
    if user_keys is not None and len(user_keys) != n_users:
        raise InputError(f"concat: {len(user_keys)} user_keys for {n_users} users")
    return Sessions(items=np.concatenate(items), skips=np.concatenate(skips),
                    times=np.concatenate(times),
                    offsets=np.concatenate([[0], *offsets]).astype(np.int64),
                    users=np.concatenate(users).astype(np.int32),
                    item_keys=[PAD_KEY] + keys,
                    user_keys=list(user_keys) if user_keys is not None else names,
                    dropped=dropped, source="+".join(p.source for p in parts))


def subset(examples: Examples, mask) -> Examples:
    """The examples where ``mask`` (M,) is true, e.g. one listener's."""
    mask = np.asarray(mask, bool)
    if mask.shape != examples.targets.shape:
        raise InputError(f"subset: mask has shape {mask.shape}, expected "
                         f"{examples.targets.shape}")
    return Examples(inputs=examples.inputs[mask], lengths=examples.lengths[mask],
                    targets=examples.targets[mask],
                    target_skips=examples.target_skips[mask],
                    session=examples.session[mask],
                    input_skips=None if examples.input_skips is None
                    else examples.input_skips[mask])


def _examples(ses: Sessions, tgt, first, sess, max_len: int) -> Examples:
    """Examples predicting event tgt[m] from the up to max_len events before it,
    none before event first[m] (its session's first)."""
    lengths = np.minimum(tgt - first, max_len)
    begin = tgt - lengths
    cols = np.arange(max_len)
    mask = cols[None, :] < lengths[:, None]
    idx = np.where(mask, begin[:, None] + cols[None, :], 0)
    return Examples(
        inputs=np.where(mask, ses.items[idx], 0).astype(np.int32),
        lengths=lengths.astype(np.int32),
        targets=ses.items[tgt].astype(np.int32),
        target_skips=ses.skips[tgt].astype(np.uint8),
        session=np.asarray(sess, dtype=np.int64),
        input_skips=np.where(mask, ses.skips[idx], 0).astype(np.uint8),
    )


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or int(max_len) != max_len or max_len < 1:
        raise InputError(f"max_len: expected a positive int, got {max_len!r}")
    return int(max_len)


def leave_last_out(sessions: Sessions, max_len: int = 20) -> Split:
    """Per session: test target = last item, valid target = second to last.

    The training part is all but the last two items. Valid input = the
    training part; test input = all but the last item; each cut to its last
    `max_len` items. Sessions with fewer than 3 items are dropped and counted
    in Split.dropped["too_short"].

    Returns:
        Split with valid and test in session order (one example per session).
    """
    max_len = _check_max_len(max_len)
    off = sessions.offsets
    ok = np.flatnonzero(sessions.lengths >= 3)
    start, end = off[ok], off[ok + 1]
    return Split(
        train=_take(sessions, start, end - 2, ok),
        valid=_examples(sessions, end - 2, start, ok, max_len),
        test=_examples(sessions, end - 1, start, ok, max_len),
        dropped={"too_short": int(sessions.n_sessions - len(ok))},
    )


def _all_positions(ses: Sessions, idx: np.ndarray, max_len: int) -> Examples:
    """Examples for every position t >= 1 of sessions idx, in session order."""
    off = ses.offsets
    n = ses.lengths[idx] - 1
    first = np.repeat(off[idx], n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return _examples(ses, first + 1 + within, first, np.repeat(idx, n), max_len)


def temporal_split(
    sessions: Sessions,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    max_len: int = 20,
) -> Split:
    """Split sessions by global cut times t1 <= t2.

    t1 and t2 are the (1 - valid_frac - test_frac) and (1 - test_frac)
    quantiles of session start times. A session is in train if it ends
    before t1, valid if it starts at/after t1 and ends before t2, test if it
    starts at/after t2; sessions straddling a cut are dropped and counted, so
    every test play is later than every training play. Valid and test
    examples are every position t >= 1 of their sessions, with the up to
    `max_len` items before t as input.

    Raises:
        InputError: fractions out of range, no sessions, or unknown times.
    """
    max_len = _check_max_len(max_len)
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise InputError(
            f"valid_frac={valid_frac}, test_frac={test_frac}: need both >= 0, sum < 1"
        )
    if sessions.n_sessions == 0:
        raise InputError("sessions: no session to split")
    if np.isnan(sessions.times).any():
        raise InputError("sessions.times: unknown (NaN) times, cannot split by time")

    # cut times from session start times
    off = sessions.offsets[:-1]
    t0 = np.minimum.reduceat(sessions.times, off)
    t_end = np.maximum.reduceat(sessions.times, off)
    t2 = np.quantile(t0, 1 - test_frac) if test_frac > 0 else np.inf
    t1 = np.quantile(t0, 1 - valid_frac - test_frac) if valid_frac > 0 else t2

    # membership; the rest straddles a cut
    train = np.flatnonzero(t_end < t1)
    valid = np.flatnonzero((t0 >= t1) & (t_end < t2))
    test = np.flatnonzero(t0 >= t2)
    cross1 = int(np.sum((t0 < t1) & (t_end >= t1)))
    cross2 = int(np.sum((t0 >= t1) & (t0 < t2) & (t_end >= t2)))
    return Split(
        train=_take(
            sessions, sessions.offsets[train], sessions.offsets[train + 1], train
        ),
        valid=_all_positions(sessions, valid, max_len),
        test=_all_positions(sessions, test, max_len),
        dropped={"straddles_valid_cut": cross1, "straddles_test_cut": cross2},
        cut_times=(float(t1), float(t2)),
    )


# ---------------------------------------------------------------------------
# training batches


def training_batches(
    train: Sessions, batch_size: int, max_len: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled batches of training sessions for next-item training.

    Each row is the last min(len, max_len+1) items of one training session,
    right-padded with item 0 and skip 0. Inputs are row[:, :-1] and next-item
    targets row[:, 1:], so T = max_len. Sessions with a single item hold no
    target and are left out. Row order is a permutation drawn from `rng`; the
    last batch may be smaller than batch_size.

    Shapes:
        yields (items int32 (B,T+1), skips uint8 (B,T+1)), B <= batch_size.
    """
    max_len = _check_max_len(max_len)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng: expected a numpy.random.Generator, got {type(rng)}")
    batch_size = int(batch_size)

    # all rows at once: (S', T+1), tail of each session left-aligned
    idx = np.flatnonzero(train.lengths >= 2)
    end = train.offsets[idx + 1]
    lengths = np.minimum(train.lengths[idx], max_len + 1)
    cols = np.arange(max_len + 1)
    mask = cols[None, :] < lengths[:, None]
    ev = np.where(mask, (end - lengths)[:, None] + cols[None, :], 0)
    items = np.where(mask, train.items[ev], 0).astype(np.int32)
    skips = np.where(mask, train.skips[ev], 0).astype(np.uint8)
    perm = rng.permutation(len(idx))

    def batches():
        for a in range(0, len(perm), batch_size):
            rows = perm[a : a + batch_size]
            yield items[rows], skips[rows]

    return batches()
