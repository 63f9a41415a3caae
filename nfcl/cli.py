"""The ``nfcl`` command line: ``nfcl run`` trains and compares models.

With no options, ``nfcl run`` trains SASRec with and without the skip-aware
term on the bundled listening history, over three seeds, prints one table and
writes results.json, runs.csv and comparison.png to ./nfcl-results.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

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
    probe = os.path.join(args.out, ".nfcl-write-test")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)


def cmd_run(args) -> int:
    check_args(args)
    if args.threads is not None:
        set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(args)
    split_fn = (sessions.leave_last_out if args.split == "leave-last-out"
                else sessions.temporal_split)
    split = split_fn(data, max_len=args.max_len)
    print(f"data: {data.source or 'bundled example'}: {data.n_sessions} sessions, "
          f"{data.items.size} plays, {data.n_items - 1} items, skip rate "
          f"{data.skip_rate:.1%}; split {args.split}: {len(split.test.targets)} test "
          f"examples")
    if data.dropped:
        print("dropped rows: " + ", ".join(f"{k}={v}" for k, v in data.dropped.items()))
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
    print()
    print(experiment.format_table(rows))
    meta = dict(args=vars(args), data=dict(source=data.source, sessions=data.n_sessions,
                plays=int(data.items.size), items=data.n_items - 1,
                skip_rate=data.skip_rate, fingerprint=data.fingerprint()),
                wall_seconds=wall)
    paths = experiment.write_results(args.out, rows, summaries, meta)
    png = experiment.plot_comparison(
        [r for r in rows if r["model"] in names], os.path.join(args.out, "comparison.png"),
        title=f"base vs +skip-aware term (w={args.w}), sampled ranking, test set, "
              f"mean ± sd over {args.seeds} seeds")
    print(f"\nwrote {paths['json']}, {paths['csv']}, {png} in {wall:.1f} s")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.command == "run":
            return cmd_run(args)
    except (NfclError, OSError, ValueError) as e:
        print(f"nfcl: error: {e}", file=sys.stderr)
        return 2
    return 1
