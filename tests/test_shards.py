"""nfcl.shards: out-of-core preprocessing into memory-mapped training shards.

The oracle is nfcl.io: on the same files, the shards must hold exactly the
sessions of load_mssd / load_events (items, skips, times, offsets, users,
keys, dropped counts, fingerprint), and raise the same DataError on
malformed input. Skipped when duckdb is not installed.
"""

import csv
import gzip
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

duckdb = pytest.importorskip("duckdb")

from nfcl import cli, shards
from nfcl.errors import DataError, InputError
from nfcl.io import _parse_bool, _parse_number, _parse_time, load_events, load_mssd
from nfcl.shards import open_shards, shard_events, shard_mssd

DATA = Path(__file__).parents[2] / "shared" / "data"
MSSD_SAMPLE = DATA / "mssd-llm-sample" / "mssd_sample_sessions.csv"
OFF = {"min_len": None, "require_skip": False, "max_len": None}
ARRAYS = ("items", "skips", "times", "offsets", "users")

MSSD_HEADER = [
    "session_id",
    "session_position",
    "session_length",
    "track_id_clean",
    "skip_1",
    "skip_2",
    "skip_3",
    "not_skipped",
    "context_switch",
    "no_pause_before_play",
    "short_pause_before_play",
    "long_pause_before_play",
    "hist_user_behavior_n_seekfwd",
    "hist_user_behavior_n_seekback",
    "hist_user_behavior_is_shuffle",
    "hour_of_day",
    "date",
    "premium",
    "context_type",
    "hist_user_behavior_reason_start",
    "hist_user_behavior_reason_end",
]


def assert_same(out_dir, ref):
    """The shards in out_dir hold exactly the Sessions ref."""
    s = open_shards(out_dir)
    got = s.to_sessions()
    for name in ARRAYS:
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.item_keys == ref.item_keys
    assert got.user_keys == ref.user_keys
    assert got.dropped == ref.dropped
    assert s.fingerprint == ref.fingerprint() == got.fingerprint()
    assert s.verify() == ref.fingerprint()

    # every shard is a Sessions over read-only memory maps, in one id space
    first = 0
    for i, part in enumerate(s):
        assert not part.items.flags.writeable and part.n_items == ref.n_items
        n = part.n_sessions
        np.testing.assert_array_equal(
            part.offsets, ref.offsets[first : first + n + 1] - ref.offsets[first]
        )
        assert s.manifest["shards"][i]["first_event"] == ref.offsets[first]
        first += n
    assert first == ref.n_sessions
    return s


