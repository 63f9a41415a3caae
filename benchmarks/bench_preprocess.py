"""Out-of-core preprocessing of an MSSD-format log under a 1 GiB memory cap.

Generates a synthetic log in the MSSD training-set layout (21 columns, one
row per play, sessions of 10-20 plays, Zipf-like track popularity, skip
flags cumulative as in MSSD) of at least ``--gb`` GB in ``--files`` CSV
files, in a fresh folder under ``--tmp`` (never in the repository). Then a
child process runs `nfcl.shards.shard_mssd` on it with

* DuckDB's own ``memory_limit`` (``--duckdb-memory``), below the cap, with
  a spill folder next to the output;
* a cap of ``--cap`` on the child (``--cap-kind``):

  - ``rss`` (default): this process samples the child's VmRSS every 0.2 s
    and kills it above the cap; the kernel's exact peak (VmHWM) is checked
    against the cap at the end;
  - ``data``: RLIMIT_DATA (`prlimit --data`), so any allocation past the cap
    fails inside the child. It counts private writable mappings that are
    never touched (DuckDB reserves ~190 MB at its first CSV read, NumPy's
    and nfcl's OpenBLAS 32 MB each), so the child peaks ~500 MB higher than
    its RSS;
  - ``as``: RLIMIT_AS, which also counts reserved address space.

  The child runs with MALLOC_ARENA_MAX=1, MALLOC_MMAP_THRESHOLD_=131072
  (freed large blocks go back to the OS) and OPENBLAS_NUM_THREADS=1.

It reports the input size, rows, rows/s and MB/s, the child's peak RSS
(VmHWM, and ru_maxrss of the reaped child), peak VmData, the per-step
seconds and peak RSS, and checks the result against counts the generator
computes from its own formulas (sessions and plays kept, distinct tracks)
and the fingerprint re-read from the files. The folder is deleted at the
end unless ``--keep``; ``--logs`` reuses a kept one.

    python benchmarks/bench_preprocess.py                 # 5 GB, ~4 min here
    python benchmarks/bench_preprocess.py --gb 0.2        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers
import _common

N_TRACKS = 3_000_000  # catalogue the tracks are drawn from (MSSD: 3.7 M)

# one row per play: session s of length L at position p; hashes stand in
# for randomness so that the expected counts can be computed from the same
# formulas without reading the files
PLAYS = """
SELECT s, L, p,
    CAST(floor({n_tracks} * pow((hash(s, p, 't') % 1000003) / 1000003.0, 2.5))
        AS BIGINT) AS track,
    CAST(hash(s, p, 'k') % 4 AS INTEGER) AS level
FROM (SELECT range AS s, CAST(10 + hash(range, 'L') % 11 AS INTEGER) AS L
      FROM range({s0}, {s1})) sess, LATERAL generate_series(1, L) g(p)
"""


def _uuid(expr: str) -> str:
    h = f"md5({expr})"
    return (
        f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-' || substr({h}, 13, 4)"
        f" || '-' || substr({h}, 17, 4) || '-' || substr({h}, 21, 12)"
    )


def _tf(cond: str) -> str:
    return f"CASE WHEN {cond} THEN 'True' ELSE 'False' END"


def mssd_rows(k: int, s0: int, s1: int) -> str:
    """SQL for the rows of file k: sessions s0..s1-1, in MSSD's 21 columns."""
    plays = PLAYS.format(n_tracks=N_TRACKS, s0=s0, s1=s1)
    ctx = "['editorial_playlist', 'user_collection', 'catalog', 'radio', 'charts']"
    reason = "['trackdone', 'fwdbtn', 'clickrow', 'backbtn', 'endplay']"
    return f"""
SELECT '{k}_' || {_uuid("'s' || s")} AS session_id, p AS session_position,
    L AS session_length, 't_' || {_uuid("'t' || track")} AS track_id_clean,
    {_tf("level >= 3")} AS skip_1, {_tf("level >= 2")} AS skip_2,
    {_tf("level >= 1")} AS skip_3, {_tf("level = 0")} AS not_skipped,
    CAST(p = 1 AS INTEGER) AS context_switch, 1 AS no_pause_before_play,
    0 AS short_pause_before_play, 0 AS long_pause_before_play,
    CAST(hash(s, p, 'f') % 3 AS INTEGER) AS hist_user_behavior_n_seekfwd,
    0 AS hist_user_behavior_n_seekback,
    {_tf("hash(s, 'sh') % 4 = 0")} AS hist_user_behavior_is_shuffle,
    CAST(hash(s, 'h') % 24 AS INTEGER) AS hour_of_day,
    CAST(DATE '2018-07-01' + CAST(hash(s, 'd') % 16 AS INTEGER) AS VARCHAR) AS date,
    {_tf("hash(s, 'pr') % 5 <> 0")} AS premium,
    {ctx}[CAST(1 + hash(s, 'c') % 5 AS BIGINT)] AS context_type,
    {reason}[CAST(1 + hash(s, p, 'rs') % 5 AS BIGINT)]
        AS hist_user_behavior_reason_start,
    CASE WHEN level >= 2 THEN 'fwdbtn' ELSE 'trackdone' END
        AS hist_user_behavior_reason_end
FROM ({plays}) ORDER BY s, p
"""


