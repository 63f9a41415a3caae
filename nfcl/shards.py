"""Out-of-core preprocessing: listening logs to memory-mapped training shards.

`shard_mssd` and `shard_events` turn CSV logs larger than memory into a
folder of shards. DuckDB reads the files, checks every value, sessionises,
numbers the items and sorts, with its own memory limit and a temporary
folder to spill to; the result leaves DuckDB one shard at a time, so Python
never holds more than one shard. The sessions are the same as those of the
in-memory loaders `nfcl.io.load_mssd` and `nfcl.io.load_events` on the same
files (same item keys and ids, order, skips, times, offsets and users), and
the manifest's fingerprint equals their `Sessions.fingerprint()`.

`open_shards` reads such a folder back through memory maps and gives one
`Sessions` per shard, all in the same item-id space, ready for
`model.fit(...)`. Reading needs NumPy only; DuckDB is imported by the
preprocessing functions alone (``pip install 'nfcl[scale]'``).

Folder layout::

    manifest.json        counts, dropped rows, options, fingerprint, shards
    item_keys.jsonl      line i: JSON string of item id i (line 0: "<pad>")
    user_keys.jsonl      line u: JSON string of user id u
    shard-00000/         items.npy int32 (E,), skips.npy uint8 (E,),
                         times.npy float64 (E,), offsets.npy int64 (S+1,),
                         users.npy int32 (S,)

NOTE: Where DuckDB cannot be told to read a value as nfcl.io does, the
value is refused with a DataError naming file and line: numbers with
non-ASCII digits; ISO-8601 forms other than
YYYY-MM-DD[Thh[:mm[:ss[.f]]][Z|+hh[[:]mm]]] (e.g. compact 20210301T1000,
week dates, offsets with seconds, separators other than T, t and space);
text after a closing quote ("ab"c), which Python's csv module appends.
Two differences remain: spaces between a quote and a comma (a, "b" ,c) are
kept by Python's csv module (with the quotes) and dropped by DuckDB (RFC
4180 allows neither), and times before 1685 or after 2255 may differ in
the last bit (microseconds beyond 2**53 as a double).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import DataError, InputError
from .io import _MSSD_COLS, _csv_table, _parse_bool, _parse_number, _parse_time
from .sessions import PAD_KEY, Sessions

__all__ = [
    "FORMAT",
    "ShardSet",
    "input_files",
    "open_shards",
    "shard_events",
    "shard_mssd",
]

log = logging.getLogger(__name__)

FORMAT = "nfcl-shards/1"

# the arrays of a shard, in Sessions.fingerprint order
_ARRAYS = {
    "items": np.int32,
    "skips": np.uint8,
    "times": np.float64,
    "offsets": np.int64,
    "users": np.int32,
}

# ---------------------------------------------------------------------------
# reading shards (NumPy only)


def _read_keys(path: Path) -> list[str]:
    """The keys of a .jsonl key file, one JSON string a line.

    Lines are split on b"\\n" only: keys may hold U+2028 and other characters
    that str.splitlines would cut at.
    """
    keys = []
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    keys.append(json.loads(line))
                except ValueError as e:
                    raise DataError(f"not a JSON string: {e}", str(path), n) from None
    except FileNotFoundError:
        raise DataError("missing key file", str(path)) from None
    return keys


class ShardSet:
    """Shards written by `shard_mssd` or `shard_events`, read through memory maps.

    ``shards[i]`` is the i-th shard as a Sessions whose arrays are read-only
    memory maps of the shard's .npy files; every shard shares one item-id
    space (``n_items``, ``item_keys``) and one user-id space, so a model
    sized for ``n_items`` trains on each in turn::

        shards = open_shards("out/")
        model = SASRec(n_items=shards.n_items)
        for epoch in range(10):
            for i in rng.permutation(len(shards)):
                model.fit(shards[i], epochs=1)

    Only one shard's training rows are in memory at a time. The item keys
    (a list of V strings) are loaded once, on first use, and shared.

    Raises:
        DataError: a missing or unreadable manifest, an unknown format, or a
        shard file whose dtype or shape disagrees with the manifest.
    """

    def __init__(self, path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                "no manifest.json: not a shard folder", str(self.path)
            ) from None
        except ValueError as e:
            raise DataError(f"manifest is not JSON: {e}", str(mpath)) from None
        if self.manifest.get("format") != FORMAT:
            msg = f"unknown format {self.manifest.get('format')!r}, expected {FORMAT!r}"
            raise DataError(msg, str(mpath))
        self._item_keys = None
        self._user_keys = None

    # counts from the manifest

    def __len__(self) -> int:
        return len(self.manifest["shards"])

    @property
    def n_items(self) -> int:
        """V: the item-id space, padding id 0 included."""
        return int(self.manifest["n_items"])

    @property
    def n_sessions(self) -> int:
        return int(self.manifest["n_sessions"])

    @property
    def n_events(self) -> int:
        return int(self.manifest["n_events"])

    @property
    def dropped(self) -> dict:
        return dict(self.manifest["dropped"])

    @property
    def fingerprint(self) -> str:
        """Sessions.fingerprint() of all shards concatenated (from the manifest)."""
        return self.manifest["fingerprint"]

    @property
    def item_keys(self) -> list[str]:
        if self._item_keys is None:
            keys = _read_keys(self.path / "item_keys.jsonl")
            if len(keys) != self.n_items or not keys or keys[0] != PAD_KEY:
                raise DataError(
                    f"expected {self.n_items} keys starting with {PAD_KEY!r}",
                    str(self.path / "item_keys.jsonl"),
                )
            self._item_keys = keys
        return self._item_keys

    @property
    def user_keys(self) -> list[str]:
        if self._user_keys is None:
            self._user_keys = _read_keys(self.path / "user_keys.jsonl")
        return self._user_keys

    # one shard

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The arrays of shard i as read-only memory maps, checked against the
        manifest (dtype and length)."""
        if not -len(self) <= i < len(self):
            raise InputError(f"shard index {i} out of range 0..{len(self) - 1}")
        return _shard_arrays(self.path, self.manifest["shards"][i])

    def __getitem__(self, i: int) -> Sessions:
        """Shard i as Sessions over memory maps (offsets start at 0 in each shard)."""
        a = self.arrays(i)
        name = self.manifest["shards"][i]["name"]
        return Sessions(
            **a,
            item_keys=self.item_keys,
            user_keys=self.user_keys,
            source=f"{self.path}:{name}",
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # everything

    def to_sessions(self) -> Sessions:
        """All shards concatenated into one in-memory Sessions.

        For data that fits in memory (tests, small sets): the result equals
        what the in-memory loader gives, `dropped` and `source` included.
        """
        parts = [self.arrays(i) for i in range(len(self))]
        cat = {}
        for name, dtype in _ARRAYS.items():
            if name == "offsets":
                continue
            cat[name] = np.concatenate(
                [np.asarray(p[name]) for p in parts] or [np.zeros(0, dtype)]
            )
        lens = [np.diff(p["offsets"]) for p in parts]
        lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        cat["offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return Sessions(
            **cat,
            item_keys=list(self.item_keys),
            user_keys=list(self.user_keys),
            dropped=self.dropped,
            source=self.manifest["source"],
        )

    def verify(self) -> str:
        """Recompute the fingerprint from the files, one shard at a time.

        Returns:
            the fingerprint (hex).

        Raises:
            DataError: it differs from the manifest's.
        """
        value = _fingerprint(self.path, self.manifest)
        if value != self.fingerprint:
            raise DataError(
                f"fingerprint {value[:12]}.. of the files differs from "
                f"the manifest's {self.fingerprint[:12]}..",
                str(self.path),
            )
        return value

    def __repr__(self) -> str:
        return (
            f"ShardSet({str(self.path)!r}, shards={len(self)}, "
            f"sessions={self.n_sessions}, events={self.n_events}, "
            f"n_items={self.n_items})"
        )


def _shard_arrays(folder: Path, info: dict) -> dict[str, np.ndarray]:
    """Memory maps of the arrays of the shard `info` (a manifest entry)."""
    lengths = {
        "items": info["n_events"],
        "skips": info["n_events"],
        "times": info["n_events"],
        "offsets": info["n_sessions"] + 1,
        "users": info["n_sessions"],
    }
    out = {}
    for name, dtype in _ARRAYS.items():
        path = folder / info["name"] / f"{name}.npy"
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read shard array: {e}", str(path)) from None
        if a.dtype != np.dtype(dtype) or a.shape != (lengths[name],):
            msg = (
                f"expected {np.dtype(dtype)} ({lengths[name]},), "
                f"got {a.dtype} {a.shape}"
            )
            raise DataError(msg, str(path))
        out[name] = a
    return out


def open_shards(path) -> ShardSet:
    """Open a shard folder written by `shard_mssd` or `shard_events`."""
    return ShardSet(path)


def _json_list(h, path: Path) -> None:
    """Feed json.dumps(keys, ensure_ascii=False) of a .jsonl key file to h."""
    h.update(b"[")
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            h.update((b", " if n else b"") + line.rstrip(b"\n"))
    h.update(b"]")


def _fingerprint(folder: Path, manifest: dict) -> str:
    """Sessions.fingerprint() of the concatenated shards, read shard by shard.

    The hash takes each array whole in turn (all items, then all skips, ...),
    so the shards are read once per array; the offsets are made global.
    """
    info = manifest["shards"]
    E = sum(s["n_events"] for s in info)
    S = sum(s["n_sessions"] for s in info)
    shape = {"offsets": (S + 1,), "users": (S,)}
    h = hashlib.sha256(b"nfcl.Sessions/1")
    for name, dtype in _ARRAYS.items():
        dt = np.dtype(dtype).newbyteorder("<")
        h.update(f"{name}:{dt.str}:{shape.get(name, (E,))}".encode())
        if name == "offsets":
            h.update(np.zeros(1, dt).tobytes())
        base = 0
        for i in range(len(info)):
            a = _shard_arrays(folder, info[i])[name]
            if name == "offsets":
                a, base = a[1:] + base, base + int(a[-1])
            h.update(np.ascontiguousarray(a, dtype=dt).tobytes())
    h.update(b"[")
    _json_list(h, folder / "item_keys.jsonl")
    h.update(b", ")
    _json_list(h, folder / "user_keys.jsonl")
    h.update(b"]")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# building shards: arguments


def _import_duckdb():
    try:
        import duckdb
    except ImportError:
        raise ImportError(
            "nfcl.shards needs duckdb to preprocess logs: pip install 'nfcl[scale]'"
        ) from None
    return duckdb


def input_files(paths) -> list[Path]:
    """Files named by paths: a path, a glob pattern, a folder (its *.csv and
    *.csv.gz files) or a list of these, in the given order, globs sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(
                q for q in p.iterdir() if q.name.lower().endswith((".csv", ".csv.gz"))
            )
            if not found:
                raise DataError("no .csv or .csv.gz file in the folder", str(p))
            out += found
        elif p.exists() or not glob.has_magic(str(p)):
            out.append(p)
        else:
            found = sorted(Path(q) for q in glob.glob(str(p)))
            if not found:
                raise FileNotFoundError(f"no file matches {str(p)!r}")
            out += found
    if not out:
        raise InputError("paths: no file given")
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
    return out


def _check_filters(max_len, min_len, gap_minutes=None) -> None:
    """The argument checks of sessions.from_events, made before any work."""
    for name, v in (("max_len", max_len), ("min_len", min_len)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise InputError(f"{name}: expected a positive int or None, got {v!r}")
    if gap_minutes is not None and not gap_minutes >= 0:
        raise InputError(f"gap_minutes: expected >= 0 or None, got {gap_minutes!r}")


_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def _check_size(name: str, value) -> str:
    if isinstance(value, str) and _SIZE.match(value.strip()):
        return value.strip()
    raise InputError(
        f"{name}: expected a size such as '1GB' or '512MiB', got {value!r}"
    )


def _sql_str(text: str) -> str:
    """text as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


# ---------------------------------------------------------------------------
# building shards: SQL that parses values as nfcl.io does

# str.strip() removes exactly these characters (str.isspace)
_WS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())

