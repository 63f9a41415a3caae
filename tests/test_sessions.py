"""Sessionising, windows, filters, ids, splits and training batches."""

import numpy as np
import pytest

from nfcl.errors import InputError
from nfcl.sessions import (
    PAD_KEY,
    Sessions,
    from_events,
    leave_last_out,
    concat,
    most_recent,
    subset,
    temporal_split,
    training_batches,
)

OFF = {"min_len": None, "require_skip": False, "max_len": None}
MIN = 60.0


def _random_events(rng, n_users=4, n_events=400, n_keys=30):
    """Events with distinct times, so any input order sorts the same way."""
    users = rng.integers(0, n_users, n_events)
    gaps = rng.choice([1 * MIN, 5 * MIN, 90 * MIN], size=n_events, p=[0.6, 0.3, 0.1])
    times = 1.6e9 + np.cumsum(gaps) + rng.random(n_events)
    items = np.array([f"track{k:02d}" for k in rng.integers(0, n_keys, n_events)])
    skips = rng.random(n_events) < 0.3
    return [f"user{u}" for u in users], items, times, skips


def _sessions_as_lists(s):
    out = []
    for i in range(s.n_sessions):
        items, skips = s.session(i)
        keys = [s.item_keys[j] for j in items]
        out.append((s.user_keys[s.users[i]], keys, skips.tolist()))
    return out


# ---------------------------------------------------------------------------
# from_events


def test_gap_rule_and_user_order():
    t = np.array([0, 10, 40, 71, 72, 0, 5]) * MIN  # user b at the end
    users = ["a"] * 5 + ["b"] * 2
    items = ["x", "y", "z", "x", "w", "y", "y"]
    skips = [0, 1, 0, 0, 1, 0, 1]
    s = from_events(users, items, t, skips, gap_minutes=30, **OFF)

    # a: gaps 10, 30 (not > 30), 31 -> [x y z] [x w]; b: one session
    assert s.user_keys == ["a", "b"]
    assert _sessions_as_lists(s) == [
        ("a", ["x", "y", "z"], [0, 1, 0]),
        ("a", ["x", "w"], [0, 1]),
        ("b", ["y", "y"], [0, 1]),
    ]
    assert s.offsets.tolist() == [0, 3, 5, 7]
    assert s.times.tolist() == sorted(t[:5].tolist()) + sorted(t[5:].tolist())


def test_gap_from_latest_end_with_durations():
    # a 50-minute play keeps the listener active: the next start is 40 min
    # after the previous start but only 40 - 50 < 0 min after its end
    t = np.array([0, 40, 45, 120]) * MIN
    dur = np.array([50, 1, 1, 1]) * MIN
    items = ["a", "b", "c", "d"]
    s = from_events(["u"] * 4, items, t, [0] * 4, durations=dur, **OFF)
    assert s.lengths.tolist() == [3, 1]
    s = from_events(["u"] * 4, items, t, [0] * 4, **OFF)
    assert s.lengths.tolist() == [1, 2, 1]


def test_windows_split_long_sessions():
    n = 45
    t = np.arange(n) * MIN
    items = [f"i{k:02d}" for k in range(n)]
    s = from_events(["u"] * n, items, t, np.ones(n), max_len=20, min_len=None)
    assert s.lengths.tolist() == [20, 20, 5]
    first = [s.item_keys[s.session(i)[0][0]] for i in range(3)]
    assert first == ["i00", "i20", "i40"]

    s = from_events(["u"] * n, items, t, np.ones(n), max_len=20, min_len=6)
    assert s.lengths.tolist() == [20, 20]
    assert s.dropped["too_short"] == 5
    assert s.n_items == 41  # ids after filtering: the 5 dropped items are gone