def write_csv(path, header, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------------------
# MSSD logs


TRUE = ["True", "true", "1", " TRUE ", "1.0"]
FALSE = ["False", "false", "0", "0.0", "FALSE"]


def mssd_rows(rng, n_sessions, n_tracks=40, max_len=45):
    """Rows (dict per play) of MSSD sessions: partial and long sessions, keys
    with capitals, commas, quotes and non-ASCII, booleans in every accepted
    spelling."""
    tracks = [f"t_{k:03d}" for k in range(n_tracks - 6)] + [
        "T_UP",
        "t_Zed",
        "t_é",
        "t_日本",
        't_"quoted", x',
        "t_a\u2028b",
    ]
    rows = []
    for s in range(n_sessions):
        L = int(rng.integers(1, max_len + 1))
        start = int(rng.integers(1, 3))  # some sessions start at position 2
        for p in range(start, start + L):
            level = int(rng.integers(0, 4))
            flags = [level >= 3, level >= 2, level >= 1]
            pos = str(p) if rng.random() < 0.8 else rng.choice([f"{p}.0", f" {p} "])
            rows.append(
                {
                    "session_id": f"1_s{s:03d}",
                    "session_position": pos,
                    "session_length": str(start + L - 1),
                    "track_id_clean": str(rng.choice(tracks)),
                    **{
                        f"skip_{k + 1}": str(rng.choice(TRUE if b else FALSE))
                        for k, b in enumerate(flags)
                    },
                    "not_skipped": str(level == 0),
                }
            )
    return rows


def mssd_files(tmp_path, seed=0):
    """Three files (one gzipped, one with another column order) in which
    sessions are split across files, rows out of position order, and some
    rows repeated exactly."""
    rng = np.random.default_rng(seed)
    rows = mssd_rows(rng, 30)
    rows += [dict(r) for r in rng.choice(rows, 15, replace=False)]  # exact repeats
    order = rng.permutation(len(rows))
    parts = np.array_split([rows[i] for i in order], 3)
    headers = [MSSD_HEADER, MSSD_HEADER, ["extra"] + MSSD_HEADER[::-1]]
    paths = []
    for k, (part, header) in enumerate(zip(parts, headers, strict=True)):
        table = [[r.get(h, "0") for h in header] for r in part]
        name = f"log_{k}.csv" + (".gz" if k == 1 else "")
        paths.append(write_csv(tmp_path / name, header, table, gz=k == 1))
    return paths


@pytest.mark.parametrize(
    "filters",
    [
        {},
        OFF,
        {"max_len": 5, "min_len": 2},
        {"max_len": 20, "min_len": 3, "skip_level": 1},
        {"max_len": 7, "require_skip": True, "min_len": None, "skip_level": 3},
    ],
)
def test_mssd_matches_load_mssd(tmp_path, filters):
    paths = mssd_files(tmp_path)
    ref = load_mssd(paths, **filters)
    assert ref.dropped["duplicate"] > 0 and ref.n_sessions > 0
    m = shard_mssd(paths, tmp_path / "out", shard_events=37, **filters)
    s = assert_same(tmp_path / "out", ref)
    assert len(s) > 2 and m["source"] == ref.source
    assert m["n_events"] == ref.n_events and m["n_items"] == ref.n_items


def test_mssd_glob_and_folder(tmp_path):
    paths = mssd_files(tmp_path)
    ref = load_mssd(sorted(paths))
    shard_mssd(str(tmp_path / "log_*"), tmp_path / "a")
    assert_same(tmp_path / "a", ref)
    shard_mssd(tmp_path, tmp_path / "b")  # a folder: its .csv and .csv.gz files
    assert_same(tmp_path / "b", ref)


def test_mssd_real_sample(tmp_path):
    if not MSSD_SAMPLE.exists():
        pytest.skip(f"shared data not found: {MSSD_SAMPLE}")
    for filters in ({}, OFF, {"max_len": 5, "min_len": 2}):
        ref = load_mssd(MSSD_SAMPLE, **filters)
        shard_mssd(
            MSSD_SAMPLE, tmp_path / "out", shard_events=100, overwrite=True, **filters
        )
        assert_same(tmp_path / "out", ref)


def test_everything_filtered_out(tmp_path):
    paths = mssd_files(tmp_path)
    ref = load_mssd(paths, min_len=1000)
    assert ref.n_sessions == 0
    m = shard_mssd(paths, tmp_path / "out", min_len=1000)
    assert m["shards"] == [] and m["n_items"] == 1
    assert_same(tmp_path / "out", ref)


# ---------------------------------------------------------------------------
# event tables


def events_rows(rng, n=400):
    """user,item,timestamp,skip rows: ties in time, gaps of exactly and just
    over 30 minutes, long sessions, numeric and ISO times with zones,
    unsorted rows and exact repeats."""
    users = ["u0", "u1", "u2", "ü-3"]
    items = [f"i{k}" for k in range(25)] + ["a,b", "ä", "Z", "B"]
    rows, clock, used = [], {u: 1.6e9 for u in users}, {}
    for _ in range(n):
        u = str(rng.choice(users))
        step = float(rng.choice([0.0, 0.0, 30.0, 61.5, 1800.0, 1800.5, 7200.0]))
        clock[u] += step
        t = clock[u]
        taken = used.setdefault((u, t), set())  # ties in time: other items
        item = str(rng.choice([i for i in items if i not in taken]))
        taken.add(item)
        if rng.random() < 0.3:  # the same instant as an ISO string
            text = np.datetime_as_string(np.datetime64(int(t * 1e6), "us"))
            t_text = text + str(rng.choice(["", "Z", "+00:00"]))
        else:
            t_text = repr(t) if t != int(t) else str(int(t))
        rows.append([u, item, t_text, str(rng.choice(TRUE + FALSE))])
    rows += [list(r) for r in rng.choice(rows, 10, replace=False)]  # exact repeats
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize(
    "filters",
    [
        {},
        OFF,
        {"max_len": 4, "min_len": 2, "gap_minutes": None},
        {"gap_minutes": 1, "min_len": 1},
    ],
)
def test_events_matches_load_events(tmp_path, filters):
    rng = np.random.default_rng(1)
    path = write_csv(
        tmp_path / "plays.csv",
        ["user_id", "item_id", "timestamp", "skip"],
        events_rows(rng),
    )
    ref = load_events(path, **filters)
    assert ref.dropped["duplicate"] > 0 and ref.n_sessions > 0
    shard_events(path, tmp_path / "out", shard_events=50, **filters)
    assert_same(tmp_path / "out", ref)


def test_events_one_user_and_session_ids(tmp_path):
    rng = np.random.default_rng(2)
    rows = events_rows(rng)
    path = write_csv(
        tmp_path / "a.csv",
        ["item", "t", "skipped"],
        [[r[1] + r[0], r[2], r[3]] for r in rows],
    )
    names = {"user": None, "item": "item", "time": "t", "skip": "skipped"}
    ref = load_events(path, **names, **OFF)
    shard_events(path, tmp_path / "a", **names, **OFF)
    assert_same(tmp_path / "a", ref)

    # session ids: sessions ordered by their first time, not by the gap rule;
    # one row per (user, item, time), so that no repeat has another session id
    seen, rows_sid = set(), []
    for i, r in enumerate(rows):
        if tuple(r[:3]) not in seen:
            seen.add(tuple(r[:3]))
            rows_sid.append(r + [f"s{i % 7}"])
    path = write_csv(
        tmp_path / "b.csv", ["user_id", "item_id", "timestamp", "skip", "sid"], rows_sid
    )
    ref = load_events(path, session="sid", max_len=6, min_len=2)
    shard_events(path, tmp_path / "b", session="sid", max_len=6, min_len=2)
    assert_same(tmp_path / "b", ref)


def test_events_several_files_read_as_one_table(tmp_path):
    rng = np.random.default_rng(3)
    rows = events_rows(rng)
    header = ["user_id", "item_id", "timestamp", "skip"]
    whole = write_csv(tmp_path / "whole.csv", header, rows)
    a = write_csv(tmp_path / "p1.csv", header, rows[:150])
    b = write_csv(tmp_path / "p2.csv", header[::-1], [r[::-1] for r in rows[150:]])
    shard_events([a, b], tmp_path / "out")
    s = assert_same(tmp_path / "out", load_events(whole))
    assert s.manifest["input"]["rows"] == len(rows)


# ---------------------------------------------------------------------------
# values parsed as nfcl.io parses them


def _sql(con, macro, v):
    return con.execute(f"SELECT {macro}(?)", [v]).fetchall()[0][0]


def _iso_samples(n, seed=0):
    rnd = random.Random(seed)
    pick = rnd.choice
    out = []
    for _ in range(n):
        year = pick(["0000", "0001", "1969", "2021", "2024"])
        month = pick(["00", "01", "02", "12", "13"])
        date = f"{year}-{month}-{pick(['00', '01', '29', '31', '32'])}"
        time_ = pick(
            [
                "",
                "{s}09",
                "{s}23:59",
                "{s}24:00",
                "{s}10:60",
                "{s}10:00:59",
                "{s}10:00:60",
                "{s}10:00:00{f}",
            ]
        ).format(
            s=pick(["T", "t", " ", "X"]),
            f=pick([".1", ".123456", ".1234567", ",5", "."]),
        )
        zone = pick(
            [
                "",
                "Z",
                "z",
                "+01",
                "+0130",
                "+01:30",
                "-23:59",
                "+24:00",
                "+01:60",
                "+23:60",
                "-00:99",
                "+01:30:15",
                " +01:00",
            ]
        )
        out.append(pick(["", " ", "\u3000"]) + date + time_ + zone)
    return out


def test_values_parse_as_in_io():
    con = duckdb.connect()
    con.execute(shards._macros())
    ws = shards._WS

    # times: shards give the same float, or refuse a form outside the
    # documented subset (never a value nfcl.io refuses or reads otherwise)
    times = [
        "100",
        " 1.5e9 ",
        "1_000",
        "-0.5",
        ".5",
        "5.",
        "1e400",
        "nan",
        "inf",
        "",
        "  ",
        "0x10",
        "١",
        "1__0",
        "2021-03-01",
        "2021-03-01T10:00:00.5+01:00",
        "20210301T1000",
        "2021-W09-1",
        "yesterday",
    ] + _iso_samples(600)
    refused = []
    for v in times:
        want, got = _parse_time(v), _sql(con, "nfcl_time", v)
        if got is not None:
            assert want == got, v
        elif want is not None:
            t = v.strip(ws)
            assert not re.fullmatch(shards._ISO, t) and not re.fullmatch(
                shards._NUM, t
            ), v
            refused.append(v)
    assert "20210301T1000" in refused and len(refused) < len(times) / 3

    # booleans and MSSD positions: exactly nfcl.io's rule
    for v in [
        "1",
        "0",
        "true",
        "FALSE",
        " True ",
        "1.0",
        "0.0",
        "yes",
        "",
        "2",
        "tru e",
        "\u3000true\t",
    ]:
        assert _sql(con, "nfcl_bool", v) == _parse_bool(v), v
    for v in ["3", " 4 ", "5.0", "1_2", "2.5", "0", "-1", "1e2", "x", "", "١"]:
        want = _parse_number(v)
        got = _sql(con, "nfcl_float", v)
        assert got == want or (got is None and v == "١"), v


# ---------------------------------------------------------------------------
# malformed input: the same DataError as nfcl.io


def _both_raise(load, build):
    with pytest.raises(DataError) as a:
        load()
    with pytest.raises(DataError) as b:
        build()
    assert str(b.value) == str(a.value)
    return a.value


def _edit(rows, i, col, value):
    rows = [list(r) for r in rows]
    rows[i][col] = value
    return rows


MSSD_BAD = {
    "too many fields": lambda rows: [
        r + ["x"] if i == 7 else r for i, r in enumerate(rows)
    ],
    "too few fields": lambda rows: [r[:3] if i == 4 else r for i, r in enumerate(rows)],
    "bad boolean": lambda rows: _edit(rows, 9, 5, "yes"),
    "empty track": lambda rows: _edit(rows, 3, 3, "  "),
    "empty session": lambda rows: _edit(rows, 3, 0, ""),
    "fractional position": lambda rows: _edit(rows, 6, 1, "2.5"),
    "zero position": lambda rows: _edit(rows, 6, 1, "0"),
    "conflicting repeat": lambda rows: rows + [_edit(rows, 2, 3, "t_other")[2]],
}


@pytest.mark.parametrize("case", sorted(MSSD_BAD))
def test_mssd_malformed(tmp_path, case):
    rng = np.random.default_rng(4)
    rows = [[r.get(h, "0") for h in MSSD_HEADER] for r in mssd_rows(rng, 4, max_len=8)]
    good = write_csv(tmp_path / "a.csv", MSSD_HEADER, rows)
    bad = write_csv(tmp_path / "b.csv", MSSD_HEADER, MSSD_BAD[case](rows))
    e = _both_raise(
        lambda: load_mssd([good, bad]),
        lambda: shard_mssd([good, bad], tmp_path / "out"),
    )
    assert e.file == str(bad)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob(".nfcl-shard-*"))  # work folder removed


