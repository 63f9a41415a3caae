"""Training throughput against batch size, nfcl and its PyTorch peer, in one
process, and a plot of it (benchmarks/throughput_vs_batch.png).

For each model and batch size, both sides train on the same synthetic
batches (bench_train.py's settings, batch size varied) in alternating timed
blocks; the median block gives sequences per second. Small batches show the
fixed cost per step (Python, kernel launches, Adam over the dense weights),
large ones the throughput of the arithmetic.

    python benchmarks/bench_batch.py                       # ~4 min
    python benchmarks/bench_batch.py --models SASRec --setting paper --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import nfcl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_train as bt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="SASRec,GRU4Rec")
    ap.add_argument("--setting", default="recbole", choices=sorted(bt.SETTINGS))
    ap.add_argument("--batches", default="16,32,64,128,256,512")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--out", default=str(HERE / "throughput_vs_batch.png"))
    args = ap.parse_args(argv)
    import torch

    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    print(_common.header("bench_batch: sequences/s against batch size", True))
    nfcl.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {}  # (model, side) -> [(batch, seq/s)]
    print("| model | batch | nfcl seq/s | torch eager seq/s | nfcl / torch | other procs |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for B in (int(b) for b in args.batches.split(",")):
            s = dict(bt.SETTINGS[args.setting], batch=B)
            batches = _common.synthetic_batches(8, B, s["max_len"], s["n_items"])
            model = bt.nfcl_model(name, s)
            eager = bt.torch_trainer(name, s, "auto", compile=False)
            contenders = bt.make_contenders(model, bt.step_args(s), eager, None, batches)
            meter = _common.CpuMeter()
            res = _common.interleaved(contenders, args.repeats, args.block)
            others = meter.stop()["others"]
            a, b = B / res["nfcl"]["median"], B / res["eager"]["median"]
            results.setdefault((name, "nfcl"), []).append((B, a))
            results.setdefault((name, "torch eager"), []).append((B, b))
            print(f"| {name} | {B} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {others:.2f} |",
                  flush=True)
    plot(results, args)
    print(f"\n{time.perf_counter() - t0:.0f} s; plot written to {args.out}")


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {}
    for (name, side), pts in results.items():
        color = colors.setdefault(name, f"C{len(colors)}")
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", color=color, linestyle="-" if side == "nfcl" else "--",
                label=f"{name} {side}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("training sequences / s")
    ax.set_title(f"{args.setting} setting, {args.threads} thread(s): nfcl (solid) vs "
                 f"PyTorch eager (dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