def generate(folder: Path, gb: float, n_files: int, threads: int) -> dict:
    """Write >= gb GB of MSSD-format CSV in n_files files; return their facts
    and the counts shard_mssd must find (default filters)."""
    import duckdb

    folder.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(
        f"SET threads = {threads}; SET memory_limit = '1GB'; "
        f"SET temp_directory = '{folder / 'gen-spill'}'"
    )

    # bytes per session from a sample, then sessions per file
    sample = folder / "sample.csv"
    con.execute(
        f"COPY ({mssd_rows(0, 0, 20000)}) TO '{sample}' (HEADER, DELIMITER ',')"
    )
    per_session = sample.stat().st_size / 20000
    sample.unlink()
    per_file = int(gb * 1e9 / n_files / per_session * 1.01) + 1

    files, t0 = [], time.perf_counter()
    for k in range(n_files):
        path = folder / f"log_{k:02d}.csv"
        s0, s1 = k * per_file, (k + 1) * per_file
        con.execute(
            f"COPY ({mssd_rows(k, s0, s1)}) TO '{path}' (HEADER, DELIMITER ',')"
        )
        files.append(path)
        print(
            f"# generated {path.name}: {path.stat().st_size / 1e9:.2f} GB", flush=True
        )
    seconds = time.perf_counter() - t0

    # expected results, from the formulas alone: a session is kept when one
    # of its plays has skip level >= 2 (all are 10-20 long, max_len 20)
    plays = PLAYS.format(n_tracks=N_TRACKS, s0=0, s1=n_files * per_file)
    rows, sessions, kept_s, kept_e, tracks = con.execute(f"""
WITH x AS ({plays}),
     k AS (SELECT s FROM x GROUP BY s HAVING max(level) >= 2)
SELECT (SELECT count(*) FROM x), (SELECT count(DISTINCT s) FROM x),
    (SELECT count(*) FROM k), (SELECT count(*) FROM x SEMI JOIN k USING (s)),
    (SELECT count(DISTINCT track) FROM x SEMI JOIN k USING (s))""").fetchall()[0]
    con.close()
    shutil.rmtree(folder / "gen-spill", ignore_errors=True)
    facts = {
        "files": [str(p) for p in files],
        "bytes": sum(p.stat().st_size for p in files),
        "rows": rows,
        "sessions": sessions,
        "kept_sessions": kept_s,
        "kept_events": kept_e,
        "kept_tracks": tracks,
        "seconds": seconds,
    }
    (folder / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def child(args) -> None:
    """Run shard_mssd in this (capped) process; print one JSON line."""
    from nfcl.shards import shard_mssd

    t0 = time.perf_counter()
    m = shard_mssd(
        args.child[0],
        args.child[1],
        memory_limit=args.duckdb_memory,
        threads=args.threads,
        shard_events=args.shard_events,
    )
    wall = time.perf_counter() - t0
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmPeak"):
                status[key] = int(value.split()[0]) * 1024
    keep = (
        "n_events",
        "n_sessions",
        "n_items",
        "dropped",
        "fingerprint",
        "seconds",
        "peak_rss_mib",
        "duckdb",
        "shards",
    )
    out = {k: m[k] for k in keep}
    out.update(
        wall=wall,
        vmhwm=status["VmHWM"],
        vmpeak=status["VmPeak"],
        rows=m["input"]["rows"],
        n_shards=len(m["shards"]),
    )
    out["shards"] = len(out["shards"])
    print("RESULT " + json.dumps(out), flush=True)


def sample_memory(proc, rss_cap: int | None = None, every: float = 0.2) -> dict:
    """Peak VmRSS and VmData (what RLIMIT_DATA counts) of a running child,
    sampled from /proc every `every` seconds until it exits; with rss_cap,
    the child is killed as soon as its VmRSS exceeds it."""
    peaks = {"VmRSS": 0, "VmData": 0, "killed": False}
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmData"):
                        peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        except (OSError, ValueError):
            pass
        if rss_cap is not None and peaks["VmRSS"] > rss_cap:
            proc.kill()
            peaks["killed"] = True
        time.sleep(every)
    return peaks


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=5.0, help="input size, GB (1e9 bytes)")
    p.add_argument("--files", type=int, default=10)
    p.add_argument(
        "--cap", default="1GiB", help="OS memory cap of the preprocessing process"
    )
    p.add_argument(
        "--cap-kind",
        default="rss",
        choices=["rss", "data", "as"],
        help="RSS watchdog (default), RLIMIT_DATA or RLIMIT_AS",
    )
    p.add_argument("--duckdb-memory", default="512MiB", help="DuckDB memory_limit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--arenas",
        type=int,
        default=1,
        help="MALLOC_ARENA_MAX of the child (glibc malloc arenas)",
    )
    p.add_argument("--shard-events", type=int, default=1 << 22)
    p.add_argument("--tmp", default="/tmp", help="parent of the work folder")
    p.add_argument("--keep", action="store_true", help="keep the generated log")
    p.add_argument(
        "--logs", default=None, help="reuse the logs/ folder of a run made with --keep"
    )
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    print(_common.header("out-of-core preprocessing (nfcl.shards.shard_mssd)"))
    folder = Path(tempfile.mkdtemp(prefix="nfcl-bench-preprocess-", dir=args.tmp))
    try:
        return run(args, folder)
    finally:
        if args.keep:
            print(f"# kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def run(args, folder: Path) -> int:
    if args.logs:
        gen = json.loads((Path(args.logs) / "facts.json").read_text())
        logs = Path(args.logs)
    else:
        logs = folder / "logs"
        gen = generate(logs, args.gb, args.files, args.threads)
    print(
        f"# input: {len(gen['files'])} files, {gen['bytes'] / 1e9:.2f} GB, "
        f"{gen['rows']:,} rows, generated in {gen['seconds']:.0f} s",
        flush=True,
    )

    # the preprocessing, in a child under RLIMIT_DATA, RLIMIT_AS or a watchdog
    cap = parse_size(args.cap)
    if args.cap_kind == "rss":
        cap_name = f"RSS watchdog {args.cap} (VmRSS sampled every 0.2 s, kill above)"
    else:
        cap_name = f"RLIMIT_{args.cap_kind.upper()} {args.cap}"

    def limit():
        if args.cap_kind != "rss":
            kind = (
                resource.RLIMIT_DATA if args.cap_kind == "data" else resource.RLIMIT_AS
            )
            resource.setrlimit(kind, (cap, cap))

    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(logs / "*.csv"),
        str(folder / "shards"),
        "--duckdb-memory",
        args.duckdb_memory,
        "--threads",
        str(args.threads),
        "--shard-events",
        str(args.shard_events),
    ]
    load0, cpu = _common.load_average(), _common.CpuMeter()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd,
            preexec_fn=limit,  # noqa: PLW1509 (this process runs no threads)
            stdout=out,
            stderr=err,
            text=True,
            env=dict(
                os.environ,
                MALLOC_ARENA_MAX=str(args.arenas),
                MALLOC_MMAP_THRESHOLD_="131072",
                OPENBLAS_NUM_THREADS="1",
            ),
        )
        peaks = sample_memory(proc, cap if args.cap_kind == "rss" else None)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.perf_counter() - t0
    usage = cpu.stop()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss = kids.ru_maxrss * 1024

    # CpuMeter's "others" holds the child too: take the child's CPU out
    child_cores = (
        kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    ) / wall
    others = max(0.0, usage["others"] - child_cores)
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(stdout[-3000:], stderr[-3000:], sep="\n")
        killed = " (killed by the watchdog)" if peaks["killed"] else ""
        print(f"# FAILED: exit {proc.returncode}{killed} under {cap_name}")
        return 1
    r = json.loads(lines[-1][len("RESULT ") :])

    # checks against the generator's own counts
    checks = {
        "rows read": (r["rows"], gen["rows"]),
        "sessions kept": (r["n_sessions"], gen["kept_sessions"]),
        "plays kept": (r["n_events"], gen["kept_events"]),
        "items (+ padding)": (r["n_items"], gen["kept_tracks"] + 1),
        "plays dropped": (sum(r["dropped"].values()), gen["rows"] - gen["kept_events"]),
    }
    from nfcl.shards import open_shards

    t1 = time.perf_counter()
    verified = open_shards(folder / "shards").verify() == r["fingerprint"]
    verify_s = time.perf_counter() - t1

    gb = gen["bytes"] / 1e9
    figures = {
        "input_bytes": gen["bytes"],
        "files": len(gen["files"]),
        "rows": gen["rows"],
        "wall_seconds": round(r["wall"], 1),
        "process_seconds": round(wall, 1),
        "rows_per_second": round(gen["rows"] / r["wall"]),
        "mb_per_second": round(gen["bytes"] / 1e6 / r["wall"], 1),
        "peak_rss_vmhwm": r["vmhwm"],
        "peak_rss_ru_maxrss": maxrss,
        "peak_vmdata_sampled": peaks["VmData"],
        "peak_rss_sampled": peaks["VmRSS"],
        "malloc_arena_max": args.arenas,
        "cap": cap_name,
        "peak_address_space_vmpeak": r["vmpeak"],
        "duckdb": r["duckdb"],
        "steps": r["seconds"],
        "peak_rss_mib_by_step": r["peak_rss_mib"],
        "shards": r["shards"],
        "sessions": r["n_sessions"],
        "events": r["n_events"],
        "n_items": r["n_items"],
        "dropped": r["dropped"],
        "fingerprint": r["fingerprint"],
        "fingerprint_verified": verified,
        "verify_seconds": round(verify_s, 1),
        "checks": {k: {"got": a, "expected": b} for k, (a, b) in checks.items()},
        "load_before": load0,
        "load_after": _common.load_average(),
        "other_cores": round(others, 2),
        "child_cores": round(child_cores, 2),
    }
    print()
    print("| figure | value |")
    print("|---|---|")
    rows = [
        ("input", f"{len(gen['files'])} CSV files, {gb:.2f} GB, {gen['rows']:,} rows"),
        ("wall time (shard_mssd)", f"{r['wall']:.1f} s"),
        (
            "throughput",
            (f"{figures['rows_per_second']:,} rows/s, {figures['mb_per_second']} MB/s"),
        ),
        ("peak RSS (VmHWM)", f"{r['vmhwm'] / 2**20:.0f} MiB"),
        ("peak RSS (ru_maxrss, reaped child)", f"{maxrss / 2**20:.0f} MiB"),
        (
            "peak VmData (what RLIMIT_DATA counts; sampled every 0.2 s)",
            f"{peaks['VmData'] / 2**20:.0f} MiB",
        ),
        ("peak address space (VmPeak)", f"{r['vmpeak'] / 2**20:.0f} MiB"),
        (
            "cap",
            (
                f"{cap_name} on the child; DuckDB memory_limit "
                f"{r['duckdb']['memory_limit']}, {r['duckdb']['threads']} threads, "
                f"MALLOC_ARENA_MAX={args.arenas}"
            ),
        ),
        (
            "output",
            (
                f"{r['shards']} shards, {r['n_sessions']:,} sessions, "
                f"{r['n_events']:,} plays, {r['n_items'] - 1:,} items"
            ),
        ),
        ("steps (s)", ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items())),
        (
            "peak RSS after each step (MiB)",
            ", ".join(f"{k} {v}" for k, v in r["peak_rss_mib"].items()),
        ),
        (
            "CPU: preprocessing / other processes",
            f"{child_cores:.2f} / {others:.2f} cores (of {os.cpu_count()})",
        ),
        ("fingerprint re-read from the files", "same" if verified else "DIFFERENT"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    within = r["vmhwm"] <= cap
    print(
        f"# peak RSS {r['vmhwm'] / 2**20:.0f} MiB {'within' if within else 'ABOVE'} "
        f"the cap of {cap / 2**20:.0f} MiB"
    )
    ok = verified and within
    for name, (got, want) in checks.items():
        print(
            f"# check {name}: {got:,} (expected {want:,}) "
            f"{'ok' if got == want else 'MISMATCH'}"
        )
        ok &= got == want
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