# float(): ASCII digits, underscores between digits, optional exponent
_NUM = (
    r"^[+-]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)"
    r"(?:[eE][+-]?[0-9](?:_?[0-9])*)?$"
)

# the ISO-8601 forms read here; datetime.fromisoformat reads all of them alike
# (a zone needs a time: fromisoformat reads "2021-03-01+01:30" as 01:30 UTC)
_ISO = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?)?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?$"
)
_ISO_PARTS = "['y', 'mo', 'd', 'h', 'mi', 's', 'f', 'z', 'sg', 'oh', 'om']"


def _macros() -> str:
    """SQL macros: strip, bool, number and time as nfcl.io parses them.

    Each gives NULL where nfcl.io raises, so a row is bad if any is NULL.
    """
    ws, num, iso = _sql_str(_WS), _sql_str(_NUM), _sql_str(_ISO)

    def part_int(name):
        # an optional 2-digit field of the ISO match, 0 when absent
        return f"coalesce(TRY_CAST(nullif(p.{name}, '') AS INTEGER), 0)"

    def part(name, top):
        return f"{part_int(name)} > {top}"

    return f"""
CREATE TEMP MACRO nfcl_strip(s) AS trim(coalesce(s, ''), {ws});
CREATE TEMP MACRO nfcl_blank(s) AS CASE
    WHEN coalesce(s, '') = '' THEN true
    WHEN NOT contains({ws}, left(s, 1)) THEN false
    ELSE nfcl_strip(s) = '' END;
CREATE TEMP MACRO nfcl_bool(s) AS CAST(CASE
    WHEN s IN ('True', 'true', '1', 'TRUE') THEN 1
    WHEN s IN ('False', 'false', '0', 'FALSE') THEN 0
    ELSE CASE lower(nfcl_strip(s))
        WHEN '1' THEN 1 WHEN 'true' THEN 1 WHEN '1.0' THEN 1
        WHEN '0' THEN 0 WHEN 'false' THEN 0 WHEN '0.0' THEN 0 END
    END AS UTINYINT);
CREATE TEMP MACRO nfcl_float(s) AS CASE
    WHEN regexp_full_match(s, '[0-9]{{1,15}}') THEN CAST(s AS DOUBLE)
    WHEN regexp_full_match(nfcl_strip(s), {num})
        THEN CAST(replace(nfcl_strip(s), '_', '') AS DOUBLE) END;
CREATE TEMP MACRO nfcl_iso_us(p) AS CASE
    WHEN p.y = '' OR p.y = '0000' THEN NULL
    WHEN {part("h", 23)} OR {part("mi", 59)} OR {part("s", 59)} THEN NULL
    WHEN {part_int("oh")} * 60 + {part_int("om")} >= 1440 THEN NULL
    ELSE epoch_us(TRY_CAST(p.y || '-' || p.mo || '-' || p.d || ' '
            || coalesce(nullif(p.h, ''), '00') || ':'
            || coalesce(nullif(p.mi, ''), '00') || ':'
            || coalesce(nullif(p.s, ''), '00') || '.' || rpad(left(p.f, 6), 6, '0')
            AS TIMESTAMP))
        - CASE p.sg WHEN '+' THEN 1 WHEN '-' THEN -1 ELSE 0 END
          * ({part_int("oh")} * 3600 + {part_int("om")} * 60) * 1000000::BIGINT
    END;
CREATE TEMP MACRO nfcl_time(s) AS CASE
    WHEN nfcl_float(s) IS NOT NULL
        THEN CASE WHEN isfinite(nfcl_float(s)) THEN nfcl_float(s) END
    ELSE CAST(nfcl_iso_us(regexp_extract(nfcl_strip(s), {iso}, {_ISO_PARTS}))
              AS DOUBLE) / 1e6
    END;
"""


