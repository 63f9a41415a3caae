"""MSSD-scale training and full-catalogue evaluation with nfcl.

A synthetic stand-in for the Music Streaming Sessions Dataset slice of the
paper: 450,000 sessions of 10-20 tracks, 628,000 distinct tracks (Zipf-like
popularity, every track played at least once), about half of the plays
skipped. SASRec in the paper setting (dim 128, 8 heads, 2 layers, T 20,
batch 64, sampled softmax with 1,000 negatives, InfoNCE term w = 0.5) trains
for one epoch with ``fit``; then ``evaluate(..., protocols=("full",))`` ranks
2,000 test targets against all 628,000 tracks.

    python benchmarks/bench_scale.py                      # 10% of the epoch, ~1 min
    python benchmarks/bench_scale.py --sessions 450000    # the whole epoch
    python benchmarks/bench_scale.py --quick              # ~20 s

With ``--sessions N`` < 450,000 the epoch time is extrapolated linearly and
printed as such. The optimizer state is touched in full before training, so
the peak RSS of a partial run is that of a whole epoch.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import nfcl
import numpy as np
from nfcl.sessions import Sessions, leave_last_out

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers
import _common

N_SESSIONS, N_TRACKS = 450_000, 628_000


def mssd_like(n_sessions, n_tracks, skip_rate=0.5, seed=0) -> Sessions:
    """Synthetic sessions of 10-20 plays over ``n_tracks`` tracks (ids 1..n).

    Shapes: E ~ 15 * n_sessions plays; every track occurs at least once.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 21, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    E = int(offsets[-1])

    # Zipf-like popularity, then one forced play of every track
    weights = 1.0 / (np.arange(n_tracks) + 10.0) ** 0.8
    cdf = np.cumsum(weights)
    items = np.searchsorted(cdf, rng.random(E) * cdf[-1]).astype(np.int32) + 1
    forced = rng.choice(E, n_tracks, replace=False)
    items[forced] = rng.permutation(n_tracks).astype(np.int32) + 1
    return Sessions(
        items=items,
        skips=(rng.random(E) < skip_rate).astype(np.uint8),
        times=np.arange(E, dtype=np.float64),
        offsets=offsets,
        users=np.zeros(n_sessions, np.int32),
        item_keys=["<pad>"] + [f"t{i}" for i in range(1, n_tracks + 1)],
        user_keys=["u0"],
        source="synthetic MSSD-like",
    )


def head_sessions(ses: Sessions, n: int) -> Sessions:
    """The first n sessions, same ids and keys."""
    e = int(ses.offsets[n])
    return Sessions(
        items=ses.items[:e],
        skips=ses.skips[:e],
        times=ses.times[:e],
        offsets=ses.offsets[: n + 1],
        users=ses.users[:n],
        item_keys=ses.item_keys,
        user_keys=ses.user_keys,
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sessions",
        type=int,
        default=45_000,
        help="sessions to train on (450000 = the whole epoch)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-examples", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="~20 s smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.sessions, a.eval_examples = 5_000, 500
    a.sessions = min(a.sessions, N_SESSIONS)
    return a


def main(argv=None):
    args = parse_args(argv)
    print(
        _common.header("bench_scale: MSSD-scale SASRec epoch and full-catalogue eval")
    )
    nfcl.set_num_threads(args.threads)
    print(f"# threads: {args.threads} (nfcl.set_num_threads)")
    print(f"# 2-thread headroom at start: {_common.thread_headroom()}", flush=True)

    t0 = time.perf_counter()
    ses = mssd_like(N_SESSIONS, N_TRACKS)
    print(
        f"data: {ses!r} built in {time.perf_counter() - t0:.1f} s; "
        f"peak RSS {peak_rss_gb():.2f} GiB"
    )

    # one epoch (or its first --sessions sessions), with every optimizer page
    # resident from the start as in a whole epoch
    model = nfcl.SASRec(
        ses.n_items, dim=128, heads=8, layers=2, max_len=20, dropout=0.2
    )
    model._init_optimizer()
    for name in ("grads", "m", "v"):
        model._opt[name].fill(0.0)
    train = head_sessions(ses, args.sessions)
    meter = _common.CpuMeter()
    t0 = time.perf_counter()
    model.fit(
        train,
        epochs=1,
        batch_size=64,
        w=0.5,
        loss="sampled",
        n_neg=1000,
        progress=False,
    )
    part = time.perf_counter() - t0
    cpu = meter.stop()
    steps = -(-args.sessions // 64)
    full = part * N_SESSIONS / args.sessions
    print(
        f"\nepoch, measured: {args.sessions:,} sessions, {steps:,} steps in "
        f"{part:.1f} s ({part / steps * 1e3:.1f} ms/step, "
        f"{args.sessions / part:,.0f} sessions/s); loss {model.history[-1]['loss']:.3f}"
    )
    print(
        f"  CPU during the epoch: this process {cpu['mine']:.2f} cores, other "
        f"processes {cpu['others']:.2f} cores (of {os.cpu_count()})"
    )
    if cpu["others"] > 0.25:
        print(
            "  WARNING: other processes held a core meanwhile; a fork-join step "
            "then waits for the descheduled thread, so this time is inflated"
        )
    if args.sessions < N_SESSIONS:
        print(
            f"epoch, EXTRAPOLATED linearly to {N_SESSIONS:,} sessions: "
            f"{full:.0f} s = {full / 60:.1f} min (optimistic: steps get slower "
            "later in the epoch, see benchmarks/README.md)"
        )
    ok = "met" if full < 300 else f"MISSED by {full - 300:.0f} s"
    print(f"  bar: epoch < 5 min on {args.threads} threads: {ok}")

    # full-catalogue evaluation
    split = leave_last_out(head_sessions(ses, args.eval_examples), max_len=20)
    model.evaluate(split.test, protocols=("full",))  # warm-up
    meter = _common.CpuMeter()
    scores = model.evaluate(split.test, protocols=("full",))
    cpu = meter.stop()
    dt = cpu["wall"]
    n = len(split.test)
    print(
        f"\nfull evaluation: {n:,} queries x {ses.n_items - 1:,} items in "
        f"{dt:.2f} s = {n / dt:,.0f} queries/s (HR@10 {scores['full:HR@10']:.4f}); "
        f"other processes {cpu['others']:.2f} cores"
    )
    # the scoring products (queries x items x dim) against OpenBLAS's rate at
    # the core's block shape (1,024 query rows x 4,096 items, csrc/rank.c),
    # one thread's rate times the thread count
    rate = _common.sgemm_rate(_common.openblas_sgemm()[0], min(n, 1024), 4096, 128, 0, 1)
    bound = 2.0 * n * (ses.n_items - 1) * 128 / (rate * 1e9 * args.threads)
    print(
        f"  scoring products alone at {rate:.0f} GFLOP/s x {args.threads} thread(s): "
        f"{bound:.2f} s; achieved {bound / dt:.0%} of that sgemm bound"
    )

    rss = peak_rss_gb()
    ok = "met" if rss < 4 else f"MISSED by {rss - 4:.2f} GiB"
    print(f"\npeak RSS (ru_maxrss): {rss:.2f} GiB; bar < 4 GB: {ok}")
    print(f"# 2-thread headroom at end: {_common.thread_headroom()}")
    print(f"# load average at end: {_common.load_average()}")


if __name__ == "__main__":
    main()
