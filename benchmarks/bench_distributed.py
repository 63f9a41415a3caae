"""Communication share of a data-parallel training step (nfcl.distributed).

Setting: SASRec as in the paper (dim 128, 8 heads, 2 layers, T 20, dropout
0.2, sampled softmax with 1,000 negatives, InfoNCE term w = 0.5) on MSSD-like
data (628,000 tracks, Zipf-like popularity, half the plays skipped; see
bench_scale.mssd_like), 64 training rows per rank.

1. Measured, 2 local ranks (mpiexec -n 2 on this machine, shared memory):
   per step, compute (the rank's forward, losses and backward on its 64
   rows), wait (a barrier before the exchange: the slower rank), exchange
   (packing, the one allreduce, the sparse allgatherv, unpacking) and the
   rest (batch making, Adam). Communication share = exchange / step. The same
   global batches of 128 rows in one process give the speed-up.
2. Modelled, 64 ranks on a real network: the message sizes of real global
   batches of 64 x 64 rows (candidates = their unique targets + 1,000
   negatives; sparse rows = each rank's touched rows outside them), the
   compute and Adam time of one rank's part measured here, and ring
   allreduce / allgatherv costs on two fabrics (latency a, bandwidth b).

    python benchmarks/bench_distributed.py           # ~2 min
    python benchmarks/bench_distributed.py --quick   # ~40 s, smaller catalogue

It launches ``mpiexec -n 2`` itself (the mpiexec beside this Python, else
the one on PATH); Open MPI gets --oversubscribe and, as root, its run-as-root
variables. Timings on a shared machine are noisy: medians over the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers
import _common  # noqa: E402
from bench_scale import mssd_like  # noqa: E402

import nfcl  # noqa: E402
from nfcl import _core  # noqa: E402
from nfcl.sessions import training_batches  # noqa: E402

MODEL = dict(dim=128, heads=8, layers=2, max_len=20, dropout=0.2, seed=0)
STEP = dict(lr=1e-3, w=0.5, tau=0.1, variant=0, loss="sampled", n_neg=1000, clip=5.0,
            weight_decay=0.0)
FABRICS = (  # name, latency a (s), bandwidth b (bytes/s) a rank sustains
    ("InfiniBand HDR 100 Gb/s", 2e-6, 11e9),
    ("Ethernet 25 Gb/s (TCP)", 25e-6, 2.8e9),
)


def build(args):
    """The data and a fresh model, alike in every process."""
    data = mssd_like(args.sessions, args.tracks)
    return data, nfcl.SASRec(data.n_items, **MODEL)


def global_batches(data, rows, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for items, skips in training_batches(data, rows, MODEL["max_len"], rng):
        if len(out) == n:
            break
        if len(items) == rows:
            out.append((items, skips))
    return out


# ----------------------------------------------------------------------
# part 1: 2 ranks, measured (runs under mpiexec)

class TimedComm:
    """A communicator whose Allreduce and Allgatherv add their time to ``t``."""

    def __init__(self, comm, t):
        self._comm, self.t = comm, t

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def Allreduce(self, *a, **k):
        t0 = time.perf_counter()
        self._comm.Allreduce(*a, **k)
        self.t["allreduce"] += time.perf_counter() - t0

    def Allgatherv(self, *a, **k):
        t0 = time.perf_counter()
        self._comm.Allgatherv(*a, **k)
        self.t["allgatherv"] += time.perf_counter() - t0


def child(args) -> None:
    """One rank: time the steps phase by phase; rank 0 prints JSON."""
    from mpi4py import MPI

    from nfcl.distributed import DataParallel

    comm = MPI.COMM_WORLD
    data, model = build(args)
    model._init_optimizer()
    hook = DataParallel(comm)
    model._parallel = hook
    t = dict.fromkeys(("compute", "wait", "exchange", "allreduce", "allgatherv"), 0.0)
    hook.comm = TimedComm(comm, t)
    sizes = {}

    def timed(fn, key, before=None):
        def run(*a, **k):
            if before is not None:
                before()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            t[key] += time.perf_counter() - t0
            return out
        return run

    def barrier():
        t0 = time.perf_counter()
        comm.Barrier()
        t["wait"] += time.perf_counter() - t0

    def exchange(model_, part, stats):
        shared = part["shared"]
        sizes["shared_rows"] = (shared.stop - shared.start if isinstance(shared, slice)
                                else len(shared))
        out = real_exchange(model_, part, stats)
        sizes["union_rows"] = int(model_._opt["rowset"][2][0])
        return out

    real_exchange = hook._exchange
    model._gradients = timed(model._gradients, "compute")
    hook._exchange = timed(exchange, "exchange", before=barrier)
    batches = global_batches(data, 2 * args.rows, args.warmup + args.steps)
    rows = []
    for i, (items, skips) in enumerate(batches):
        for key in t:
            t[key] = 0.0
        comm.Barrier()
        t0 = time.perf_counter()
        model._train_step(items, skips, **STEP)
        step = time.perf_counter() - t0
        if i >= args.warmup:
            rows.append(dict(t, step=step, **sizes))
    every = comm.gather(rows)
    if comm.Get_rank() == 0:
        print(json.dumps(every))


def launch(args) -> list:
    """mpiexec -n 2 on this script's child mode; the per-rank step rows."""
    exe = Path(sys.executable).with_name("mpiexec")
    exe = str(exe) if exe.exists() else shutil.which("mpiexec")
    if exe is None:
        sys.exit("bench_distributed: no mpiexec (pip install mpi4py mpich)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    cmd, env = [exe], dict(os.environ, NFCL_NUM_THREADS="1")
    if "Open MPI" in version:
        cmd.append("--oversubscribe")
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd += ["-n", "2", sys.executable, "-m", "mpi4py", __file__, "--child",
            *sys.argv[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"bench_distributed: mpiexec failed\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def single_process(args, data) -> float:
    """Median step of one process on the same global batches (2 x rows)."""
    model = nfcl.SASRec(data.n_items, **MODEL)
    model._init_optimizer()
    times = []
    for i, (items, skips) in enumerate(global_batches(data, 2 * args.rows,
                                                      args.warmup + args.steps)):
        t0 = time.perf_counter()
        model._train_step(items, skips, **STEP)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------
# part 2: 64 ranks, modelled

def sixty_four(args, data) -> dict:
    """Message sizes of global batches of P x rows, and one rank's measured
    compute and Adam time for its part of them."""
    P, C = args.ranks, MODEL["dim"]
    model = nfcl.SASRec(data.n_items, **MODEL)
    model._init_optimizer()
    n_dense = model.params.size - model.item_emb.size
    out = dict(shared=[], own_total=[], own_max=[], compute=[], adam=[])
    step = 0
    for items_ext, skips in global_batches(data, P * args.rows, args.big_batches, seed=1):
        step += 1
        width = int((items_ext > 0).sum(axis=1).max())
        batch = model._make_batch(np.ascontiguousarray(items_ext[:, :width]),
                                  np.ascontiguousarray(skips[:, :width]), step)

        # rank 0's part, timed: forward, losses, backward; then its Adam
        part = dict(lo=0, hi=args.rows)
        t0 = time.perf_counter()
        model._gradients(batch, step, part=part, w=STEP["w"], tau=STEP["tau"],
                         variant=0, loss="sampled", n_neg=STEP["n_neg"])
        out["compute"].append(time.perf_counter() - t0)
        opt = model._opt
        t0 = time.perf_counter()
        _core.adam_step(model.params, opt["grads"], opt["m"], opt["v"],
                        model.item_emb.shape[0], C, opt["rowset"], 1e-3, 0.9, 0.999,
                        1e-8, 0.0, 5.0, step)
        out["adam"].append(time.perf_counter() - t0)
        opt["t"] = step

        # sizes: the candidates, and every rank's touched rows outside them (its
        # rows' items: inputs and contrastive keys; an upper bound)
        shared = np.zeros(model.item_emb.shape[0], bool)
        shared[part["shared"]] = True
        own = []
        for r in range(P):
            ids = np.unique(items_ext[r * args.rows:(r + 1) * args.rows])
            own.append(int(np.count_nonzero(~shared[ids[ids > 0]])))
        out["shared"].append(int(shared.sum()))
        out["own_total"].append(sum(own))
        out["own_max"].append(max(own))
    med = {k: statistics.median(v) for k, v in out.items()}
    med["allreduce_bytes"] = 4 * (med["shared"] * C + n_dense + 3 + P)
    med["gather_bytes"] = 4 * med["own_total"] * (C + 1)
    med["dense_floats"] = n_dense
    return med


def network(P, m, a, b) -> dict:
    """Ring costs: allreduce 2(P-1) steps of S/P bytes; allgatherv P-1 steps,
    each rank receiving every other rank's records."""
    allreduce = 2 * (P - 1) * a + 2 * (P - 1) / P * m["allreduce_bytes"] / b
    gather = (P - 1) * a + m["gather_bytes"] * (P - 1) / P / b
    step = m["compute"] + m["adam"] + allreduce + gather
    return dict(allreduce=allreduce, gather=gather, step=step,
                share=(allreduce + gather) / step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tracks", type=int, default=628_000)
    p.add_argument("--sessions", type=int, default=45_000)
    p.add_argument("--rows", type=int, default=64, help="training rows per rank")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ranks", type=int, default=64, help="ranks of the modelled run")
    p.add_argument("--big-batches", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.tracks, args.sessions, args.steps, args.big_batches = 100_000, 8_000, 8, 1
    if args.child:
        return child(args)

    print(_common.header("nfcl.distributed: communication share of a training step"))
    print(f"# SASRec dim {MODEL['dim']}, {MODEL['heads']} heads, {MODEL['layers']} layers, "
          f"T {MODEL['max_len']}, sampled softmax + {STEP['n_neg']} negatives, w "
          f"{STEP['w']}; {args.tracks:,} tracks, {args.rows} rows per rank")
    data, _ = build(args)

    # part 1
    meter = _common.CpuMeter()
    per_rank = launch(args)
    load = meter.stop()
    one = single_process(args, data)
    r0 = per_rank[0]
    med = {k: statistics.median(row[k] for row in r0) for k in r0[0]}
    rest = med["step"] - med["compute"] - med["wait"] - med["exchange"]
    mpi = med["allreduce"] + med["allgatherv"]
    print(f"\n## 2 local ranks, measured (median of {args.steps} steps, rank 0; "
          f"other processes kept {load['others']:.2f} cores busy)")
    print(f"step {1e3 * med['step']:.1f} ms = compute {1e3 * med['compute']:.1f} + wait "
          f"{1e3 * med['wait']:.1f} + exchange {1e3 * med['exchange']:.2f} (allreduce "
          f"{1e3 * med['allreduce']:.2f}, allgatherv {1e3 * med['allgatherv']:.2f}) + "
          f"batch and Adam {1e3 * rest:.1f}")
    print(f"messages: allreduce of {med['shared_rows']:.0f} candidate rows + dense "
          f"= {4 * (med['shared_rows'] * MODEL['dim']) / 1e6:.2f} MB + dense; union of "
          f"touched rows {med['union_rows']:.0f}")
    print(f"communication share: {100 * med['exchange'] / med['step']:.1f}% of the step "
          f"(MPI calls alone {100 * mpi / med['step']:.1f}%)")
    print(f"one process, the same global batches of {2 * args.rows} rows: {1e3 * one:.1f} "
          f"ms/step -> speed-up {one / med['step']:.2f}x on 2 ranks")

    # part 2
    m = sixty_four(args, data)
    P = args.ranks
    print(f"\n## {P} ranks, modelled (global batch {P * args.rows} rows; median of "
          f"{args.big_batches} batches)")
    print(f"candidates (every rank's softmax, reduced in the allreduce): "
          f"{m['shared']:.0f} rows; dense weights {m['dense_floats']:,} floats")
    print(f"allreduce buffer {m['allreduce_bytes'] / 1e6:.1f} MB; sparse records "
          f"{m['own_total']:.0f} rows in all (at most {m['own_max']:.0f} from one rank), "
          f"{m['gather_bytes'] / 1e6:.2f} MB gathered by every rank")
    print(f"one rank's compute {1e3 * m['compute']:.0f} ms, Adam {1e3 * m['adam']:.1f} ms "
          "(measured here, 1 thread)")
    for name, a, b in FABRICS:
        n = network(P, m, a, b)
        print(f"{name}: allreduce {1e3 * n['allreduce']:.1f} ms, allgatherv "
              f"{1e3 * n['gather']:.2f} ms, step {1e3 * n['step']:.0f} ms, "
              f"communication {100 * n['share']:.1f}%")
    full = 4 * (args.tracks * MODEL["dim"] + m["dense_floats"])
    for name, a, b in FABRICS:
        t = 2 * (P - 1) * a + 2 * (P - 1) / P * full / b
        print(f"full softmax, {name}: allreduce of {full / 1e6:.0f} MB takes "
              f"{1e3 * t:.0f} ms")


if __name__ == "__main__":
    main()