# ---------------------------------------------------------------------------
# building shards: located errors, found by reading the one bad file in Python


def _rows_of(path: Path, label: str):
    """(table, file, rows): nfcl.io's CSV reader over path, streaming."""
    f, tab = _csv_table(path, label)
    return tab, f, tab.rows()


def _line_of(path: Path, index: int) -> int:
    """The line (nfcl.io's numbering: where the row ends) of data row `index`."""
    _, f, rows = _rows_of(path, str(path))
    with f:
        for n, (line, _) in enumerate(rows):
            if n == index:
                return line
    raise RuntimeError(f"{path} has no data row {index}; please report this bug")


def _mssd_check_file(path: Path, label: str) -> None:
    """Raise the DataError nfcl.io.load_mssd raises first in this file, if any."""
    tab, f, rows = _rows_of(path, label)
    with f:
        c = [tab.col(name) for name in _MSSD_COLS]
        for line, row in rows:
            for k in (c[0], c[2]):
                if not row[k].strip():
                    raise tab.error("empty value", line, k)
            p = _parse_number(row[c[1]])
            if p is None or p != int(p) or p < 1:
                msg = f"not a positive integer: {row[c[1]]!r}"
                raise tab.error(msg, line, c[1])
            for k in c[3:]:
                if _parse_bool(row[k]) is None:
                    msg = f"unknown boolean {row[k]!r} (expected True/False/1/0)"
                    raise tab.error(msg, line, k)