def test_filters_count_every_dropped_row():
    rng = np.random.default_rng(1)
    users, items, times, skips = _random_events(rng, n_events=600)
    s = from_events(users, items, times, skips, min_len=6, max_len=8)
    kept = s.n_events
    assert kept + s.dropped["too_short"] + s.dropped["no_skip"] == 600
    assert kept > 0 and s.dropped["too_short"] > 0 and s.dropped["no_skip"] > 0
    assert s.lengths.min() >= 6 and s.lengths.max() <= 8
    for i in range(s.n_sessions):
        assert s.session(i)[1].sum() >= 1

    # filters off keep everything
    s_all = from_events(users, items, times, skips, **OFF)
    assert s_all.n_events == 600 and s_all.dropped == {}


def test_no_skip_filter_counts_rows_not_sessions():
    t = np.arange(14) * MIN
    skips = [0] * 7 + [0, 1, 0, 0, 0, 0, 0]
    s = from_events(["u"] * 14, list("abcdefghijklmn"), t, skips, max_len=7)
    assert s.n_sessions == 1 and s.dropped == {"too_short": 0, "no_skip": 7}


def test_ids_follow_sorted_keys_whatever_the_input_order():
    rng = np.random.default_rng(2)
    users, items, times, skips = _random_events(rng)
    ref = from_events(users, items, times, skips, min_len=3, max_len=6)
    assert ref.item_keys[0] == PAD_KEY
    assert ref.item_keys[1:] == sorted(ref.item_keys[1:])
    assert ref.user_keys == sorted(ref.user_keys)
    for _ in range(3):
        p = rng.permutation(len(items))
        other = from_events(
            [users[i] for i in p], items[p], times[p], skips[p], min_len=3, max_len=6
        )
        assert other.fingerprint() == ref.fingerprint()
        assert _sessions_as_lists(other) == _sessions_as_lists(ref)


def test_fingerprint_sees_every_array():
    rng = np.random.default_rng(3)
    s = from_events(*_random_events(rng), **OFF)
    fp = s.fingerprint()
    assert len(fp) == 64
    s.skips[0] ^= 1
    assert s.fingerprint() != fp
    s.skips[0] ^= 1
    s.item_keys[1] += "!"
    assert s.fingerprint() != fp


def test_session_ids_group_interleaved_rows():
    sid = ["s2", "s1", "s2", "s1", "s3"]
    items = ["a", "b", "c", "d", "e"]
    t = np.full(5, np.nan)  # unknown: input order is kept within a session
    s = from_events(["u"] * 5, items, t, [1, 0, 0, 1, 0], session_ids=sid, **OFF)
    assert [k for _, k, _ in _sessions_as_lists(s)] == [["a", "c"], ["b", "d"], ["e"]]
    assert np.isnan(s.times).all()

    # with times, sessions are ordered by their first time
    t = np.array([5.0, 1.0, 6.0, 2.0, 0.5])
    s = from_events(["u"] * 5, items, t, [1, 0, 0, 1, 0], session_ids=sid, **OFF)
    assert [k for _, k, _ in _sessions_as_lists(s)] == [["e"], ["b", "d"], ["a", "c"]]


def test_from_events_rejects_bad_input():
    t = np.arange(3.0)
    with pytest.raises(InputError, match="times: NaN"):
        from_events(["u"] * 3, list("abc"), [0, np.nan, 2], [0, 0, 0], **OFF)
    with pytest.raises(InputError, match="skips"):
        from_events(["u"] * 3, list("abc"), t, [0, 2, 0], **OFF)
    with pytest.raises(InputError, match="length"):
        from_events(["u"] * 2, list("abc"), t, [0, 1, 0], **OFF)
    with pytest.raises(InputError, match="users: missing key"):
        from_events(np.array(["u", None, "u"], dtype=object), list("abc"), t, [0] * 3)
    with pytest.raises(InputError, match="no events"):
        from_events([], [], [], [])


# ---------------------------------------------------------------------------
# Sessions validation


