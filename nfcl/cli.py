"""The ``nfcl`` command line: ``nfcl run`` trains and compares models.

With no options, ``nfcl run`` trains SASRec with and without the skip-aware
term on the bundled listening history, over three seeds, prints one table and
writes results.json, runs.csv and comparison.png to ./nfcl-results.

Under an MPI launcher (``mpirun -n 4 nfcl run ...``) the processes train and
evaluate every model data-parallel (nfcl.distributed); rank 0 prints and
writes the outputs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback

from . import experiment, io, sessions
from ._runtime import set_num_threads
from .errors import NfclError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfcl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train with and without the skip-aware term, compare")
    d = r.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help="listening data (default: the bundled Spotify example history)")
    d.add_argument("--format", default="auto", choices=["auto", "spotify", "mssd", "events"],
                   help="how to read --data (auto: MSSD CSV columns, Spotify JSON/CSV, "
                        "else a user,item,timestamp,skip CSV)")
    d.add_argument("--skip-rule", default="under30s",
                   help="Spotify skip rule: under30s, under:<seconds>, fwdbtn, "
                        "fwdbtn_or_under30s")
    d.add_argument("--split", default="leave-last-out",
                   choices=["leave-last-out", "temporal"])
    d.add_argument("--no-filter", action="store_true",
                   help="keep sessions of any length and without skips")
    m = r.add_argument_group("model")
    m.add_argument("--model", default="sasrec", choices=[*experiment.MODELS, "all"],
                   help="encoder, or all four one after another")
    m.add_argument("--dim", type=int, default=64)
    m.add_argument("--heads", type=int, default=2, help="SASRec/BERT4Rec heads")
    m.add_argument("--layers", type=int, default=None,
                   help="encoder layers (default: 2 for Transformers, 1 for GRU4Rec)")
    m.add_argument("--window", type=int, default=5, help="Caser window")
    m.add_argument("--max-len", type=int, default=20)
    m.add_argument("--dropout", type=float, default=0.2)
    t = r.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--w", type=float, default=0.5, help="weight of the contrastive term")
    t.add_argument("--tau", type=float, default=0.1, help="contrastive temperature")
    t.add_argument("--contrastive", default="ours", choices=["ours", "reference"])
    t.add_argument("--loss", default="sampled", choices=["sampled", "full"])
    t.add_argument("--n-neg", type=int, default=1000)
    t.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    t.add_argument("--threads", type=int, default=None)
    o = r.add_argument_group("output")
    o.add_argument("--out", default="nfcl-results", help="output folder")
    o.add_argument("--no-progress", action="store_true")
    _shard_parser(sub)
    return p


def load_data(args):
    """Read --data with the chosen format and filters into Sessions."""
    filters = {} if not args.no_filter else dict(min_len=None, require_skip=False)
    filters["max_len"] = args.max_len
    if args.data is None:
        return io.load_example(skip_rule=args.skip_rule, **filters)
    fmt = args.format
    if fmt == "auto":
        fmt = io.sniff_format(args.data)
    if fmt == "spotify":
        return io.load_spotify(args.data, skip_rule=args.skip_rule, **filters)
    if fmt == "mssd":
        return io.load_mssd(args.data, **filters)
    return io.load_events(args.data, **filters)


def model_options(name, args) -> dict:
    """The command line's size options, as the chosen encoder names them."""
    kw = dict(dim=args.dim, max_len=args.max_len, dropout=args.dropout)
    if name in ("sasrec", "bert4rec"):
        kw.update(heads=args.heads, layers=args.layers or 2)
    elif name == "gru4rec":
        kw.update(hidden=args.dim, layers=args.layers or 1)
    elif name == "caser":
        kw.update(window=args.window)
    return kw