def _events_check_file(path: Path, label: str, names: dict) -> None:
    """Raise the DataError nfcl.io.load_events raises first in this file, if any."""
    tab, f, rows = _rows_of(path, label)
    with f:
        c = {k: tab.col(n) for k, n in names.items()}
        for line, row in rows:
            for k in ("user", "item", "session"):
                if k in c and not row[c[k]].strip():
                    raise tab.error("empty value", line, c[k])
            if _parse_time(row[c["time"]]) is None:
                msg = f"not a unix time or ISO-8601 date: {row[c['time']]!r}"
                raise tab.error(msg, line, c["time"])
            if _parse_bool(row[c["skip"]]) is None:
                v = row[c["skip"]]
                msg = f"unknown skip value {v!r} (expected 0/1/true/false)"
                raise tab.error(msg, line, c["skip"])


# ---------------------------------------------------------------------------
# building shards: the pipeline


class _NpyWriter:
    """A 1-D .npy file of known length written in appended chunks."""

    def __init__(self, path: Path, dtype, n: int):
        self.path, self.dtype, self.n, self.done = path, np.dtype(dtype), int(n), 0
        self.f = open(path, "wb")  # noqa: SIM115 (closed by close())
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n,),
        }
        np.lib.format.write_array_header_1_0(self.f, header)

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self.f.write(a.tobytes())
        self.done += len(a)

    def close(self) -> None:
        self.f.close()
        if self.done != self.n:
            raise RuntimeError(
                f"{self.path}: wrote {self.done} of {self.n} values; "
                "please report this bug"
            )