def _tiny(**change):
    fields = dict(
        items=np.array([1, 2, 1], dtype=np.int32),
        skips=np.array([0, 1, 0], dtype=np.uint8),
        times=np.array([0.0, 1.0, 2.0]),
        offsets=np.array([0, 2, 3], dtype=np.int64),
        users=np.array([0, 0], dtype=np.int32),
        item_keys=[PAD_KEY, "a", "b"],
        user_keys=["me"],
    )
    fields.update(change)
    return Sessions(**fields)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"items": np.array([1, 2, 1], dtype=np.int64)}, "items"),
        ({"items": np.array([1, 3, 1], dtype=np.int32)}, "items"),
        ({"items": np.array([0, 2, 1], dtype=np.int32)}, "items"),
        ({"skips": np.array([0, 2, 0], dtype=np.uint8)}, "skips"),
        ({"times": np.array([0.0, 1.0])}, "times"),
        ({"offsets": np.array([0, 2, 2, 3], dtype=np.int64)}, "offsets"),
        ({"offsets": np.array([0, 3], dtype=np.int64)}, "users"),
        ({"offsets": np.array([0, 2, 4], dtype=np.int64)}, "offsets"),
        ({"users": np.array([0, 1], dtype=np.int32)}, "users"),
        ({"item_keys": ["a", "b", "c"]}, "item_keys"),
    ],
)
def test_sessions_validation_names_the_field(change, field):
    with pytest.raises(InputError, match=f"Sessions.{field}"):
        _tiny(**change)


def test_sessions_accessors():
    s = _tiny()
    assert (s.n_items, s.n_sessions, s.n_events) == (3, 2, 3)
    assert s.skip_rate == pytest.approx(1 / 3, rel=1e-12, abs=1e-12)
    items, skips = s.session(1)
    assert items.tolist() == [1] and skips.tolist() == [0]
    with pytest.raises(InputError):
        s.session(2)


# ---------------------------------------------------------------------------
# splits


@pytest.fixture(scope="module")
def sessions():
    rng = np.random.default_rng(4)
    users, items, times, skips = _random_events(rng, n_events=1500, n_keys=80)
    return from_events(users, items, times, skips, min_len=2, max_len=30)


def test_leave_last_out(sessions):
    split = leave_last_out(sessions, max_len=4)
    ok = np.flatnonzero(sessions.lengths >= 3)
    assert split.dropped["too_short"] == sessions.n_sessions - len(ok) > 0
    assert split.test.session.tolist() == ok.tolist()
    assert split.train.n_items == sessions.n_items
    for j, i in enumerate(ok):
        items, skips = sessions.session(i)
        L = len(items)
        assert split.test.targets[j] == items[-1]
        assert split.test.target_skips[j] == skips[-1]
        assert split.valid.targets[j] == items[-2]
        assert split.train.session(j)[0].tolist() == items[:-2].tolist()

        # inputs: the last <= 4 items before the target, right-padded
        for ex, stop in ((split.valid, L - 2), (split.test, L - 1)):
            n = min(stop, 4)
            assert ex.lengths[j] == n
            assert ex.inputs[j, :n].tolist() == items[stop - n : stop].tolist()
            assert not ex.inputs[j, n:].any() and not ex.input_skips[j, n:].any()
            assert ex.input_skips[j, :n].tolist() == skips[stop - n : stop].tolist()


def test_temporal_split(sessions):
    split = temporal_split(sessions, valid_frac=0.15, test_frac=0.2, max_len=5)
    t1, t2 = split.cut_times
    assert t1 < t2
    train_max = split.train.times.max()
    test_sessions = np.unique(split.test.session)
    valid_sessions = np.unique(split.valid.session)
    test_times = np.concatenate([_times(sessions, i) for i in test_sessions])
    valid_times = np.concatenate([_times(sessions, i) for i in valid_sessions])

    # every test play after every training play, cut times respected
    assert train_max < t1 <= valid_times.min() and valid_times.max() < t2
    assert test_times.min() >= t2 > train_max
    n_dropped = sum(split.dropped.values())
    assert (
        split.train.n_sessions + len(valid_sessions) + len(test_sessions) + n_dropped
        == sessions.n_sessions
    )

    # one example per position t >= 1, input = up to 5 items before t
    assert len(split.test) == int((sessions.lengths[test_sessions] - 1).sum())
    for j in range(0, len(split.test), 7):
        items, _ = sessions.session(split.test.session[j])
        pos = np.flatnonzero(
            (split.test.session == split.test.session[j])[: j + 1]
        ).size
        assert split.test.targets[j] == items[pos]
        n = min(pos, 5)
        assert split.test.inputs[j, :n].tolist() == items[pos - n : pos].tolist()


