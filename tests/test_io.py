"""Loaders: bundled example, Spotify CSV/JSON/folder/zip, MSSD, generic events,
and malformed input."""

import csv
import gzip
import json
import re
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from nfcl.errors import DataError, InputError
from nfcl.io import load_events, load_example, load_mssd, load_spotify, sniff_format
from nfcl.sessions import from_events

DATA = Path(__file__).parents[2] / "shared" / "data"
EXAMPLE = DATA / "spotify-extended-example" / "extended_example_sorted.csv"
MSSD = DATA / "mssd-llm-sample" / "mssd_sample_sessions.csv"
HISTORIES = DATA / "spotify-histories"
OFF = {"min_len": None, "require_skip": False, "max_len": None}


def need(path):
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------
# the bundled example and its source CSV


def test_load_example_bundled():
    s = load_example(**OFF)
    # 251 plays are listed twice in the source data (same end, ms and song)
    assert s.n_events == 10574
    assert s.dropped == {"no_track_name": 10, "duplicate": 251}
    assert s.n_items - 1 == 2025  # distinct (song, artist) pairs
    assert " - " in s.item_keys[1]
    assert s.user_keys == ["me"]
    assert "spotify_example" in s.source


def test_example_csv_counts():
    rows = list(csv.DictReader(need(EXAMPLE).open(encoding="utf-8")))
    assert len(rows) == 10835
    ms = np.array([float(r["ms_played"]) for r in rows])
    fwd = np.array([r["reason_end"] == "fwdbtn" for r in rows])
    # SOURCE.md counts every row, repeats included
    assert np.mean(ms < 30000) == pytest.approx(0.1657, abs=1e-4)
    assert np.mean(fwd) == pytest.approx(0.1545, abs=1e-4)

    # the loader keeps one of each repeated play (same end, ms and song)
    seen, named = set(), []
    for r in rows:
        play = (r["ts_utc"], r["ms_played"], r["song"], r["artist"])
        named.append(bool(r["song"]) and play not in seen)
        seen.add(play)
    named = np.array(named)
    s = load_spotify(EXAMPLE, **OFF)
    assert s.dropped["duplicate"] == 251
    assert s.n_events + s.dropped["no_track_name"] + 251 == 10835
    assert s.n_events == named.sum()
    assert s.skips.sum() == np.sum((ms < 30000) & named)
    f = load_spotify(EXAMPLE, skip_rule="fwdbtn", **OFF)
    assert f.skips.sum() == np.sum(fwd & named)
    both = load_spotify(EXAMPLE, skip_rule="fwdbtn_or_under30s", **OFF)
    assert both.skips.sum() == np.sum((fwd | (ms < 30000)) & named)
    u10 = load_spotify(EXAMPLE, skip_rule="under:10", **OFF)
    assert u10.skips.sum() == np.sum((ms < 10000) & named)

    # the bundled copy is the same data
    assert load_example(**OFF).fingerprint() == s.fingerprint()


def test_example_sessions_match_source_md():
    rows = list(csv.DictReader(need(EXAMPLE).open(encoding="utf-8")))
    end = np.array([iso(r["ts_utc"]) for r in rows])
    ms = np.array([float(r["ms_played"]) for r in rows]) / 1000
    keys = [f"{r['artist']} - {r['song']}" for r in rows]

    # SOURCE.md counts 832 sessions by > 30 min between consecutive end times
    s = from_events(["me"] * len(rows), keys, end, np.zeros(len(rows)), **OFF)
    assert s.n_sessions == 832

    # the loader measures idle time from the latest end of an earlier play
    named = np.array([bool(r["song"]) for r in rows])
    start, stop = (end - ms)[named], end[named]
    order = np.argsort(start, kind="stable")
    n, latest = 1, stop[order[0]]
    for i in order[1:]:
        n += start[i] - latest > 1800
        latest = max(latest, stop[i])
    loaded = load_spotify(EXAMPLE, **OFF)
    assert loaded.n_sessions == n
    assert abs(n - 832) <= 10

    # event time = end - ms_played; sorted within each session
    assert np.isclose(loaded.times.min(), start.min(), rtol=0, atol=1e-6)
    assert np.all(np.diff(loaded.times) >= 0)