class _Build:
    """One preprocessing run: a DuckDB database in a work folder, the files
    staged into it one by one, then sessionised and written out as shards."""

    def __init__(self, files, out_dir, memory_limit, threads, tmp_dir, overwrite):
        duckdb = _import_duckdb()
        self.duckdb = duckdb
        self.files = files
        self.final = Path(out_dir)
        self._prepare_out(overwrite)
        parent = Path(tmp_dir) if tmp_dir is not None else self.final
        parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=".nfcl-shard-", dir=parent))
        (self.work / "spill").mkdir()
        self.con = duckdb.connect(str(self.work / "stage.duckdb"))
        self.con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
        self.con.execute(f"SET temp_directory = {_sql_str(self.work / 'spill')}")
        self.con.execute("SET preserve_insertion_order = true")
        self.con.execute("SET enable_progress_bar = false")
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute(_macros())
        self.file_rows = []  # data rows staged per file; rowid bases follow
        self.seconds, self.peak_rss = {}, {}
        self._t = time.perf_counter()

    def _prepare_out(self, overwrite: bool) -> None:
        """Check the output folder; the shards are written into a staging
        folder inside it (self.out) and only moved into place by publish(),
        so existing shards survive any failure or interrupt before that."""
        final = self.final
        if (final / "manifest.json").exists() or any(final.glob("shard-*")):
            if not overwrite:
                raise InputError(
                    f"{final} already holds shards; pass overwrite=True "
                    "(--overwrite) to replace them"
                )
        self.created = not final.exists()
        final.mkdir(parents=True, exist_ok=True)
        self.out = Path(tempfile.mkdtemp(prefix=".nfcl-new-", dir=final))

    def publish(self) -> None:
        """Replace the output folder's shards by the staged ones: the old
        manifest goes first and the new one comes last, so a reader never
        finds a manifest whose shards are missing."""
        final, old = self.final, Path(tempfile.mkdtemp(prefix=".nfcl-old-", dir=self.final))
        previous = [final / "manifest.json", *final.glob("shard-*"),
                    final / "item_keys.jsonl", final / "user_keys.jsonl"]
        for p in previous:
            if p.exists():
                os.replace(p, old / p.name)
        staged = sorted(self.out.iterdir(), key=lambda p: p.name == "manifest.json")
        for p in staged:
            os.replace(p, final / p.name)
        self.out.rmdir()
        self.out = final
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.work, ignore_errors=True)
        if self.out != self.final:  # failed or interrupted before publish
            shutil.rmtree(self.out, ignore_errors=True)
            if self.created and not any(self.final.iterdir()):
                self.final.rmdir()

    def step(self, name: str) -> None:
        """Record the seconds since the previous step, and the peak RSS so far
        (MiB, Linux only), under name."""
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 3)
        self._t = now
        self.peak_rss[name] = _peak_rss_mib()
        log.info(
            "step %s seconds=%.2f peak_rss_mib=%s",
            name,
            self.seconds[name],
            self.peak_rss[name],
        )

    def rows(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def one(self, sql: str):
        return self.rows(sql)[0][0]

    # staging

    def stage(
        self, k: int, path: Path, header: list[str], select: str, check_file
    ) -> int:
        """Insert file k into the table raw; select reads columns c0, c1, ...

        Returns the number of data rows. Any row DuckDB rejects, or that
        select marks bad, sends the file through check_file (nfcl.io's rules,
        in Python) so that the error raised is the one nfcl.io would raise.
        """
        label = str(path)
        cols = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header)))
        reader = (
            f"read_csv({_sql_str(path)}, header = true, auto_detect = false, "
            f"columns = {{{cols}}}, delim = ',', quote = '\"', escape = '\"', "
            f"store_rejects = true)"
        )
        self.con.execute(
            "DROP TABLE IF EXISTS reject_errors; DROP TABLE IF EXISTS reject_scans"
        )
        base = sum(self.file_rows)
        try:
            self.con.execute("INSERT INTO raw " + select.replace("{src}", reader))
        except self.duckdb.Error as e:
            check_file(path, label)
            raise DataError(f"DuckDB cannot read the file: {e}", label) from None
        n = self.one(f"SELECT count(*) FROM raw WHERE rowid >= {base}")
        rejected = self.rows(
            "SELECT line, error_type, error_message FROM reject_errors "
            "ORDER BY line LIMIT 1"
        )
        bad = self.rows(f"SELECT min(rowid) FROM raw WHERE rowid >= {base} AND bad")[0][
            0
        ]
        if n == 0 and not rejected:
            raise DataError("no data rows after the header", label, line=2)
        if rejected or bad is not None:
            check_file(path, label)
            if rejected:
                line, kind, msg = rejected[0]
                raise DataError(
                    f"rejected by DuckDB's CSV reader ({kind}): {msg}", label, line
                )
            raise DataError(
                "a value the out-of-core reader does not read (see "
                "nfcl.shards: ISO-8601 forms, ASCII digits)",
                label,
                _line_of(path, bad - base),
            )
        self.file_rows.append(n)
        return n

    def where(self, row: int) -> tuple[Path, int]:
        """(file, line) of staged row `row` (a rowid of raw)."""
        for path, n in zip(self.files, self.file_rows, strict=False):
            if row < n:
                return path, _line_of(path, row)
            row -= n
        raise RuntimeError(f"row {row} beyond the staged rows; please report this bug")

    def repeats(self, keys: str, differ: str) -> tuple[int, bool]:
        """Find rows of raw equal in `keys` to an earlier row.

        Creates table rep (row, kept): each repeat's rowid and the rowid of
        the earliest row it repeats; and view m: raw without the repeats,
        with row = rowid. Returns (number of repeats, whether a repeat
        differs from its kept row by the SQL condition `differ` over r
        (repeat) and k (kept)).
        """
        self.con.execute(f"""
CREATE TABLE dk AS SELECT {keys}, min(rowid) AS kept FROM raw GROUP BY {keys}
    HAVING count(*) > 1;
CREATE TABLE rep AS SELECT r.rowid AS row, dk.kept FROM raw r JOIN dk USING ({keys})
    WHERE r.rowid <> dk.kept;
CREATE VIEW m AS SELECT raw.rowid AS row, raw.* FROM raw
    ANTI JOIN rep ON raw.rowid = rep.row;
""")
        n = self.one("SELECT count(*) FROM rep")
        if n == 0:
            return 0, False
        bad = self.one(f"""SELECT count(*) FROM rep JOIN raw r ON r.rowid = rep.row
            JOIN raw k ON k.rowid = rep.kept WHERE {differ}""")
        return int(n), bad > 0

    # from ordered events to shards

    def windows(self, max_len, min_len, require_skip, shard_events) -> dict:
        """Cut the sessions of view evw into windows, filter them, number items
        and users, and lay the kept events out as table out.

        evw has one row per event: seq (global order), start (seq of its
        session's first event), u, item, skip, t. Returns the row counts
        dropped by the filters.
        """
        L = None if max_len is None else int(max_len)
        w = "start" if L is None else f"start + (seq - start) // {L} * {L}"
        self.con.execute(f"""
CREATE VIEW evw AS SELECT *, {w} AS w FROM ev_view;
CREATE TABLE win AS SELECT w, count(*) AS len, sum(skip) AS nskip, any_value(u) AS u
    FROM evw GROUP BY w;
""")
        short = "false" if min_len is None else f"len < {int(min_len)}"
        noskip = "nskip = 0" if require_skip else "false"
        counts = self.rows(f"""
SELECT coalesce(sum(len) FILTER (WHERE {short}), 0),
    coalesce(sum(len) FILTER (WHERE NOT ({short}) AND {noskip}), 0) FROM win""")[0]
        dropped = {}
        if min_len is not None:
            dropped["too_short"] = int(counts[0])
        if require_skip:
            dropped["no_skip"] = int(counts[1])
        self.step("windows")

        # kept windows: offsets, users, shards; then the item ids
        self.con.execute(f"""
CREATE TABLE ukeys AS SELECT row_number() OVER (ORDER BY u) - 1 AS uid, u
    FROM (SELECT DISTINCT u FROM win WHERE NOT ({short}) AND NOT ({noskip}));
CREATE TABLE kw AS SELECT w, len, uid, off, off // {int(shard_events)} AS shard FROM (
    SELECT win.w, win.len, CAST(ukeys.uid AS INTEGER) AS uid, CAST(sum(win.len)
        OVER (ORDER BY win.w ROWS UNBOUNDED PRECEDING) - win.len AS BIGINT) AS off
    FROM win JOIN ukeys USING (u) WHERE NOT ({short}) AND NOT ({noskip}));
CREATE TABLE ikeys AS
    SELECT CAST(row_number() OVER (ORDER BY item) AS INTEGER) AS id, item
    FROM (SELECT DISTINCT item FROM evw SEMI JOIN kw USING (w));
CREATE TABLE out AS SELECT kw.off + (e.seq - e.w) AS gidx, ikeys.id,
    CAST(e.skip AS UTINYINT) AS skip, CAST(e.t AS DOUBLE) AS t
    FROM evw e JOIN kw USING (w) JOIN ikeys USING (item);
""")
        self.step("ids")
        return dropped

    def write(self, chunk: int = 1 << 20) -> tuple[list[dict], int, int]:
        """Write the shards, item_keys.jsonl and user_keys.jsonl.

        Arrays leave DuckDB `chunk` rows at a time and are appended to their
        .npy files, so Python never holds more than one chunk. Returns
        (shard entries, n_items, n_users).
        """
        spans = self.rows(
            "SELECT shard, min(off), max(off + len), count(*) FROM kw "
            "GROUP BY shard ORDER BY shard"
        )
        shards = []
        for j, (shard, e0, e1, n_sess) in enumerate(spans):
            name = f"shard-{j:05d}"
            (self.out / name).mkdir()
            ev = {
                k: _NpyWriter(self.out / name / f"{k}.npy", _ARRAYS[k], e1 - e0)
                for k in ("items", "skips", "times")
            }
            for a in range(e0, e1, chunk):
                part = self.con.execute(
                    f"SELECT id, skip, t FROM out WHERE gidx >= {a} "
                    f"AND gidx < {min(a + chunk, e1)} ORDER BY gidx"
                ).fetchnumpy()
                for k, col in (("items", "id"), ("skips", "skip"), ("times", "t")):
                    ev[k].append(part[col])
            for w in ev.values():
                w.close()

            # sessions of the shard: at most shard_events / min_len of them
            ss = self.con.execute(
                f"SELECT len, uid FROM kw WHERE shard = {shard} ORDER BY w"
            ).fetchnumpy()
            offsets = np.concatenate([[0], np.cumsum(ss["len"])])
            if offsets[-1] != e1 - e0:
                raise RuntimeError(
                    f"shard {j}: sessions hold {offsets[-1]} events, "
                    f"span {e0}..{e1}; please report this bug"
                )
            for k, a in (("offsets", offsets), ("users", ss["uid"])):
                np.save(self.out / name / f"{k}.npy", np.asarray(a, dtype=_ARRAYS[k]))
            shards.append(
                {
                    "name": name,
                    "n_events": int(e1 - e0),
                    "n_sessions": int(n_sess),
                    "first_event": int(e0),
                }
            )
            log.info("shard %s events=%d sessions=%d", name, e1 - e0, n_sess)
        n_items = self._write_keys("ikeys", "id", "item", 1, [PAD_KEY], 1 << 16)
        n_users = self._write_keys("ukeys", "uid", "u", 0, [], 1 << 16)
        self.step("write")
        return shards, n_items, n_users

    def _write_keys(self, table, id_col, key_col, first, head, chunk) -> int:
        """Write table's keys in id order to <keys>.jsonl, chunk ids at a time."""
        path = self.out / ("item_keys.jsonl" if table == "ikeys" else "user_keys.jsonl")
        n = self.one(f"SELECT count(*) FROM {table}")
        with open(path, "wb") as f:
            f.writelines(
                json.dumps(k, ensure_ascii=False).encode() + b"\n" for k in head
            )
            for a in range(first, first + n, chunk):
                keys = self.con.execute(
                    f"SELECT {key_col} FROM {table} WHERE {id_col} >= {a} "
                    f"AND {id_col} < {a + chunk} ORDER BY {id_col}"
                ).fetchnumpy()[key_col]
                f.writelines(
                    json.dumps(k, ensure_ascii=False).encode() + b"\n" for k in keys
                )
        return n + len(head)

    def finish(self, source, fmt, options, dropped, wall0) -> dict:
        """Write the shards and the manifest; return the manifest."""
        shards, n_items, n_users = self.write()
        manifest = {
            "format": FORMAT,
            "source": source,
            "input": {
                "format": fmt,
                "files": [str(p) for p in self.files],
                "rows": int(sum(self.file_rows)),
                "options": options,
            },
            "n_events": sum(s["n_events"] for s in shards),
            "n_sessions": sum(s["n_sessions"] for s in shards),
            "n_items": n_items,
            "n_users": n_users,
            "dropped": dropped,
            "fingerprint": None,
            "shards": shards,
            "duckdb": {
                "version": self.duckdb.__version__,
                "memory_limit": self.one("SELECT current_setting('memory_limit')"),
                "threads": int(self.one("SELECT current_setting('threads')")),
            },
        }
        manifest["fingerprint"] = _fingerprint(self.out, manifest)
        self.step("fingerprint")
        manifest["seconds"] = dict(
            self.seconds, total=round(time.perf_counter() - wall0, 3)
        )
        manifest["peak_rss_mib"] = self.peak_rss
        tmp = self.out / "manifest.json.tmp"
        tmp.write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        os.replace(tmp, self.out / "manifest.json")
        self.publish()
        return manifest


