"""Loaders that turn listening logs into Sessions.

Every loader reads its input with the csv or json module, checks each value,
and hands the plays to `nfcl.sessions.from_events`; keyword arguments such
as gap_minutes, min_len, require_skip and max_len pass through to it.
Malformed input raises DataError naming the file, line and column.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError, InputError
from .sessions import Sessions, from_events

__all__ = ["load_events", "load_example", "load_mssd", "load_spotify", "sniff_format"]

# ---------------------------------------------------------------------------
# reading text


def _decoded_lines(raw: Iterable[bytes], label: str) -> Iterator[str]:
    """Decode UTF-8 line by line so an error can name its line and byte."""
    for n, line in enumerate(raw, 1):
        try:
            yield line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            byte = line[e.start]
            msg = f"not UTF-8 text: byte 0x{byte:02x}"
            raise DataError(msg, label, line=n, column=e.start + 1) from None


def _open_binary(path: Path):
    """Binary file object; .gz files are decompressed."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


class _Table:
    """A CSV file read row by row: header lookup and located errors."""

    def __init__(self, lines: Iterable[str], label: str):
        self.label = label
        self._reader = csv.reader(lines)
        header = self._next()
        if header is None:
            raise DataError("empty file", label)
        self.header = [h.strip() for h in header]
        self.index: dict[str, int] = {}
        for i, h in enumerate(self.header):
            self.index.setdefault(h, i)

    def _next(self) -> list[str] | None:
        try:
            return next(self._reader)
        except StopIteration:
            return None
        except csv.Error as e:
            raise DataError(
                f"bad CSV: {e}", self.label, self._reader.line_num
            ) from None

    def col(self, *names: str, required: bool = True) -> int | None:
        """Index of the first of `names` in the header (None if optional)."""
        for name in names:
            if name in self.index:
                return self.index[name]
        if required:
            have = ", ".join(self.header)
            msg = f"missing column {names[0]!r} (header has: {have})"
            raise DataError(msg, self.label, line=1, column=names[0])
        return None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, fields) for every non-blank data row."""
        n_rows = 0
        while (row := self._next()) is not None:
            if not row:
                continue
            line = self._reader.line_num
            if len(row) != len(self.header):
                msg = f"expected {len(self.header)} fields, got {len(row)}"
                raise DataError(msg, self.label, line)
            n_rows += 1
            yield line, row
        if n_rows == 0:
            raise DataError("no data rows after the header", self.label, line=2)

    def error(self, msg: str, line: int, col: int) -> DataError:
        return DataError(msg, self.label, line, self.header[col])


def _csv_table(path: Path, label: str | None = None):
    """Open path (.csv or .csv.gz) and return (file, _Table)."""
    label = label or str(path)
    f = _open_binary(path)
    try:
        return f, _Table(_decoded_lines(_guard_gzip(f, label), label), label)
    except BaseException:
        f.close()
        raise


def _guard_gzip(f, label: str) -> Iterator[bytes]:
    """Iterate lines of f, turning a broken gzip stream into DataError."""
    try:
        yield from f
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read compressed data: {e}", label) from None


# ---------------------------------------------------------------------------
# parsing values

_TRUE = {"1", "true", "1.0"}
_FALSE = {"0", "false", "0.0"}


def _parse_bool(text: str) -> bool | None:
    """True/False for 0/1/true/false (any case), None if unknown."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    return None