def _times(s, i):
    return s.times[s.offsets[i] : s.offsets[i + 1]]


def test_temporal_split_rejects_bad_fractions(sessions):
    with pytest.raises(InputError):
        temporal_split(sessions, valid_frac=0.6, test_frac=0.4)
    with pytest.raises(InputError):
        temporal_split(sessions, valid_frac=-0.1)


# ---------------------------------------------------------------------------
# training batches


def test_training_batches(sessions):
    train = leave_last_out(sessions).train
    T = 6
    batches = list(training_batches(train, 32, T, np.random.default_rng(0)))
    rows = np.concatenate([b[0] for b in batches])
    skips = np.concatenate([b[1] for b in batches])
    assert all(b[0].shape[1] == T + 1 and b[0].dtype == np.int32 for b in batches)
    assert all(b[1].dtype == np.uint8 for b in batches)
    assert [len(b[0]) for b in batches[:-1]] == [32] * (len(batches) - 1)

    # every session with >= 2 items once: its last min(L, T+1) items
    expected = []
    for i in range(train.n_sessions):
        items, sk = train.session(i)
        if len(items) >= 2:
            n = min(len(items), T + 1)
            expected.append(
                tuple(items[-n:])
                + (0,) * (T + 1 - n)
                + tuple(sk[-n:])
                + (0,) * (T + 1 - n)
            )
    got = [tuple(r) + tuple(s) for r, s in zip(rows, skips, strict=True)]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(expected) < train.n_sessions

    # the same seed gives the same order, another seed another one
    again = next(training_batches(train, 32, T, np.random.default_rng(0)))[0]
    other = next(training_batches(train, 32, T, np.random.default_rng(1)))[0]
    assert np.array_equal(again, batches[0][0])
    assert not np.array_equal(other, batches[0][0])


# ---------------------------------------------------------------------------
# most_recent


def test_most_recent_keeps_latest_whole_sessions_and_renumbers_items():
    rng = np.random.default_rng(3)
    s = from_events(*_random_events(rng), **OFF)
    budget = int(s.lengths[-3:].sum()) + 1  # room for 3 sessions, not 4
    r = most_recent(s, budget)
    assert r.n_sessions == 3 and r.n_events <= budget
    assert _sessions_as_lists(r) == _sessions_as_lists(s)[-3:]
    assert sorted(set(r.items.tolist())) == list(range(1, r.n_items))
    with pytest.raises(InputError, match="last session alone"):
        most_recent(s, int(s.lengths[-1]) - 1)


def test_concat_pools_users_and_renumbers_items_by_sorted_key():
    rng = np.random.default_rng(4)
    a = from_events(*_random_events(rng, n_users=2, n_keys=10), **OFF)
    b = from_events(*_random_events(rng, n_users=3, n_keys=25), **OFF)
    ab = concat([a, b], user_keys=["a0", "a1", "b0", "b1", "b2"])
    assert ab.n_sessions == a.n_sessions + b.n_sessions
    assert ab.item_keys == [PAD_KEY] + sorted(set(a.item_keys[1:]) | set(b.item_keys[1:]))
    got = _sessions_as_lists(ab)
    want = [(("a" if i < a.n_sessions else "b") + u[-1], keys, sk)
            for i, (u, keys, sk) in enumerate(_sessions_as_lists(a) + _sessions_as_lists(b))]
    assert got == want
    split = leave_last_out(ab, max_len=5)
    mask = ab.users[split.test.session] >= 2  # the b listeners
    sub = subset(split.test, mask)
    assert len(sub.targets) == mask.sum() and np.all(ab.users[sub.session] >= 2)
    with pytest.raises(InputError):
        concat([])