def _peak_rss_mib() -> int | None:
    """This process's peak resident set (VmHWM) in MiB; None if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _header(path: Path) -> tuple:
    """(nfcl.io table over path's header, open file): raises DataError on an
    empty file or bad bytes, as nfcl.io does."""
    f, tab = _csv_table(path)
    return tab, f


# ---------------------------------------------------------------------------
# MSSD


def shard_mssd(
    paths,
    out_dir,
    *,
    skip_level: int = 2,
    min_len: int | None = 6,
    require_skip: bool = True,
    max_len: int | None = 20,
    shard_events: int = 1 << 22,
    memory_limit: str = "1GB",
    threads: int | None = None,
    tmp_dir=None,
    overwrite: bool = False,
    source: str | None = None,
) -> dict:
    """Preprocess MSSD training logs into shards, out of core.

    Same rules as `nfcl.io.load_mssd(paths, skip_level, min_len=...,
    require_skip=..., max_len=...)`: rows ordered by position within
    session_id, sessions by first appearance across the files (in the given
    order; a glob pattern's matches sorted), exact repeats dropped, times =
    rank in that order, one user "mssd".

    Args:
        paths: a CSV (.csv or .csv.gz) path, glob pattern, folder, or a list.
        out_dir: folder for the shards (created).
        shard_events: about this many events per shard (whole sessions; a
            shard starts a new one at each multiple of shard_events).
        memory_limit: DuckDB's memory limit ("1GB", "512MiB", ...); the
            process as a whole peaks about 150-200 MB above it.
        threads: DuckDB threads (default: its own, the number of cores).
        tmp_dir: where to make the work folder (.nfcl-shard-*) for DuckDB's
            database and spill files, about the input's size (default:
            out_dir); the work folder is removed at the end.
        overwrite: replace shards already in out_dir.

    Returns:
        the manifest (dict), also written to out_dir/manifest.json.

    Raises:
        DataError: as nfcl.io.load_mssd, naming file, line and column.
        InputError: bad arguments; ImportError: duckdb is not installed.
    """
    if skip_level not in (1, 2, 3):
        raise InputError(f"skip_level: expected 1, 2 or 3, got {skip_level!r}")
    _check_filters(max_len, min_len)
    _check_shard_args(shard_events, threads)
    memory_limit = _check_size("memory_limit", memory_limit)
    wall0 = time.perf_counter()
    files = input_files(paths)
    b = _Build(files, out_dir, memory_limit, threads, tmp_dir, overwrite)
    try:
        b.con.execute(
            "CREATE TABLE raw (sid VARCHAR, pos DOUBLE, item VARCHAR, "
            "flags UTINYINT, level UTINYINT, bad BOOLEAN)"
        )
        for path in files:
            _stage_mssd(b, path)
        b.step("read")
        dup = _order_mssd(b, files, skip_level)
        b.step("order")
        dropped = {"duplicate": dup}
        dropped.update(b.windows(max_len, min_len, require_skip, shard_events))
        options = {
            "skip_level": skip_level,
            "min_len": min_len,
            "require_skip": require_skip,
            "max_len": max_len,
        }
        src = source or ", ".join(str(p) for p in files)
        return b.finish(src, "mssd", options, dropped, wall0)
    finally:
        b.close()


def _check_shard_args(shard_events, threads) -> None:
    if (
        isinstance(shard_events, bool)
        or int(shard_events) != shard_events
        or shard_events < 1
    ):
        raise InputError(f"shard_events: expected a positive int, got {shard_events!r}")
    if threads is not None and (
        isinstance(threads, bool) or int(threads) != threads or threads < 1
    ):
        raise InputError(f"threads: expected a positive int or None, got {threads!r}")


def _stage_mssd(b: _Build, path: Path) -> None:
    tab, f = _header(path)
    with f:
        c = [tab.col(name) for name in _MSSD_COLS]  # raises on a missing column
    sid, pos, item, s1, s2, s3 = (f"c{i}" for i in c)
    select = f"""
SELECT sid, pos, item, b1 + 2 * b2 + 4 * b3, b1 + b2 + b3,
    nfcl_blank(sid) OR nfcl_blank(item) OR pos IS NULL OR NOT isfinite(pos)
    OR pos <> floor(pos) OR pos < 1 OR b1 IS NULL OR b2 IS NULL OR b3 IS NULL
FROM (SELECT coalesce({sid}, '') AS sid, nfcl_float({pos}) AS pos,
    coalesce({item}, '') AS item, nfcl_bool({s1}) AS b1, nfcl_bool({s2}) AS b2,
    nfcl_bool({s3}) AS b3 FROM {{src}})"""
    b.stage(len(b.file_rows), path, tab.header, select, _mssd_check_file)


def _order_mssd(b: _Build, files, skip_level: int) -> int:
    """Drop repeated rows and order the rest; creates view ev_view.

    Returns the number of repeats dropped. Raises DataError, as load_mssd,
    at a repeated (session, position) with another track or skip flags.
    """
    dup, conflict = b.repeats("sid, pos", "r.item <> k.item OR r.flags <> k.flags")
    if conflict:
        _mssd_conflict(b, files)
    b.con.execute(
        "CREATE TABLE s AS SELECT sid, min(row) AS first, count(*) AS len "
        "FROM m GROUP BY sid"
    )

    # sessions by first appearance, rows by position: seq = rowid of ev
    b.con.execute(f"""
CREATE TABLE so AS SELECT sid, first,
    CAST(sum(len) OVER (ORDER BY first ROWS UNBOUNDED PRECEDING) - len AS BIGINT)
        AS start
    FROM s;
CREATE TABLE ev AS
    SELECT so.start, m.item, CAST(m.level >= {skip_level} AS UTINYINT) AS skip
    FROM m JOIN so USING (sid) ORDER BY so.first, m.pos;
CREATE VIEW ev_view AS SELECT rowid AS seq, start, 'mssd' AS u, item, skip,
    CAST(rowid AS DOUBLE) AS t FROM ev;
""")
    return int(dup)


def _mssd_conflict(b: _Build, files) -> None:
    """Raise load_mssd's error for the first conflicting repeat (in the order
    sessions by first appearance, position, row)."""
    r_row, k_row, sid, pos = b.rows("""