def test_malformed_files(tmp_path):
    rng = np.random.default_rng(5)
    rows = [[r.get(h, "0") for h in MSSD_HEADER] for r in mssd_rows(rng, 3)]
    cases = {
        "empty.csv": b"",
        "header.csv": (",".join(MSSD_HEADER) + "\n").encode(),
        "no_skip_3.csv": (
            ",".join(h for h in MSSD_HEADER if h != "skip_3") + "\n1,2\n"
        ).encode(),
        "latin1.csv": (
            ",".join(MSSD_HEADER)
            + "\n"
            + ",".join(rows[0])
            + "\n"
            + ",".join(rows[1]).replace("t_", "t_\xe9", 1)
            + "\n"
        ).encode("latin-1"),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        e = _both_raise(
            lambda p=path: load_mssd(p), lambda p=path: shard_mssd(p, tmp_path / "out")
        )
        assert name in str(e)
    with pytest.raises(InputError):
        load_mssd([])
    with pytest.raises(InputError):
        shard_mssd([], tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        shard_mssd(str(tmp_path / "nothing-*.csv"), tmp_path / "out")


EVENTS_BAD = {
    "bad time": lambda rows: _edit(rows, 5, 2, "yesterday"),
    "bad skip": lambda rows: _edit(rows, 5, 3, "maybe"),
    "empty user": lambda rows: _edit(rows, 8, 0, " "),
    "too few fields": lambda rows: [r[:2] if i == 4 else r for i, r in enumerate(rows)],
    "conflicting repeat": lambda rows: (
        rows + [rows[3][:3] + ["1" if rows[3][3] in FALSE else "0"]]
    ),
}


@pytest.mark.parametrize("case", sorted(EVENTS_BAD))
def test_events_malformed(tmp_path, case):
    rng = np.random.default_rng(6)
    seen, clean = set(), []
    for r in events_rows(
        rng, 30
    ):  # no exact repeats, so that the repeat below is row 3's
        if tuple(r[:3]) not in seen:
            seen.add(tuple(r[:3]))
            clean.append(r)
    path = write_csv(
        tmp_path / "e.csv",
        ["user_id", "item_id", "timestamp", "skip"],
        EVENTS_BAD[case](clean),
    )
    _both_raise(lambda: load_events(path), lambda: shard_events(path, tmp_path / "out"))


# ---------------------------------------------------------------------------
# reading, training, arguments, command line


def test_train_on_shards(tmp_path):
    from nfcl.models import SASRec

    paths = mssd_files(tmp_path)
    shard_mssd(paths, tmp_path / "out", shard_events=60, **OFF)
    s = open_shards(tmp_path / "out")
    model = SASRec(n_items=s.n_items, dim=8, heads=1, layers=1, max_len=20, seed=0)
    for i in (1, 0):
        model.fit(s[i], epochs=1, batch_size=8, loss="full", progress=False)
    assert len(model.history) == 2 and np.isfinite(model.history[-1]["loss"])


def test_reading_needs_no_duckdb(tmp_path):
    paths = mssd_files(tmp_path)
    m = shard_mssd(paths, tmp_path / "out")
    code = (
        "import sys; sys.modules['duckdb'] = None\n"
        "from nfcl.shards import open_shards\n"
        f"s = open_shards({str(tmp_path / 'out')!r})\n"
        "print(s.to_sessions().fingerprint(), 'duckdb' in sys.modules and "
        "sys.modules['duckdb'] is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [m["fingerprint"], "False"]


def test_arguments_and_overwrite(tmp_path):
    paths = mssd_files(tmp_path)
    shard_mssd(paths, tmp_path / "out")
    with pytest.raises(InputError, match="overwrite"):
        shard_mssd(paths, tmp_path / "out")
    shard_mssd(paths, tmp_path / "out", overwrite=True, max_len=4, min_len=None)
    assert_same(tmp_path / "out", load_mssd(paths, max_len=4, min_len=None))

    # a failed overwrite leaves the shards that were there, and no staging
    bad = tmp_path / "bad.csv"
    bad.write_text("session_id,session_position\nx,notanumber\n")
    with pytest.raises(DataError):
        shard_mssd([bad], tmp_path / "out", overwrite=True)
    assert_same(tmp_path / "out", load_mssd(paths, max_len=4, min_len=None))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".nfcl")]
    with pytest.raises(DataError):  # a new folder that fails is not left behind
        shard_mssd([bad], tmp_path / "never")
    assert not (tmp_path / "never").exists()
    for bad in (
        {"shard_events": 0},
        {"memory_limit": "lots"},
        {"skip_level": 4},
        {"max_len": 0},
        {"threads": 0},
    ):
        with pytest.raises(InputError):
            shard_mssd(paths, tmp_path / "x", **bad)
    with pytest.raises(InputError):
        shard_events(paths, tmp_path / "x", gap_minutes=-1)

    # a damaged shard is named
    (tmp_path / "out" / "shard-00000" / "skips.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="skips.npy"):
        open_shards(tmp_path / "out")[0]
    with pytest.raises(DataError, match="manifest"):
        open_shards(tmp_path)


def test_cli_shard(tmp_path, capsys):
    paths = mssd_files(tmp_path)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "shard",
                str(tmp_path / "log_*"),
                str(out),
                "--shard-events",
                "50",
                "--memory-limit",
                "256MB",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    ref = load_mssd(sorted(paths))
    assert f"fingerprint {ref.fingerprint()}" in capsys.readouterr().out
    assert_same(out, ref)

    ev = write_csv(
        tmp_path / "plays.csv",
        ["user_id", "item_id", "timestamp", "skip"],
        events_rows(np.random.default_rng(7)),
    )
    assert cli.main(["shard", str(ev), str(tmp_path / "ev"), "--no-filter"]) == 0
    assert_same(tmp_path / "ev", load_events(ev, min_len=None, require_skip=False))
    assert cli.main(["shard", str(ev), str(tmp_path / "ev")]) == 2  # exists already
    assert "overwrite" in capsys.readouterr().err


def test_documented_gaps_are_refused(tmp_path):
    # a time form nfcl.io reads but the out-of-core reader does not
    path = write_csv(
        tmp_path / "t.csv",
        ["user_id", "item_id", "timestamp", "skip"],
        [["u", "a", "100", "1"], ["u", "b", "20210301T1000", "0"]],
    )
    load_events(path, **OFF)
    with pytest.raises(DataError, match=r"t\.csv, line 3: a value the out-of-core"):
        shard_events(path, tmp_path / "out", **OFF)

    # text after a closing quote: Python's csv module appends it, DuckDB refuses
    path = tmp_path / "q.csv"
    path.write_text('user_id,item_id,timestamp,skip\nu,a,100,1\nu,"b"c,200,0\n')
    assert load_events(path, **OFF).item_keys == ["<pad>", "a", "bc"]
    with pytest.raises(DataError, match=r"q\.csv, line 3: rejected by DuckDB"):
        shard_events(path, tmp_path / "out", **OFF)

    # a quote inside an unquoted field is read alike
    path.write_text('user_id,item_id,timestamp,skip\nu,a,100,1\nu,b"c,200,0\n')
    shard_events(path, tmp_path / "out", **OFF)
    assert_same(tmp_path / "out", load_events(path, **OFF))