def _parse_number(text: str) -> float | None:
    """A finite float, or None if text is not one."""
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _iso_seconds(text: str) -> float | None:
    """Unix seconds of an ISO-8601 date-time (UTC when no zone), None if invalid."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        d = datetime.fromisoformat(t)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def _parse_time(text: str) -> float | None:
    """Unix seconds from a number or an ISO-8601 string, None if neither.

    NaN and infinite numbers count as invalid.
    """
    t = text.strip()
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        return _iso_seconds(t)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------
# repeated rows


def _repeats(keys: list[np.ndarray], prefer: np.ndarray | None = None):
    """Find rows equal in every key column to another row.

    In each group of equal rows the kept row is the one with the smallest
    `prefer` value, the earliest on ties (all sorts here are stable).

    Shapes:
        keys: arrays (E,); prefer (E,) or None.

    Returns:
        (dup int64 (D,), kept int64 (D,)): each repeat and the row kept for it.
    """
    codes = [np.unique(k, return_inverse=True)[1].ravel() for k in keys]
    sort_keys = codes[::-1] if prefer is None else [prefer] + codes[::-1]
    order = np.lexsort(sort_keys)
    same = np.ones(max(len(order) - 1, 0), dtype=bool)
    for c in codes:
        c = c[order]
        same &= c[1:] == c[:-1]
    head = np.concatenate([[True], ~same])
    group = np.cumsum(head) - 1
    kept = order[np.flatnonzero(head)][group]
    dup = ~head
    return order[dup].astype(np.int64), kept[dup].astype(np.int64)


# ---------------------------------------------------------------------------
# Spotify


_SKIP_RULES = ("under30s", "under:<seconds>", "fwdbtn", "fwdbtn_or_under30s")


def _skip_rule(rule: str) -> tuple[float | None, bool]:
    """(threshold in ms or None, use reason_end == 'fwdbtn') for a rule name."""
    if rule == "under30s":
        return 30000.0, False
    if rule == "fwdbtn":
        return None, True
    if rule == "fwdbtn_or_under30s":
        return 30000.0, True
    if isinstance(rule, str) and rule.startswith("under:"):
        secs = _parse_number(rule[len("under:") :])
        if secs is not None and secs > 0:
            return 1000.0 * secs, False
    raise InputError(f"skip_rule: unknown rule {rule!r}; expected one of {_SKIP_RULES}")


class _Plays:
    """Spotify plays gathered from one or more files, before sessionising."""

    def __init__(self, skip_rule: str, user_key: str):
        self.rule = skip_rule
        self.thr_ms, self.fwd = _skip_rule(skip_rule)
        self.user_key = user_key
        self.users: list[str] = []
        self.keys: list[str] = []
        self.ends: list[float] = []
        self.ms: list[float] = []
        self.skips: list[bool] = []
        self.no_track = 0

    def add(self, err, user, ts, ms, track, artist, uri, reason) -> None:
        """Add one play. err(message, field) builds a located DataError;
        field is one of "time", "ms", "reason"."""
        if not track:
            self.no_track += 1
            return
        end = _iso_seconds(ts) if isinstance(ts, str) else None
        if end is None:
            raise err(f"not an ISO-8601 time: {ts!r}", "time")
        ms_raw = ms
        if isinstance(ms, str):
            ms = _parse_number(ms)
        elif isinstance(ms, bool) or not isinstance(ms, (int, float)):
            ms = None
        if ms is None or not 0 <= ms < math.inf:
            raise err(f"not a play time in ms (a number >= 0): {ms_raw!r}", "ms")

        # skip flag by the chosen rule
        skip = self.thr_ms is not None and ms < self.thr_ms
        if self.fwd:
            if not reason:
                msg = (
                    f"reason_end is missing: skip_rule {self.rule!r} needs Spotify's "
                    "reason codes (extended history); use skip_rule='under30s'"
                )
                raise err(msg, "reason")
            skip = skip or reason == "fwdbtn"

        self.users.append(user or self.user_key)
        self.keys.append(sys.intern(uri if uri else f"{artist or ''} - {track}"))
        self.ends.append(end)
        self.ms.append(ms)
        self.skips.append(skip)

    def sessions(self, source: str, filters: dict) -> Sessions:
        if not self.keys:
            raise DataError("no music plays found", source)
        ms = np.asarray(self.ms, dtype=np.float64)
        users, keys = np.asarray(self.users), np.asarray(self.keys)
        start = np.asarray(self.ends) - ms / 1000.0
        skips = np.asarray(self.skips, dtype=bool)

        # one play per (user, start, track): the longest record is kept
        dup, _ = _repeats([users, start, keys], prefer=-ms)
        keep = np.ones(len(keys), dtype=bool)
        keep[dup] = False
        dropped = {"no_track_name": self.no_track, "duplicate": len(dup)}
        return from_events(
            users[keep],
            keys[keep],
            start[keep],
            skips[keep],
            durations=ms[keep] / 1000.0,
            source=source,
            dropped=dropped,
            **filters,
        )


# column names accepted in Spotify CSV files, first match wins
_CSV_NAMES = {
    "time": ("ts_utc", "ts", "endTime", "end_time"),
    "ms": ("ms_played", "msPlayed"),
    "track": ("song", "track", "master_metadata_track_name", "trackName", "track_name"),
    "artist": (
        "artist",
        "master_metadata_album_artist_name",
        "artistName",
        "artist_name",
    ),
    "uri": ("track_uri", "spotify_track_uri"),
    "reason": ("reason_end",),
    "user": ("user", "user_id"),
}


def _spotify_csv(path: Path, plays: _Plays, label: str) -> None:
    f, tab = _csv_table(path, label)
    with f:
        c = {
            k: tab.col(*names, required=k in ("time", "ms", "track"))
            for k, names in _CSV_NAMES.items()
        }
        if plays.fwd and c["reason"] is None:
            tab.col("reason_end")  # raises: the rule needs reason codes
        tab.col(*_CSV_NAMES["artist"], required=c["uri"] is None)

        def get(row, k):
            return row[c[k]] if c[k] is not None else ""

        for line, row in tab.rows():

            def err(msg, k, line=line):
                return tab.error(msg, line, c[k] if c[k] is not None else 0)

            plays.add(
                err,
                get(row, "user"),
                row[c["time"]],
                row[c["ms"]],
                row[c["track"]],
                get(row, "artist"),
                get(row, "uri"),
                get(row, "reason"),
            )


_WS = re.compile(r"[ \t\n\r]*")


def _json_array(text: str, label: str) -> Iterator[tuple[int, object]]:
    """Yield (offset, value) for each element of a top-level JSON array."""

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    def fail(msg, pos):
        return DataError(msg, label, line_of(pos), pos - text.rfind("\n", 0, pos))

    dec = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if i == len(text):
        raise DataError("empty file", label)
    if text[i] != "[":
        raise fail("expected a JSON array of plays ('[')", i)
    i = _WS.match(text, i + 1).end()
    first = True
    while True:
        if i >= len(text):
            raise fail("truncated JSON: the array is not closed with ']'", i)
        if text[i] == "]":
            break
        if not first:
            if text[i] != ",":
                raise fail("invalid JSON: expected ',' or ']'", i)
            i = _WS.match(text, i + 1).end()
        try:
            value, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            # a string running to the end of the text was cut off too
            cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated")
            what = "truncated JSON" if cut else "invalid JSON"
            raise DataError(f"{what}: {e.msg}", label, e.lineno, e.colno) from None
        yield i, value
        i = _WS.match(text, end).end()
        first = False
    if _WS.match(text, i + 1).end() != len(text):
        raise fail(
            "invalid JSON: extra data after the array", _WS.match(text, i + 1).end()
        )


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - data.rfind(b"\n", 0, e.start)
        msg = f"not UTF-8 text: byte 0x{data[e.start]:02x}"
        raise DataError(msg, label, line, col) from None


# JSON keys: extended history first, then the older account-data format
_JSON_KEYS = {
    "time": ("ts", "endTime"),
    "ms": ("ms_played", "msPlayed"),
    "track": ("master_metadata_track_name", "trackName"),
    "artist": ("master_metadata_album_artist_name", "artistName"),
    "uri": ("spotify_track_uri",),
    "reason": ("reason_end",),
}


def _spotify_json(data: bytes, plays: _Plays, label: str) -> None:
    text = _decode(data, label)
    n, line, last = 0, 1, 0
    for pos, rec in _json_array(text, label):
        n += 1
        line, last = line + text.count("\n", last, pos), pos
        if not isinstance(rec, dict):
            raise DataError(f"play {n}: expected a JSON object", label, line)
        keys = {
            k: next((x for x in names if x in rec), names[0])
            for k, names in _JSON_KEYS.items()
        }

        def err(msg, k, line=line, n=n, keys=keys):
            return DataError(f"play {n}: {msg}", label, line, keys[k])

        if keys["time"] not in rec:
            raise err("missing key 'ts' (or 'endTime')", "time")
        track = rec.get(keys["track"])
        if track is not None and not isinstance(track, str):
            raise err(f"track name is not a string: {track!r}", "track")
        plays.add(
            err,
            None,
            rec[keys["time"]],
            rec.get(keys["ms"]),
            track,
            rec.get(keys["artist"]),
            rec.get(keys["uri"]),
            rec.get(keys["reason"]),
        )
    if n == 0:
        raise DataError("no plays in the JSON array", label)


# history files inside an export; others (user data, playlists, video) are skipped
_HISTORY = re.compile(r"^(StreamingHistory|Streaming_History_Audio|endsong)", re.I)


def _pick_json(names: list[str]) -> list[str]:
    json_names = sorted(n for n in names if n.lower().endswith(".json"))
    hist = [n for n in json_names if _HISTORY.match(os.path.basename(n))]
    return hist or json_names


def load_spotify(
    path, skip_rule: str = "under30s", user_key: str = "me", **filters
) -> Sessions:
    """Load a Spotify listening history.

    `path` is a CSV (.csv or .csv.gz) in nfcl's bundled format (ts_utc,
    ms_played, song or track, artist, album, [track_uri], [reason_start,
    reason_end]), a Spotify JSON export (extended streaming history: ts,
    ms_played, master_metadata_*, spotify_track_uri, reason_end, ...; or the
    account-data format: endTime, artistName, trackName, msPlayed), a folder
    of such JSON files, or a .zip of them. In folders and zips the streaming
    history files are used when present (StreamingHistory*, Streaming_History_
    Audio*, endsong*), every .json otherwise.

    The timestamp is when a play ended; the event time is end - ms_played.
    The item key is the Spotify track URI when present, else
    "artist - track". Plays without a track name (podcasts) are dropped and
    counted as "no_track_name". Records of one user with the same event time
    and item key are one play logged more than once (a file exported twice
    into a folder, or repeats inside an export): the one with the longest
    ms_played is kept (the first read on ties) and the others are counted as
    "duplicate". Exports are not in time order, so plays are sorted by event
    time (ties keep reading order: files by sorted name, then rows), never
    refused for their order. Sessions use the idle time since the latest
    end of an earlier play (durations = ms_played).

    Skip rules: "under30s" (ms_played < 30 s; works for every export),
    "under:<seconds>", "fwdbtn" (reason_end == "fwdbtn"), "fwdbtn_or_under30s".
    All rows get `user_key` unless a CSV has a "user" or "user_id" column
    (the JSON "username" field is ignored).

    Raises:
        DataError: unreadable or malformed input, naming file, line, column;
        also a rule needing reason codes on data without them.
        InputError: an unknown skip rule.
    """
    plays = _Plays(skip_rule, user_key)
    p = Path(path)
    source = filters.pop("source", None) or str(p)
    if p.is_dir():
        names = _pick_json([str(q.relative_to(p)) for q in p.rglob("*") if q.is_file()])
        if not names:
            raise DataError("no .json files in the folder", str(p))
        for name in names:
            _spotify_json((p / name).read_bytes(), plays, str(p / name))
    elif p.suffix.lower() == ".zip":
        _spotify_zip(p, plays)
    elif p.suffix.lower() == ".json":
        _spotify_json(p.read_bytes(), plays, str(p))
    elif p.name.lower().endswith((".csv", ".csv.gz")):
        _spotify_csv(p, plays, str(p))
    elif not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    else:
        raise InputError(f"{p}: expected .csv, .csv.gz, .json, .zip or a folder")
    return plays.sessions(source, filters)


def _spotify_zip(p: Path, plays: _Plays) -> None:
    try:
        zf = zipfile.ZipFile(p)
    except zipfile.BadZipFile as e:
        raise DataError(f"not a zip archive ({e})", str(p)) from None
    with zf:
        names = _pick_json([i.filename for i in zf.infolist() if not i.is_dir()])
        if not names:
            raise DataError("no .json files in the archive", str(p))
        for name in names:
            try:
                data = zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"cannot read member ({e})", f"{p}:{name}") from None
            _spotify_json(data, plays, f"{p}:{name}")


def load_example(**kw) -> Sessions:
    """Load the bundled example history (one real Spotify user, 10,835 plays).

    See nfcl/datasets/ATTRIBUTION.md for its origin and licence. Keyword
    arguments go to load_spotify (skip_rule, filters).
    """
    ref = resources.files("nfcl.datasets").joinpath("spotify_example.csv.gz")
    kw.setdefault("source", "nfcl.datasets:spotify_example.csv.gz")
    with resources.as_file(ref) as path:
        return load_spotify(path, **kw)


# ---------------------------------------------------------------------------
# MSSD

_MSSD_COLS = (
    "session_id",
    "session_position",
    "track_id_clean",
    "skip_1",
    "skip_2",
    "skip_3",
)


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise InputError("paths: no file given")
    return out


def load_mssd(paths, skip_level: int = 2, **filters) -> Sessions:
    """Load training-set logs of the Music Streaming Sessions Dataset (MSSD).

    A row is a skip if skip_1 + skip_2 + skip_3 >= skip_level (default 2:
    the paper's "skip level > 1"). Rows are ordered by session_position
    within session_id, and sessions by first appearance across `paths` (CSV
    or .csv.gz). Sessions come from the ids (no gap rule). MSSD holds no
    usable times, so each row gets a synthetic time, its index in that order;
    a temporal split then follows file order. Positions need not start at 1
    (some samples hold partial sessions). All rows get the user "mssd".
    A row equal to an earlier one in session_id, session_position,
    track_id_clean and skip_1..3 (e.g. a file given twice) is dropped and
    counted in `dropped["duplicate"]`.

    Raises:
        DataError: missing columns, non-integer positions, unknown booleans
        (accepted: True/False/true/false/1/0), a repeated (session, position)
        with another track or other skip flags.
        InputError: skip_level not in 1..3.
    """
    if skip_level not in (1, 2, 3):
        raise InputError(f"skip_level: expected 1, 2 or 3, got {skip_level!r}")
    files = _as_paths(paths)
    rows = _MssdRows()
    for k, path in enumerate(files):
        rows.read(path, k)

    # order: session by first appearance, then position; time = rank
    first = np.asarray([rows.first[s] for s in rows.sids])
    pos = np.asarray(rows.pos)
    keep = rows.drop_repeats(first, pos, files)
    order = np.lexsort((pos[keep], first[keep]))
    times = np.empty(len(order), dtype=np.float64)
    times[order] = np.arange(len(order))
    source = filters.pop("source", None) or ", ".join(str(p) for p in files)
    return from_events(
        ["mssd"] * len(order),
        np.asarray(rows.tracks)[keep],
        times,
        np.asarray(rows.levels)[keep] >= skip_level,
        session_ids=np.asarray(rows.sids)[keep],
        source=source,
        dropped={"duplicate": int(len(keep) - keep.sum())},
        **filters,
    )


class _MssdRows:
    """MSSD rows read so far, with where each came from."""

    def __init__(self):
        self.sids: list[str] = []
        self.pos: list[int] = []
        self.tracks: list[str] = []
        self.levels: list[int] = []
        self.flags: list[int] = []  # skip_1..3 as bits 0..2
        self.where: list[tuple[int, int]] = []  # (file index, line)
        self.first: dict[str, int] = {}

    def read(self, path: Path, file_index: int) -> None:
        f, tab = _csv_table(path)
        with f:
            c = [tab.col(name) for name in _MSSD_COLS]
            for line, row in tab.rows():
                self._add(tab, line, row, c)
                self.where.append((file_index, line))

    def _add(self, tab: _Table, line: int, row: list[str], c: list[int]) -> None:
        sid, p_text, track = row[c[0]], row[c[1]], row[c[2]]
        for k, v in ((c[0], sid), (c[2], track)):
            if not v.strip():
                raise tab.error("empty value", line, k)
        p = _parse_number(p_text)
        if p is None or p != int(p) or p < 1:
            raise tab.error(f"not a positive integer: {p_text!r}", line, c[1])

        # skip level = number of true skip flags
        level = flags = 0
        for bit, k in enumerate(c[3:]):
            b = _parse_bool(row[k])
            if b is None:
                msg = f"unknown boolean {row[k]!r} (expected True/False/1/0)"
                raise tab.error(msg, line, k)
            level += b
            flags |= b << bit
        sid = sys.intern(sid)
        self.first.setdefault(sid, len(self.first))
        self.sids.append(sid)
        self.pos.append(int(p))
        self.tracks.append(sys.intern(track))
        self.levels.append(level)
        self.flags.append(flags)

    def drop_repeats(self, first, pos, files) -> np.ndarray:
        """bool (E,) rows to keep: exact repeats of a row are dropped.

        Raises DataError at the later row of a repeated (session, position)
        whose track or skip flags differ.
        """
        dup, kept = _repeats([first, pos])
        tracks, flags = np.asarray(self.tracks), np.asarray(self.flags)
        bad = np.flatnonzero(
            (tracks[dup] != tracks[kept]) | (flags[dup] != flags[kept])
        )
        if len(bad):
            a, b = kept[bad[0]], dup[bad[0]]
            fa, la = self.where[a]
            fb, lb = self.where[b]
            msg = (
                f"session {self.sids[b]!r} repeats position {self.pos[b]} "
                f"with another track or skip flags (first at {files[fa]}, line {la})"
            )
            raise DataError(msg, str(files[fb]), lb, "session_position")
        keep = np.ones(len(first), dtype=bool)
        keep[dup] = False
        return keep


# ---------------------------------------------------------------------------
# generic event tables


def _column(data, name: str, label: str) -> np.ndarray:
    """A column of a dict of arrays or a pandas-like DataFrame, as an array."""
    cols = list(data.keys()) if isinstance(data, dict) else list(data.columns)
    if name not in cols:
        raise DataError(f"missing column {name!r} (have: {cols})", label, column=name)
    col = data[name]
    return np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col)


def _bad(values) -> Iterator[int]:
    """Rows of an object array holding None or a float NaN."""
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            yield i


def _key_array(values: np.ndarray, name: str, label: str) -> np.ndarray:
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise DataError(
            "missing value",
            label,
            column=name,
            row=int(np.flatnonzero(np.isnan(values))[0]),
        )
    if values.dtype.kind == "O":
        for i in _bad(values):
            raise DataError("missing value", label, column=name, row=i)
    if values.dtype.kind in "UO":
        empty = np.flatnonzero(values == "")
        if len(empty):
            raise DataError("empty value", label, column=name, row=int(empty[0]))
    return values


def _time_value(v) -> float | None:
    if isinstance(v, str):
        return _parse_time(v)
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).timestamp()
    if hasattr(v, "timestamp"):  # pandas Timestamp
        try:
            t = float(v.timestamp())
        except (TypeError, ValueError):
            return None
        return t if math.isfinite(t) else None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _time_array(values: np.ndarray, name: str, label: str) -> np.ndarray:
    """Unix seconds from numbers, datetime64, ISO strings or datetimes."""
    if values.dtype.kind == "M":
        nat = np.isnat(values)
        if nat.any():
            raise DataError(
                "missing time (NaT)",
                label,
                column=name,
                row=int(np.flatnonzero(nat)[0]),
            )
        return values.astype("datetime64[ns]").astype(np.int64) / 1e9
    if values.dtype.kind in "iuf":
        t = values.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(t))
        if len(bad):
            raise DataError(
                f"time is not finite: {t[bad[0]]}", label, column=name, row=int(bad[0])
            )
        return t
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        t = _time_value(v)
        if t is None:
            msg = f"not a unix time or ISO-8601 date: {v!r}"
            raise DataError(msg, label, column=name, row=i)
        out[i] = t
    return out


def _skip_array(values: np.ndarray, name: str, label: str) -> np.ndarray:
    """bool skips from booleans, 0/1 numbers or 0/1/true/false strings."""
    if values.dtype.kind == "b":
        return values
    if values.dtype.kind in "iuf":
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            msg = f"unknown skip value {values[bad[0]]!r} (expected 0/1/true/false)"
            raise DataError(msg, label, column=name, row=int(bad[0]))
        return values == 1
    out = np.empty(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or (
            isinstance(v, (int, np.integer)) and v in (0, 1)
        ):
            b = bool(v)
        else:
            b = _parse_bool(v) if isinstance(v, str) else None
        if b is None:
            msg = f"unknown skip value {v!r} (expected 0/1/true/false)"
            raise DataError(msg, label, column=name, row=i)
        out[i] = b
    return out


def _events_csv(path: Path, names: dict) -> dict:
    """Columns of an event CSV, parsed row by row."""
    f, tab = _csv_table(path)
    out = {k: [] for k in names} | {"line": []}
    with f:
        c = {k: tab.col(n) for k, n in names.items()}
        for line, row in tab.rows():
            out["line"].append(line)
            for k in ("user", "item", "session"):
                if k in c and not row[c[k]].strip():
                    raise tab.error("empty value", line, c[k])
            t = _parse_time(row[c["time"]])
            if t is None:
                msg = f"not a unix time or ISO-8601 date: {row[c['time']]!r}"
                raise tab.error(msg, line, c["time"])
            s = _parse_bool(row[c["skip"]])
            if s is None:
                msg = f"unknown skip value {row[c['skip']]!r} (expected 0/1/true/false)"
                raise tab.error(msg, line, c["skip"])
            for k in ("user", "item", "session"):
                if k in c:
                    out[k].append(sys.intern(row[c[k]]))
            out["time"].append(t)
            out["skip"].append(s)
    return out


def load_events(
    data,
    user: str | None = "user_id",
    item: str = "item_id",
    time: str = "timestamp",
    skip: str = "skip",
    session: str | None = None,
    **filters,
) -> Sessions:
    """Load a generic table of plays: one row per play.

    `data` is a CSV path (.csv or .csv.gz), a pandas DataFrame (duck-typed:
    any object with `columns` and column lookup) or a dict of arrays. The
    arguments name its columns: `time` holds unix seconds or ISO-8601
    strings (UTC when no zone is given); `skip` holds 0/1/true/false;
    `user=None` puts every row under the user "me"; `session` (optional)
    gives session ids and turns the gap rule off.

    Rows are sorted by time within each user (and within each session when
    `session` is given), so their order in the table does not matter; rows
    with equal times keep their table order. A row repeating an earlier one
    (same user, item and time, and the same skip and session) is dropped
    and counted in `dropped["duplicate"]`.

    Raises:
        DataError: a missing column, an empty key, an invalid time or skip
        value, or a repeat of a play (same user, item and time) with another
        skip or session value, naming the file, line (or row) and column.
    """
    names = {"item": item, "time": time, "skip": skip}
    if user is not None:
        names["user"] = user
    if session is not None:
        names["session"] = session

    # columns as arrays
    lines = None
    if isinstance(data, (str, os.PathLike)):
        label = str(data)
        cols = {k: np.asarray(v) for k, v in _events_csv(Path(data), names).items()}
        cols["skip"] = cols["skip"].astype(bool)
        lines = cols.pop("line")
    elif isinstance(data, dict) or hasattr(data, "columns"):
        label = "<dict>" if isinstance(data, dict) else f"<{type(data).__name__}>"
        raw = {k: _column(data, n, label) for k, n in names.items()}
        cols = {
            k: _key_array(raw[k], names[k], label)
            for k in ("user", "item", "session")
            if k in raw
        }
        cols["time"] = _time_array(raw["time"], time, label)
        cols["skip"] = _skip_array(raw["skip"], skip, label)
    else:
        raise InputError(
            f"data: expected a CSV path, a DataFrame or a dict, got {type(data)}"
        )
    n = len(cols["item"])
    if n == 0:
        raise DataError("no rows", label)
    for k, v in cols.items():
        if len(v) != n:
            raise DataError(
                f"column {names[k]!r} has {len(v)} rows, {item!r} has {n}", label
            )
    if "user" not in cols:
        cols["user"] = np.full(n, "me")
    keep = _drop_repeated_events(cols, names, label, lines)
    return from_events(
        cols["user"][keep],
        cols["item"][keep],
        cols["time"][keep],
        cols["skip"][keep],
        session_ids=cols["session"][keep] if "session" in cols else None,
        source=filters.pop("source", None) or label,
        dropped={"duplicate": int(n - keep.sum())},
        **filters,
    )


def _drop_repeated_events(cols: dict, names: dict, label: str, lines) -> np.ndarray:
    """bool (E,) rows to keep: repeats of a (user, item, time) are dropped.

    Raises DataError at a repeat whose skip or session differs from the kept
    row, naming its line (CSV, `lines` int (E,)) or row and the column.
    """
    dup, kept = _repeats([cols["user"], cols["item"], cols["time"]])
    for k in ("skip", "session"):
        if k not in cols:
            continue
        bad = np.flatnonzero(cols[k][dup] != cols[k][kept])
        if len(bad):
            d, a = dup[bad[0]], kept[bad[0]]
            if lines is None:
                first, at = f"row {a}", {"row": int(d)}
            else:
                first, at = f"line {lines[a]}", {"line": int(lines[d])}
            msg = (
                f"repeats the play at {first} (same user, item and time) with "
                f"{names[k]} {cols[k][d]!r} instead of {cols[k][a]!r}"
            )
            raise DataError(msg, label, column=names[k], **at)
    keep = np.ones(len(cols["item"]), dtype=bool)
    keep[dup] = False
    return keep


# ---------------------------------------------------------------------------
# format detection


def sniff_format(path) -> str:
    """Guess which loader reads `path`: "spotify", "mssd" or "events".

    Folders, .zip and .json files are Spotify exports. For CSV (.csv or
    .csv.gz) the header decides: MSSD columns (session_id, track_id_clean,
    skip_2) mean "mssd", a ms_played column means "spotify", anything else
    "events".

    Raises:
        DataError: an unreadable CSV header (empty file, bad bytes).
    """
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in (".zip", ".json"):
        return "spotify"
    f, tab = _csv_table(p)
    with f:
        cols = set(tab.header)
    if {"session_id", "track_id_clean", "skip_2"} <= cols:
        return "mssd"
    if cols & {"ms_played", "msPlayed"}:
        return "spotify"
    return "events"