def test_example_paper_filter():
    s = load_spotify(need(EXAMPLE), skip_rule="fwdbtn", min_len=6, max_len=20)
    assert s.lengths.min() >= 6 and s.lengths.max() <= 20
    assert all(s.session(i)[1].any() for i in range(s.n_sessions))
    total = s.n_events + sum(s.dropped.values())
    assert total == 10835


# ---------------------------------------------------------------------------
# Spotify JSON exports


def _extended(ts, ms, track, artist="Artist", uri=None, reason="trackdone"):
    return {
        "ts": ts,
        "username": "someone",
        "ms_played": ms,
        "master_metadata_track_name": track,
        "master_metadata_album_artist_name": artist if track else None,
        "master_metadata_album_album_name": "Album" if track else None,
        "spotify_track_uri": uri,
        "episode_name": None if track else "An episode",
        "reason_start": "clickrow",
        "reason_end": reason,
        "shuffle": False,
        "skipped": None,
    }


PLAYS = [
    _extended("2021-03-01T10:03:00Z", 180000, "Song A", uri="spotify:track:A"),
    _extended(
        "2021-03-01T10:03:20Z", 20000, "Song B", uri="spotify:track:B", reason="fwdbtn"
    ),
    _extended("2021-03-01T10:45:00Z", 2400000, None),  # a podcast episode
    _extended(
        "2021-03-01T10:46:00Z", 40000, "Song A", uri="spotify:track:A", reason="fwdbtn"
    ),
    _extended("2021-03-01T12:00:00Z", 200000, "Song C", uri=None),
]


def _write_json(path, records):
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def test_extended_json(tmp_path):
    s = load_spotify(_write_json(tmp_path / "hist.json", PLAYS), **OFF)
    assert s.dropped == {"no_track_name": 1, "duplicate": 0}
    assert s.item_keys == [
        "<pad>",
        "Artist - Song C",
        "spotify:track:A",
        "spotify:track:B",
    ]
    assert s.n_events == 4
    assert s.skips.tolist() == [0, 1, 0, 0]  # under 30 s: only Song B
    assert s.times[0] == iso("2021-03-01T10:03:00Z") - 180
    # Song A at 10:45:20 starts 41 min after 10:03:20; Song C 1 h later
    assert s.lengths.tolist() == [2, 1, 1]

    f = load_spotify(tmp_path / "hist.json", skip_rule="fwdbtn", **OFF)
    assert f.skips.tolist() == [0, 1, 1, 0]


def test_short_account_json_and_rule_without_reason_codes(tmp_path):
    short = [
        {
            "endTime": "2021-05-25 14:03",
            "artistName": "X",
            "trackName": "T1",
            "msPlayed": 5000,
        },
        {
            "endTime": "2021-05-25 14:07",
            "artistName": "X",
            "trackName": "T2",
            "msPlayed": 240000,
        },
        {
            "endTime": "2021-05-25 14:08",
            "artistName": "",
            "trackName": None,
            "msPlayed": 1,
        },
    ]
    path = _write_json(tmp_path / "StreamingHistory0.json", short)
    s = load_spotify(path, **OFF)
    assert s.item_keys[1:] == ["X - T1", "X - T2"] and s.skips.tolist() == [1, 0]
    assert s.times[1] == iso("2021-05-25T14:07:00") - 240
    with pytest.raises(DataError, match="reason_end") as e:
        load_spotify(path, skip_rule="fwdbtn")
    assert "StreamingHistory0.json, line 2" in str(e.value)


