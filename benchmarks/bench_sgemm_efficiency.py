"""How close one SASRec training step comes to the sgemm it is built on.

1. Single-thread sgemm GFLOP/s of the OpenBLAS that nfcl links (the
   scipy-openblas32 wheel, symbol scipy_cblas_sgemm, called through ctypes;
   numpy links a different OpenBLAS), at every matrix shape one step uses.
2. The matmul FLOPs of one SASRec step in the RecBole-like setting (B 256,
   T 50, dim 64, 2 heads, 2 layers, full softmax over 3,500 items), counted
   from the calls nfcl makes: linears, attention, head, softmax; fwd + bwd.
3. nfcl's measured step time, 1 thread -> achieved GFLOP/s, as a share of
   the sgemm bound (the time those calls take at their measured rates),
   per part (forward, next-item loss, backward, Adam).

    python benchmarks/bench_sgemm_efficiency.py           # ~20 s
    python benchmarks/bench_sgemm_efficiency.py --quick   # ~10 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import nfcl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers
import _common
import bench_train

XENT_BLOCK_FLOATS = 1 << 24  # rows per softmax block = this / K (csrc/losses.c)
# nfcl_sgemm (csrc/blas.c) cuts a product of >= 2^24 multiply-adds into
# min(8, M // 64) row blocks, one OpenBLAS call each, at any thread count
SPLIT_MIN_WORK, MIN_BLOCK_ROWS, MAX_BLOCKS = 1 << 24, 64, 8


def openblas_calls(M, N, K):
    """[(rows, count)]: the OpenBLAS calls one nfcl_sgemm of (M,N,K) makes."""
    nb = (
        1
        if M * N * K < SPLIT_MIN_WORK
        else min(MAX_BLOCKS, max(1, M // MIN_BLOCK_ROWS))
    )
    rows = [M * (i + 1) // nb - M * i // nb for i in range(nb)]
    return [(r, rows.count(r)) for r in sorted(set(rows))]


def sasrec_calls(B, T, C, NH, L, F, V):
    """The sgemm calls of one nfcl SASRec step: (part, name, M, N, K, ta, tb, count).

    Mirrors csrc/layers.c (linear, attention per (b, head)), transformer.c
    (layers, GELU head), losses.c (softmax in row blocks of 2^24 / K) and
    blas.c (large products cut into row blocks).
    """
    N, hs, K = B * T, C // NH, V - 1
    calls = []
    linears = [("qkv", 3 * C, C), ("attn out", C, C), ("ff1", F, C), ("ff2", C, F)]
    for name, oc, ic in linears * L + [("head", C, C)]:
        calls.append(("forward", name, N, oc, ic, 0, 1, 1))
        calls.append(("backward", name + " dx", N, ic, oc, 0, 0, 1))
        calls.append(("backward", name + " dW", oc, ic, N, 1, 0, 1))
    for _ in range(L):
        calls.append(("forward", "att scores", T, T, hs, 0, 1, B * NH))
        calls.append(("forward", "att mix", T, hs, T, 0, 0, B * NH))
        calls.append(("backward", "att dP", T, T, hs, 0, 1, B * NH))
        calls.append(("backward", "att dV", T, hs, T, 1, 0, B * NH))
        calls.append(("backward", "att dQ", T, hs, T, 0, 0, B * NH))
        calls.append(("backward", "att dK", T, hs, T, 1, 0, B * NH))
    nb = min(N, max(16, XENT_BLOCK_FLOATS // K))
    for r0 in range(0, N, nb):
        nr = min(nb, N - r0)
        calls.append(("next-item", "logits", nr, K, C, 0, 1, 1))
        calls.append(("next-item", "dq", nr, C, K, 0, 0, 1))
        calls.append(("next-item", "dE", K, C, nr, 1, 0, 1))
    out = []
    for part, name, M, N_, K_, ta, tb, n in calls:
        for rows, count in openblas_calls(M, N_, K_):
            out.append((part, name, rows, N_, K_, ta, tb, n * count))
    return out


def merge(calls):
    """Same-shape calls summed: {(M,N,K,ta,tb): count}."""
    out = {}
    for *_, M, N, K, ta, tb, n in calls:
        out[(M, N, K, ta, tb)] = out.get((M, N, K, ta, tb), 0) + n
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=8, help="timed nfcl steps")
    a = p.parse_args(argv)
    if a.quick:
        a.steps = 3
    return a


def main(argv=None):
    args = parse_args(argv)
    print(_common.header("bench_sgemm_efficiency: SASRec RecBole-like, 1 thread"))
    fn, config = _common.openblas_sgemm()
    print(f"# OpenBLAS: {config}")
    nfcl.set_num_threads(1)
    seconds = 0.05 if args.quick else 0.15

    # the step nfcl runs, on the benchmark's synthetic batches
    s = bench_train.SETTINGS["recbole"]
    batches = _common.synthetic_batches(16, s["batch"], s["max_len"], s["n_items"])
    widths = [int((b[0] > 0).sum(1).max()) for b in batches]
    T = statistics.median(widths) - 1
    real = statistics.mean(int((b[0][:, 1:] > 0).sum()) for b in batches)
    model = bench_train.nfcl_model("SASRec", s)
    kw = bench_train.step_args(s)
    for i in range(2):
        model._train_step(*batches[i], **kw)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        model._train_step(*batches[i % 16], **kw)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    parts = bench_train.profile_nfcl(model, batches, max(2, args.steps // 2), s)

    # sgemm rates at the step's shapes, and the bound they imply
    B, C, V = s["batch"], s["dim"], s["n_items"]
    calls = sasrec_calls(B, int(T), C, s["heads"], s["layers"], C, V)
    rates = {k: _common.sgemm_rate(fn, *k, seconds=seconds) for k in merge(calls)}
    peak = _common.sgemm_rate(fn, 1024, 1024, 1024, 0, 0, seconds=seconds)
    print(f"\nsgemm, 1 thread (square 1024: {peak:.1f} GFLOP/s):")
    rows = []
    for (M, N, K, ta, tb), n in merge(calls).items():
        names = sorted({c[1] for c in calls if c[2:7] == (M, N, K, ta, tb)})
        rows.append(
            {
                "shape": f"{M}x{N}x{K} {'T' if ta else 'N'}{'T' if tb else 'N'}",
                "calls": n,
                "gflop": f"{2 * M * N * K * n / 1e9:.3f}",
                "rate": f"{rates[(M, N, K, ta, tb)]:.1f}",
                "what": ", ".join(names),
            }
        )
    print(
        _common.table(
            rows,
            [
                ("shape", "M x N x K op"),
                ("calls", "calls/step"),
                ("gflop", "GFLOP/step"),
                ("rate", "GFLOP/s"),
                ("what", "used for"),
            ],
        )
    )

    # achieved vs bound, whole step and per part
    flops, bound = {}, {}
    for part, _, M, N, K, ta, tb, n in calls:
        f = 2.0 * M * N * K * n
        flops[part] = flops.get(part, 0.0) + f
        bound[part] = bound.get(part, 0.0) + f / (rates[(M, N, K, ta, tb)] * 1e9)
    total_f, total_b = sum(flops.values()), sum(bound.values())
    useful = total_f - flops["next-item"] * (1 - real / (B * T))
    print(
        f"\nSASRec step: B {B}, T {T:.0f} (synthetic lengths ~U[25, 51]), C {C}, "
        f"{s['heads']} heads, {s['layers']} layers, full softmax over {V - 1} items"
    )
    print(
        f"  matmul FLOPs executed per step: {total_f / 1e9:.2f} GFLOP "
        f"(softmax {flops['next-item'] / total_f:.0%}); useful (softmax on the "
        f"{real:.0f} real targets of {B * T:.0f} rows): {useful / 1e9:.2f} GFLOP"
    )
    print(
        f"  nfcl step (median of {args.steps}): {step * 1e3:.0f} ms "
        f"(spread {_common.spread(times)}); sgemm bound {total_b * 1e3:.0f} ms"
    )
    print(
        f"  achieved {total_f / step / 1e9:.1f} GFLOP/s = {total_b / step:.0%} of "
        f"the sgemm bound at these shapes, {total_f / step / 1e9 / peak:.0%} of "
        f"square-1024 sgemm; useful FLOPs: {useful / step / 1e9:.1f} GFLOP/s"
    )
    ok = "met" if total_b / step >= 0.5 else "MISSED"
    print(f"  bar >= 50% of sgemm: {ok}")

    print("\nper part (profile of the same step, median ms):")
    for part, t in parts.items():
        if part.startswith("_"):
            continue
        if part in flops:
            print(
                f"  {part:11s} {t * 1e3:7.1f} ms, {flops[part] / 1e9:5.2f} GFLOP, "
                f"{flops[part] / t / 1e9:5.1f} GFLOP/s, sgemm bound "
                f"{bound[part] * 1e3:6.1f} ms ({bound[part] / t:.0%}); the rest "
                f"{(t - bound[part]) * 1e3:6.1f} ms is non-sgemm work"
            )
        else:
            print(f"  {part:11s} {t * 1e3:7.1f} ms (no matmul)")
    elems = B * T * (V - 1)
    rest = parts["next-item"] - bound["next-item"]
    print(
        f"  softmax pass: {elems / 1e6:.1f} M logits per step, "
        f"{rest / elems * 1e9:.1f} ns per logit outside sgemm"
    )
    only = parts["_target rows only"]
    print(
        f"  what-if: softmax_xent on the {real:.0f} target rows alone takes "
        f"{only * 1e3:.0f} ms instead of {parts['next-item'] * 1e3:.0f} ms "
        f"(same loss and gradients)"
    )
    print(f"# load average at end: {_common.load_average()}")


if __name__ == "__main__":
    main()