def check_args(args) -> None:
    """Refuse impossible options before any work, and make sure the output
    folder is writable so that a long run is not lost at the end."""
    for name in ("seeds", "epochs", "batch_size", "dim", "max_len", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise NfclError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    os.makedirs(args.out, exist_ok=True)
    probe = os.path.join(args.out, f".nfcl-write-test-{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)


def cmd_run(args, root=True) -> int:
    """The experiment; ``root`` False (an MPI rank but the first) prints and
    writes nothing."""
    say = print if root else (lambda *a, **k: None)
    check_args(args)
    if args.threads is not None:
        set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(args)
    split_fn = (sessions.leave_last_out if args.split == "leave-last-out"
                else sessions.temporal_split)
    split = split_fn(data, max_len=args.max_len)
    say(f"data: {data.source or 'bundled example'}: {data.n_sessions} sessions, "
        f"{data.items.size} plays, {data.n_items - 1} items, skip rate "
        f"{data.skip_rate:.1%}; split {args.split}: {len(split.test.targets)} test "
        f"examples")
    if data.dropped:
        say("dropped rows: " + ", ".join(f"{k}={v}" for k, v in data.dropped.items()))
    fit_kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  tau=args.tau, loss=args.loss, n_neg=args.n_neg)
    names = list(experiment.MODELS) if args.model == "all" else [args.model]
    rows = []
    for name in names:
        rows += experiment.compare(split, model=name, seeds=range(args.seeds), w=args.w,
                                   contrastive=args.contrastive,
                                   model_kw=model_options(name, args), fit_kw=fit_kw,
                                   progress=not args.no_progress)
    rows += experiment.baseline_rows(split)
    wall = time.perf_counter() - t0
    summaries = {f"{m}/{p}": experiment.summarize([r for r in rows if r["model"] == m], p)
                 for m in names for p in ("sampled", "full")}
    say()
    say(experiment.format_table(rows))
    if not root:
        return 0
    meta = dict(args=vars(args), data=dict(source=data.source, sessions=data.n_sessions,
                plays=int(data.items.size), items=data.n_items - 1,
                skip_rate=data.skip_rate, fingerprint=data.fingerprint()),
                wall_seconds=wall)
    paths = experiment.write_results(args.out, rows, summaries, meta)
    png = experiment.plot_comparison(
        [r for r in rows if r["model"] in names], os.path.join(args.out, "comparison.png"),
        title=f"base vs +skip-aware term (w={args.w}), sampled ranking, test set, "
              f"mean ± sd over {args.seeds} seed{'s' if args.seeds != 1 else ''}")
    say(f"\nwrote {paths['json']}, {paths['csv']}, {png} in {wall:.1f} s")
    return 0


# ---------------------------------------------------------------------------
# nfcl shard: out-of-core preprocessing (nfcl.shards, needs duckdb)


def _shard_parser(sub) -> None:
    s = sub.add_parser("shard", help="preprocess logs larger than memory into "
                       "memory-mapped training shards (needs duckdb)")
    s.add_argument("inputs", nargs="+",
                   help="CSV files (.csv, .csv.gz), glob patterns ('logs/*.csv') or folders")
    s.add_argument("out", help="output folder")
    s.add_argument("--format", default="auto", choices=["auto", "mssd", "events"],
                   help="auto: MSSD columns or else a user,item,timestamp,skip table")
    s.add_argument("--skip-level", type=int, default=2, help="MSSD: skip_1+2+3 needed")
    s.add_argument("--user-col", default="user_id", help="events: '' for one user 'me'")
    s.add_argument("--item-col", default="item_id")
    s.add_argument("--time-col", default="timestamp")
    s.add_argument("--skip-col", default="skip")
    s.add_argument("--session-col", default=None, help="events: session ids (no gap rule)")
    s.add_argument("--gap-minutes", type=float, default=30.0)
    s.add_argument("--max-len", type=int, default=20)
    s.add_argument("--min-len", type=int, default=6)
    s.add_argument("--no-filter", action="store_true",
                   help="keep sessions of any length and without skips")
    s.add_argument("--shard-events", type=int, default=1 << 22, help="plays per shard")
    s.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--tmp-dir", default=None, help="spill folder (default: in the output)")
    s.add_argument("--overwrite", action="store_true")


def cmd_shard(args) -> int:
    from . import shards

    files = shards.input_files(args.inputs)
    fmt = io.sniff_format(files[0]) if args.format == "auto" else args.format
    if fmt not in ("mssd", "events"):
        raise NfclError(f"{files[0]}: nfcl shard reads MSSD or user,item,timestamp,skip "
                        f"CSV files, this looks like {fmt}")
    kw = dict(max_len=args.max_len, min_len=None if args.no_filter else args.min_len,
              require_skip=not args.no_filter, shard_events=args.shard_events,
              memory_limit=args.memory_limit, threads=args.threads,
              tmp_dir=args.tmp_dir, overwrite=args.overwrite)
    try:
        if fmt == "mssd":
            m = shards.shard_mssd(files, args.out, skip_level=args.skip_level, **kw)
        else:
            m = shards.shard_events(files, args.out, user=args.user_col or None,
                                    item=args.item_col, time=args.time_col,
                                    skip=args.skip_col, session=args.session_col,
                                    gap_minutes=args.gap_minutes, **kw)
    except ImportError as e:
        raise NfclError(str(e)) from None
    print(f"wrote {len(m['shards'])} shards to {args.out}: {m['n_sessions']} sessions, "
          f"{m['n_events']} plays, {m['n_items'] - 1} items, {m['input']['rows']} rows "
          f"read in {m['seconds']['total']:.1f} s")
    print("dropped rows: " + ", ".join(f"{k}={v}" for k, v in m["dropped"].items()))
    print(f"fingerprint {m['fingerprint']}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    comm = None
    try:
        if args.command == "shard":
            return cmd_shard(args)
        if args.command == "run":
            from . import distributed  # imports mpi4py only under an MPI launcher
            comm = distributed.launched()
            if comm is None:
                return cmd_run(args)
            with distributed.data_parallel(comm):
                return cmd_run(args, root=comm.Get_rank() == 0)
    except (NfclError, OSError, ValueError) as e:
        rank = "" if comm is None else f" (rank {comm.Get_rank()})"
        print(f"nfcl: error{rank}: {e}", file=sys.stderr, flush=True)
        if comm is not None:  # the other ranks may be waiting in a collective
            comm.Abort(2)
        return 2
    except BaseException:
        if comm is None:
            raise
        traceback.print_exc()  # and end every rank, as for the errors above
        comm.Abort(1)
    return 1