SELECT rep.row, rep.kept, r.sid, r.pos FROM rep JOIN raw r ON r.rowid = rep.row
    JOIN raw k ON k.rowid = rep.kept
    JOIN (SELECT sid, min(rowid) AS first FROM raw GROUP BY sid) f ON f.sid = r.sid
WHERE r.item <> k.item OR r.flags <> k.flags
ORDER BY f.first, r.pos, rep.row LIMIT 1""")[0]
    fa, la = b.where(k_row)
    fb, lb = b.where(r_row)
    msg = (
        f"session {sid!r} repeats position {int(pos)} with another track or skip "
        f"flags (first at {fa}, line {la})"
    )
    raise DataError(msg, str(fb), lb, "session_position")


# ---------------------------------------------------------------------------
# generic event tables


def shard_events(
    paths,
    out_dir,
    *,
    user: str | None = "user_id",
    item: str = "item_id",
    time: str = "timestamp",
    skip: str = "skip",
    session: str | None = None,
    gap_minutes: float | None = 30,
    min_len: int | None = 6,
    require_skip: bool = True,
    max_len: int | None = 20,
    shard_events: int = 1 << 22,
    memory_limit: str = "1GB",
    threads: int | None = None,
    tmp_dir=None,
    overwrite: bool = False,
    source: str | None = None,
) -> dict:
    """Preprocess tables of plays (one row per play) into shards, out of core.

    Same rules as `nfcl.io.load_events(path, user, item, time, skip, session,
    gap_minutes=..., min_len=..., require_skip=..., max_len=...)` on a CSV:
    times are unix seconds or ISO-8601 (UTC without a zone), skips
    0/1/true/false, `user=None` puts every row under "me", repeats of a
    (user, item, time) are dropped, rows are sorted by time within each user
    (table order on ties), and a session ends after more than `gap_minutes`
    idle (or, with `session`, is every row of one (user, session id)).
    Several files are read as one table, in the given order.

    Other arguments as `shard_mssd`.

    Returns:
        the manifest (dict), also written to out_dir/manifest.json.

    Raises:
        DataError: as nfcl.io.load_events, naming file, line and column.
        InputError: bad arguments; ImportError: duckdb is not installed.
    """
    _check_filters(max_len, min_len, gap_minutes)
    _check_shard_args(shard_events, threads)
    memory_limit = _check_size("memory_limit", memory_limit)
    names = {"item": item, "time": time, "skip": skip}
    if user is not None:
        names["user"] = user
    if session is not None:
        names["session"] = session
    wall0 = _time_now()
    files = input_files(paths)
    b = _Build(files, out_dir, memory_limit, threads, tmp_dir, overwrite)
    try:
        b.con.execute(
            "CREATE TABLE raw (u VARCHAR, item VARCHAR, t DOUBLE, "
            "skip UTINYINT, sid VARCHAR, bad BOOLEAN)"
        )
        for path in files:
            _stage_events(b, path, names)
        b.step("read")
        gap = None if gap_minutes is None else 60.0 * gap_minutes
        dup = _order_events(b, names, gap, session is not None)
        b.step("order")
        dropped = {"duplicate": dup}
        dropped.update(b.windows(max_len, min_len, require_skip, shard_events))
        options = {
            "user": user,
            "item": item,
            "time": time,
            "skip": skip,
            "session": session,
            "gap_minutes": gap_minutes,
            "min_len": min_len,
            "require_skip": require_skip,
            "max_len": max_len,
        }
        src = source or ", ".join(str(p) for p in files)
        return b.finish(src, "events", options, dropped, wall0)
    finally:
        b.close()


_time_now = time.perf_counter  # `time` is an argument name of shard_events


def _stage_events(b: _Build, path: Path, names: dict) -> None:
    tab, f = _header(path)
    with f:
        c = {k: f"c{tab.col(n)}" for k, n in names.items()}  # raises on a missing one
    u = f"coalesce({c['user']}, '')" if "user" in c else "'me'"
    sid = f"coalesce({c['session']}, '')" if "session" in c else "NULL"
    empty = " OR ".join(
        f"nfcl_blank({k})" for k in ("u", "item", "sid") if k != "sid" or "session" in c
    )
    select = f"""