def test_folder_and_zip_give_the_same_sessions(tmp_path):
    folder = tmp_path / "export" / "Spotify Extended Streaming History"
    folder.mkdir(parents=True)
    _write_json(folder / "Streaming_History_Audio_2021_0.json", PLAYS[:2])
    _write_json(folder / "Streaming_History_Audio_2021_1.json", PLAYS[2:])
    (folder / "ReadMeFirst.pdf").write_bytes(b"%PDF")
    _write_json(folder / "Userdata.json", {"username": "someone"})
    one = load_spotify(_write_json(tmp_path / "all.json", PLAYS), **OFF)
    from_folder = load_spotify(tmp_path / "export", **OFF)
    assert from_folder.fingerprint() == one.fingerprint()
    assert from_folder.dropped == one.dropped

    archive = tmp_path / "my_spotify_data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.iterdir():
            z.write(p, f"Spotify Extended Streaming History/{p.name}")
    assert load_spotify(archive, **OFF).fingerprint() == one.fingerprint()


def test_csv_gz_and_user_column(tmp_path):
    path = tmp_path / "plays.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "ts_utc", "ms_played", "track", "artist"])
        w.writerow(["b", "2022-01-01T10:00:00Z", "1000", "T", "A"])
        w.writerow(["a", "2022-01-01T10:05:00Z", "100000", "U", "A"])
    s = load_spotify(path, **OFF)
    assert s.user_keys == ["a", "b"] and s.users.tolist() == [0, 1]


# ---------------------------------------------------------------------------
# spotify-histories