SELECT u, item, t, skip, sid, {empty} OR t IS NULL OR skip IS NULL
FROM (SELECT {u} AS u, coalesce({c["item"]}, '') AS item, nfcl_time({c["time"]}) AS t,
    nfcl_bool({c["skip"]}) AS skip, {sid} AS sid FROM {{src}})"""

    def check(p, label):
        _events_check_file(p, label, names)

    b.stage(len(b.file_rows), path, tab.header, select, check)


def _order_events(b: _Build, names: dict, gap, by_session: bool) -> int:
    """Drop repeated plays, sort by (user, time, row) and find the sessions;
    creates view ev_view. Returns the number of repeats dropped.

    Raises DataError, as load_events, at a repeat with another skip (or
    session) value.
    """
    dup, conflict = b.repeats(
        "u, item, t", "r.skip <> k.skip OR r.sid IS DISTINCT FROM k.sid"
    )
    if conflict:
        for col, key in (("skip", "skip"), ("sid", "session")):
            if key in names:
                _events_conflict(b, names, col, key)

    # sort; a session starts at a new user, after a gap, or at a new session id
    if by_session:
        b.con.execute("""
CREATE TABLE ev0 AS SELECT m.u, m.item, m.t, m.skip, m.sid FROM m
    JOIN (SELECT u, sid, min(t) AS g0 FROM m GROUP BY u, sid) g USING (u, sid)
    ORDER BY m.u, g.g0, m.sid, m.t, m.row;""")
        new = "lag(sid) OVER w IS DISTINCT FROM sid"
    else:
        b.con.execute(
            "CREATE TABLE ev0 AS SELECT u, item, t, skip FROM m ORDER BY u, t, row"
        )
        gap_new = "false" if gap is None else f"t - lag(t) OVER w > {float(gap)!r}"
        new = f"lag(t) OVER w IS NULL OR {gap_new}"
    b.con.execute(f"""
CREATE TABLE ev AS SELECT seq, u, item, skip, t,
    max(CASE WHEN new THEN seq END) OVER (PARTITION BY u ORDER BY seq
        ROWS UNBOUNDED PRECEDING) AS start
FROM (SELECT rowid AS seq, *, {new} AS new FROM ev0
      WINDOW w AS (PARTITION BY u ORDER BY rowid));
CREATE VIEW ev_view AS SELECT seq, start, u, item, skip, t FROM ev;
""")
    return int(dup)


def _events_conflict(b: _Build, names: dict, col: str, key: str) -> None:
    """Raise load_events's error for the first repeat with another value of
    col (in the order user, item, time, row), if there is one."""
    found = b.rows(f"""
SELECT rep.row, rep.kept, r.{col}, k.{col} FROM rep JOIN raw r ON r.rowid = rep.row
    JOIN raw k ON k.rowid = rep.kept
WHERE r.{col} IS DISTINCT FROM k.{col}
ORDER BY r.u, r.item, r.t, rep.row LIMIT 1""")
    if not found:
        return
    r_row, k_row, v_r, v_k = found[0]
    fa, la = b.where(k_row)
    fb, lb = b.where(r_row)

    # values shown as load_events shows them (NumPy scalars)
    def show(v):
        return repr(np.bool_(v)) if col == "skip" else repr(np.str_(v))

    first = f"line {la}" if fa == fb else f"{fa}, line {la}"
    msg = (
        f"repeats the play at {first} (same user, item and time) with "
        f"{names[key]} {show(v_r)} instead of {show(v_k)}"
    )
    raise DataError(msg, str(fb), column=names[key], line=lb)