def test_spotify_histories_columns_and_counts():
    path = need(HISTORIES / "u33.csv")
    with path.open(encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["ts_utc", "ms_played", "track"]
    s = load_spotify(path, **OFF)
    readme = (HISTORIES / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| u33 |"))
    cells = [c.strip() for c in row.split("|")]
    plays, tracks, sessions = (int(cells[i].replace(",", "")) for i in (3, 5, 6))
    under30 = float(cells[7].rstrip(" %")) / 100
    assert s.n_events == plays and s.n_items - 1 == tracks
    assert s.n_sessions == sessions
    assert s.skip_rate == pytest.approx(under30, abs=1e-3)

    # account exports have no reason codes
    with pytest.raises(DataError, match=r"u33.csv, line 2, column 'reason_end'"):
        load_spotify(path, skip_rule="fwdbtn")


def test_spotify_histories_extended_uris():
    path = need(HISTORIES / "u01.csv")
    s = load_spotify(path, skip_rule="fwdbtn", min_len=6, max_len=20)
    assert all(k.startswith("spotify:track:") for k in s.item_keys[1:])
    assert s.skip_rate > 0.2


# ---------------------------------------------------------------------------
# MSSD


def test_mssd_sample():
    path = need(MSSD)
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    levels = [sum(r[f"skip_{k}"] == "True" for k in (1, 2, 3)) for r in rows]
    s = load_mssd(path, **OFF)
    assert (s.n_sessions, s.n_events) == (169, 1180)
    assert s.skips.sum() == sum(v >= 2 for v in levels)
    assert load_mssd(path, skip_level=1, **OFF).skips.sum() == sum(
        v >= 1 for v in levels
    )

    # paper filter: more than 5 plays and at least one skip (level > 1)
    paper = load_mssd(path, min_len=6, require_skip=True, max_len=20)
    assert paper.n_sessions == 103
    assert (
        paper.dropped["too_short"] + paper.dropped["no_skip"] + paper.n_events == 1180
    )

    # order: by position within a session, sessions in file order
    first = rows[0]["session_id"]
    mine = sorted(
        (int(r["session_position"]), r["track_id_clean"])
        for r in rows
        if r["session_id"] == first
    )
    items, _ = s.session(0)
    assert [s.item_keys[i] for i in items] == [t for _, t in mine]
    assert mine[0][0] == 2  # partial sessions: positions start at 2 here
    assert np.all(np.diff(s.times) > 0)


def _mssd_csv(path, rows):
    cols = ["session_id", "session_position", "session_length", "track_id_clean"]
    cols += ["skip_1", "skip_2", "skip_3", "not_skipped"]
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return path


def test_mssd_orders_by_position_and_accepts_0_1(tmp_path):
    rows = [
        ["s1", 4, 10, "t4", 1, 1, 1, 0],
        ["s2", 1, 10, "u1", 0, 0, 0, 1],
        ["s1", 3, 10, "t3", 0, 0, 1, 0],
        ["s1", 5, 10, "t5", "true", "false", "false", "false"],
    ]
    s = load_mssd(_mssd_csv(tmp_path / "log.csv", rows), **OFF)
    items, skips = s.session(0)
    assert [s.item_keys[i] for i in items] == ["t3", "t4", "t5"]
    assert skips.tolist() == [0, 1, 0]
    assert s.n_sessions == 2

    rows.append(["s1", 4, 10, "t9", 0, 0, 0, 1])
    with pytest.raises(DataError, match=r"log.csv, line 6, column 'session_position'"):
        load_mssd(_mssd_csv(tmp_path / "log.csv", rows), **OFF)
    with pytest.raises(InputError, match="skip_level"):
        load_mssd(tmp_path / "log.csv", skip_level=4)


# ---------------------------------------------------------------------------
# generic events


def test_load_events_csv_dict_and_dataframe(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp,skip\n"
        "u1,a,2020-01-01T00:00:00Z,0\n"
        "u1,b,1577836860,true\n"  # 00:01:00 as unix seconds
        "u2,a,2020-01-01T05:00:00+02:00,False\n"
        "u1,c,2020-01-01T03:00:00,1\n",
        encoding="utf-8",
    )
    s = load_events(path, **OFF)
    assert s.user_keys == ["u1", "u2"]
    assert [s.item_keys[i] for i in s.items] == ["a", "b", "c", "a"]
    assert s.skips.tolist() == [0, 1, 1, 0]
    assert s.lengths.tolist() == [2, 1, 1]
    assert s.times[-1] == iso("2020-01-01T03:00:00Z")

    table = {
        "user_id": ["u1", "u1", "u2", "u1"],
        "item_id": ["a", "b", "a", "c"],
        "timestamp": np.array([1577836800, 1577836860, 1577847600, 1577847600]),
        "skip": np.array([False, True, False, True]),
    }
    assert load_events(table, **OFF).fingerprint() == s.fingerprint()

    class Column:  # the part of a pandas Series load_events uses
        def __init__(self, values):
            self.values = values

        def to_numpy(self):
            return np.asarray(self.values)

    class Frame:
        def __init__(self, d):
            self.d = d
            self.columns = list(d)

        def __getitem__(self, k):
            return Column(self.d[k])

    frame = dict(table, timestamp=np.array(table["timestamp"], dtype="datetime64[s]"))
    assert load_events(Frame(frame), **OFF).fingerprint() == s.fingerprint()

    # explicit session ids and no user column
    with_ids = dict(table, sid=["x", "x", "y", "y"])
    t = load_events(with_ids, user=None, session="sid", **OFF)
    assert t.lengths.tolist() == [2, 2] and t.user_keys == ["me"]


# ---------------------------------------------------------------------------
# repeated plays and row order


def test_doubled_spotify_export_is_counted_not_kept(tmp_path):
    one = load_spotify(_write_json(tmp_path / "one.json", PLAYS), **OFF)
    folder = tmp_path / "export"
    folder.mkdir()
    _write_json(folder / "Streaming_History_Audio_0.json", PLAYS)
    _write_json(folder / "Streaming_History_Audio_0 (1).json", PLAYS)
    two = load_spotify(folder, **OFF)
    assert two.fingerprint() == one.fingerprint()
    n_music = sum(p["master_metadata_track_name"] is not None for p in PLAYS)
    assert two.dropped == {"no_track_name": 2, "duplicate": n_music}
    assert two.n_events + sum(two.dropped.values()) == 2 * len(PLAYS)

    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.iterdir():
            z.write(p, p.name)
    assert load_spotify(archive, **OFF).fingerprint() == one.fingerprint()

    # order does not matter: exports are sorted by event time
    back = load_spotify(_write_json(tmp_path / "back.json", PLAYS[::-1]), **OFF)
    assert back.fingerprint() == one.fingerprint()


def test_repeated_spotify_play_keeps_the_longest_record(tmp_path):
    # one play (start 10:00:00) logged twice, ending 10:00:20 and 10:00:40
    short = _extended("2021-03-01T10:00:20Z", 20000, "S", uri="spotify:track:S")
    full = _extended("2021-03-01T10:00:40Z", 40000, "S", uri="spotify:track:S")
    for plays in ([short, full], [full, short]):
        s = load_spotify(_write_json(tmp_path / "h.json", plays), **OFF)
        assert s.n_events == 1 and s.dropped["duplicate"] == 1
        assert s.skips.tolist() == [0]  # 40 s played: not a skip
        assert s.times[0] == iso("2021-03-01T10:00:00Z")


def test_repeated_event_rows(tmp_path):
    path = tmp_path / "ev.csv"
    header = "user_id,item_id,timestamp,skip,sid\n"
    rows = "u,a,10,0,s1\nu,b,20,1,s1\nu,a,10,0,s1\nv,a,10,0,s2\n"
    path.write_text(header + rows, encoding="utf-8")
    s = load_events(path, **OFF)
    assert s.n_events == 3 and s.dropped == {"duplicate": 1}
    once = load_events(
        {
            "user_id": ["u", "u", "v"],
            "item_id": ["a", "b", "a"],
            "timestamp": [10, 20, 10],
            "skip": [0, 1, 0],
        },
        **OFF,
    )
    assert once.fingerprint() == s.fingerprint()
    assert load_events(path, session="sid", **OFF).dropped == {"duplicate": 1}

    # a repeat that disagrees is ambiguous: refused at its line and column
    path.write_text(header + "u,a,10,0,s1\nu,b,20,1,s1\nu,a,10,1,s1\n")
    with pytest.raises(DataError, match=r"line 4, column 'skip'.*line 2") as e:
        load_events(path, **OFF)
    assert str(e.value).startswith(str(path))
    path.write_text(header + "u,a,10,0,s1\nu,a,10,0,s2\n")
    assert load_events(path, **OFF).n_events == 1
    with pytest.raises(DataError, match=r"line 3, column 'sid'.*line 2"):
        load_events(path, session="sid", **OFF)
    with pytest.raises(DataError, match=r"<dict>, row 2, column 'skip'.*row 0"):
        load_events(
            {
                "user_id": [1, 1, 1],
                "item_id": [5, 6, 5],
                "timestamp": [1.0, 2.0, 1.0],
                "skip": [0, 0, 1],
            }
        )


def test_event_rows_are_ordered_by_time_within_a_session(tmp_path):
    path = tmp_path / "ev.csv"
    path.write_text(
        "user_id,item_id,timestamp,skip,sid\n"
        "u,c,30,0,s1\nu,x,5,1,s2\nu,a,10,1,s1\nu,b,20,0,s1\n",
        encoding="utf-8",
    )
    s = load_events(path, session="sid", gap_minutes=None, **OFF)
    assert s.n_sessions == 2
    items, skips = s.session(1)
    assert [s.item_keys[i] for i in items] == ["a", "b", "c"]
    assert skips.tolist() == [1, 0, 0]
    assert np.all(np.diff(s.times[s.offsets[1] :]) > 0)


def test_mssd_repeated_rows(tmp_path):
    rows = [
        ["s1", 1, 3, "t1", 0, 0, 0, 1],
        ["s1", 2, 3, "t2", 1, 1, 0, 0],
        ["s2", 1, 3, "u1", 0, 0, 0, 1],
    ]
    once = load_mssd(_mssd_csv(tmp_path / "a.csv", rows), **OFF)
    assert once.dropped == {"duplicate": 0}
    twice = load_mssd([tmp_path / "a.csv", tmp_path / "a.csv"], **OFF)
    assert twice.fingerprint() == once.fingerprint()
    assert twice.dropped == {"duplicate": 3}
    again = load_mssd(_mssd_csv(tmp_path / "b.csv", rows + rows[1:2]), **OFF)
    assert again.fingerprint() == once.fingerprint()
    assert again.dropped == {"duplicate": 1}

    # same position, other skip flags (same level): refused
    bad = rows + [["s1", 2, 3, "t2", 1, 0, 1, 0]]
    with pytest.raises(DataError, match=r"c.csv, line 5, column 'session_position'"):
        load_mssd(_mssd_csv(tmp_path / "c.csv", bad), **OFF)


# ---------------------------------------------------------------------------
# malformed input: every error names the file, the line and the column


def _spotify_csv(tmp_path, body, header="ts_utc,ms_played,song,artist,reason_end"):
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n" + body, encoding="utf-8")
    return path


GOOD_ROW = "2021-01-01T00:10:00Z,200000,S,A,trackdone\n"


@pytest.mark.parametrize(
    "header, body, where, what",
    [
        (
            "ts_utc,song,artist",
            "2021-01-01T00:00:00Z,S,A\n",
            "line 1, column 'ms_played'",
            "missing column",
        ),
        (
            None,
            GOOD_ROW + "2021-01-01T00:20:00Z,12s,S,A,fwdbtn\n",
            "line 3, column 'ms_played'",
            "'12s'",
        ),
        (
            None,
            GOOD_ROW + "yesterday,1000,S,A,fwdbtn\n",
            "line 3, column 'ts_utc'",
            "ISO-8601",
        ),
        (
            None,
            GOOD_ROW + "2021-01-01T00:20:00Z,,S,A,fwdbtn\n",
            "line 3, column 'ms_played'",
            "ms",
        ),
        (
            None,
            GOOD_ROW + "2021-01-01T00:20:00Z,1000,S,A\n",
            "line 3",
            "expected 5 fields",
        ),
        (None, "", "line 2", "no data rows"),
    ],
)
def test_bad_spotify_csv(tmp_path, header, body, where, what):
    path = _spotify_csv(tmp_path, body, *([header] if header else []))
    with pytest.raises(DataError) as e:
        load_spotify(path, **OFF)
    msg = str(e.value)
    assert msg.startswith(str(path)) and where in msg and what in msg, msg


def test_empty_files(tmp_path):
    for name in ("empty.csv", "empty.json"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match=f"{name}: empty file"):
            load_spotify(tmp_path / name)
    with pytest.raises(DataError, match="empty file"):
        load_mssd(tmp_path / "empty.csv")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"ts_utc,ms_played,song,artist\n"
        b"2021-01-01T00:10:00Z,200000,S,A\n"
        b"2021-01-01T00:20:00Z,1000,Caf\xe9,A\n"  # latin-1 e-acute, byte 30
    )
    with pytest.raises(
        DataError, match=r"latin1.csv, line 3, column 30: not UTF-8 .*0xe9"
    ):
        load_spotify(path)
    js = tmp_path / "latin1.json"
    js.write_bytes(b'[\n{"ts": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin1.json, line 2, column 12: not UTF-8"):
        load_spotify(js)


def test_truncated_and_invalid_json(tmp_path):
    text = json.dumps(PLAYS, indent=2)
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(
        DataError, match=r"cut.json, line \d+, column \d+: truncated JSON"
    ):
        load_spotify(cut)

    bad = tmp_path / "bad.json"
    bad.write_text(
        '[\n  {"ts": "2021-01-01T00:00:00Z"}\n  {"ts": 1}\n]', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"bad.json, line 3, column 3: invalid JSON"):
        load_spotify(bad)

    notlist = _write_json(tmp_path / "obj.json", {"ts": "x"})
    with pytest.raises(
        DataError, match="obj.json, line 1, column 1: expected a JSON array"
    ):
        load_spotify(notlist)

    wrong = _write_json(
        tmp_path / "wrong.json", PLAYS[:1] + [dict(PLAYS[0], ms_played="x")]
    )
    with pytest.raises(DataError) as e:
        load_spotify(wrong)
    line = json.dumps(PLAYS[:1] + [PLAYS[0]], indent=2).splitlines().index("  {", 2) + 1
    assert f"wrong.json, line {line}, column 'ms_played': play 2" in str(e.value)


def test_bad_event_values(tmp_path):
    path = tmp_path / "ev.csv"
    header = "user_id,item_id,timestamp,skip\n"
    cases = [
        ("u,a,1000,maybe\n", "line 2, column 'skip'", "unknown skip value 'maybe'"),
        ("u,a,nan,0\n", "line 2, column 'timestamp'", "not a unix time"),
        ("u,a,,0\n", "line 2, column 'timestamp'", "not a unix time"),
        ("u,,1000,0\n", "line 2, column 'item_id'", "empty value"),
    ]
    for body, where, what in cases:
        path.write_text(header + "u,a,10,0\n" + body, encoding="utf-8")
        with pytest.raises(DataError) as e:
            load_events(path, **OFF)
        msg = str(e.value).replace("line 3", "line 2")  # the good row comes first
        assert where in msg and what in msg, msg
    with pytest.raises(DataError, match="line 1, column 'user'"):
        load_events(path, user="user")
    with pytest.raises(DataError, match=r"<dict>, row 1, column 'timestamp'"):
        load_events(
            {
                "user_id": [1, 2],
                "item_id": [1, 2],
                "timestamp": [1.0, np.nan],
                "skip": [0, 1],
            }
        )
    with pytest.raises(DataError, match=r"<dict>, row 1, column 'item_id': empty"):
        load_events(
            {
                "user_id": [1, 2],
                "item_id": ["a", ""],
                "timestamp": [1, 2],
                "skip": [0, 1],
            }
        )
    with pytest.raises(DataError, match=r"<dict>, row 0, column 'skip'.*'2'"):
        load_events({"user_id": [1], "item_id": [1], "timestamp": [1.0], "skip": ["2"]})


def test_bad_mssd_boolean(tmp_path):
    rows = [["s1", 1, 10, "t1", "True", "yes", "False", "False"]]
    path = _mssd_csv(tmp_path / "m.csv", rows)
    with pytest.raises(
        DataError, match=r"m.csv, line 2, column 'skip_2': unknown boolean 'yes'"
    ):
        load_mssd(path)
    rows = [["s1", "first", 10, "t1", 1, 1, 1, 0]]
    path = _mssd_csv(tmp_path / "m.csv", rows)
    with pytest.raises(DataError, match=r"line 2, column 'session_position'"):
        load_mssd(path)


def test_bad_archives_and_rules(tmp_path):
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(gzip.compress(b"ts_utc,ms_played,song,artist\n" * 500)[:100])
    with pytest.raises(DataError, match="cut.csv.gz"):
        load_spotify(gz)
    archive = tmp_path / "none.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="no .json files"):
        load_spotify(archive)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip"):
        load_spotify(tmp_path / "fake.zip")
    with pytest.raises(InputError, match="skip_rule"):
        load_spotify(archive, skip_rule="under:abc")


def test_errors_are_value_errors():
    assert issubclass(DataError, ValueError) and issubclass(InputError, ValueError)
    e = DataError("bad", "f.csv", 3, "col")
    assert str(e) == "f.csv, line 3, column 'col': bad"
    assert (e.file, e.line, e.column) == ("f.csv", 3, "col")
    assert re.fullmatch("bad", str(DataError("bad")))


def test_sniff_format(tmp_path):
    rows = [["s1", 1, 10, "t1", 1, 1, 1, 0]]
    assert sniff_format(_mssd_csv(tmp_path / "m.csv", rows)) == "mssd"
    assert sniff_format(_spotify_csv(tmp_path, GOOD_ROW)) == "spotify"
    assert sniff_format(_write_json(tmp_path / "h.json", PLAYS)) == "spotify"
    assert sniff_format(tmp_path) == "spotify"
    ev = tmp_path / "ev.csv"
    ev.write_text("user_id,item_id,timestamp,skip\nu,a,1,0\n", encoding="utf-8")
    assert sniff_format(ev) == "events"
