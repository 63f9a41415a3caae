"""Training throughput of nfcl against its PyTorch peers, in one process.

Sequences per second of one full training step (forward, losses, backward,
clipping, Adam) for SASRec, BERT4Rec, GRU4Rec and Caser, in two settings:

* paper:   dim 128, 8 heads, 2 layers, T 20, batch 64, sampled softmax with
           1,000 negatives over a 100k-item catalogue, InfoNCE term w = 0.5;
* recbole: dim 64, 2 heads, 2 layers, T 50, batch 256, full softmax over
           3,500 items, no contrastive term.

at 1 and 2 threads (nfcl.set_num_threads: the core's own threads;
torch.set_num_threads).
Both sides train on the same pre-built synthetic batches; their timed blocks
alternate and the median block is reported. A per-part profile (1 thread)
shows where the time goes on each side.

    python benchmarks/bench_train.py            # ~2 min
    python benchmarks/bench_train.py --quick    # ~20 s smoke run
    python benchmarks/bench_train.py --compile all   # + torch.compile, ~3.5 min
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import warnings
from pathlib import Path

import nfcl
import numpy as np
from nfcl import _core
from nfcl.models import _derive_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers
import _common

SETTINGS = {
    "paper": {
        "n_items": 100_001,
        "dim": 128,
        "heads": 8,
        "layers": 2,
        "max_len": 20,
        "batch": 64,
        "loss": "sampled",
        "n_neg": 1000,
        "w": 0.5,
    },
    "recbole": {
        "n_items": 3_501,
        "dim": 64,
        "heads": 2,
        "layers": 2,
        "max_len": 50,
        "batch": 256,
        "loss": "full",
        "n_neg": 0,
        "w": 0.0,
    },
}
MODELS = ("SASRec", "BERT4Rec", "GRU4Rec", "Caser")
DROPOUT, LR, TAU, CLIP = 0.2, 1e-3, 0.1, 5.0


def nfcl_model(name, s):
    """The nfcl model of one setting, with its optimizer state."""
    cls = getattr(nfcl, name)
    V, C, T = s["n_items"], s["dim"], s["max_len"]
    if name in ("SASRec", "BERT4Rec"):
        m = cls(
            V, dim=C, heads=s["heads"], layers=s["layers"], max_len=T, dropout=DROPOUT
        )
    elif name == "GRU4Rec":
        m = cls(V, dim=C, hidden=C, layers=1, max_len=T, dropout=DROPOUT)
    else:
        m = cls(V, dim=C, window=5, n_h=16, n_v=4, max_len=T, dropout=DROPOUT)
    m._init_optimizer()
    return m


def step_args(s):
    return {
        "lr": LR,
        "w": s["w"],
        "tau": TAU,
        "variant": 0,
        "loss": s["loss"],
        "n_neg": s["n_neg"],
        "clip": CLIP,
        "weight_decay": 0.0,
    }


def torch_trainer(name, s, table, compile):
    import torch_peers

    hp = {
        "n_items": s["n_items"],
        "dim": s["dim"],
        "heads": s["heads"],
        "layers": s["layers"],
        "max_len": s["max_len"],
        "dropout": DROPOUT,
        "w": s["w"],
        "tau": TAU,
        "lr": LR,
        "clip": CLIP,
        "n_neg": s["n_neg"] if s["loss"] == "sampled" else None,
    }
    if table == "auto":  # sparse pays where the softmax is sampled
        table = "sparse" if s["loss"] == "sampled" else "dense"
    return torch_peers.Trainer(
        name.lower(), hp, sparse=table == "sparse", compile=compile
    )


# ---------------------------------------------------------------------------
# per-part profiles


def profile_nfcl(model, batches, n_steps, s):
    """Median seconds of each part of nfcl's step, replaying _train_step.

    Parts: batch (column trim, _make_batch), forward, sample (candidates),
    next-item (softmax_xent), contrastive (infonce), backward, adam. The key
    "_target rows only" is a what-if outside the step: softmax_xent on just
    the rows that have a target (nfcl also computes the ignored rows).
    """
    opt, V, C = model._opt, model.n_items, model.dim
    parts = {
        k: []
        for k in (
            "batch",
            "forward",
            "sample",
            "next-item",
            "contrastive",
            "backward",
            "adam",
        )
    }
    only = []
    # scratch gradient, never applied; np.full touches its pages up front
    demb2 = np.full(model._out_emb.shape, 0.0, np.float32)
    rowset2 = tuple(np.zeros_like(a) for a in opt["rowset"])
    for i in range(n_steps):
        items_ext, skips = batches[i % len(batches)]
        step = opt["t"] + 1
        t = [time.perf_counter()]
        width = int((items_ext > 0).sum(axis=1).max())
        b = model._make_batch(
            np.ascontiguousarray(items_ext[:, :width]),
            np.ascontiguousarray(skips[:, :width]),
            step,
        )
        inputs, targets = b["inputs"], b["targets"]
        B, T = inputs.shape
        grads, rowset, emb = opt["grads"], opt["rowset"], model._out_emb
        demb = grads[: emb.size].reshape(emb.shape)
        t.append(time.perf_counter())
        q = model._forward(inputs, True, step)
        dq = np.zeros_like(q)
        t.append(time.perf_counter())
        if s["loss"] == "sampled":
            n_draw = min(s["n_neg"], V - 1 - np.unique(targets[targets > 0]).size)
            cand, tgt_idx = _core.sample_candidates(
                targets,
                V,
                n_draw,
                _derive_seed(model.config["seed"], 2),
                step,
                opt["seen"][:V],
            )
        else:
            cand, tgt_idx = None, (targets - 1).astype(np.int32)
        t.append(time.perf_counter())
        _core.softmax_xent(
            q.reshape(B * T, C),
            emb,
            cand,
            tgt_idx,
            1.0,
            dq.reshape(B * T, C),
            demb,
            rowset,
        )
        t.append(time.perf_counter())
        if s["w"] > 0:
            _core.infonce(
                q,
                emb,
                b["cl_items"],
                b["cl_skips"],
                TAU,
                0,
                s["w"],
                dq,
                demb,
                rowset,
                b["cl_pos"],
            )
        t.append(time.perf_counter())
        model._backward(inputs, dq, step, grads, rowset)
        t.append(time.perf_counter())
        _core.adam_step(
            model.params,
            grads,
            opt["m"],
            opt["v"],
            model.item_emb.shape[0],
            C,
            rowset,
            LR,
            0.9,
            0.999,
            1e-8,
            0.0,
            CLIP,
            step,
        )
        t.append(time.perf_counter())
        opt["t"] = step
        for k, (a, z) in zip(parts, itertools.pairwise(t)):
            parts[k].append(z - a)

        # what-if: the same loss and gradients from the target rows alone
        keep = np.flatnonzero(tgt_idx >= 0)
        q2 = np.ascontiguousarray(q.reshape(B * T, C)[keep])
        dq2 = np.zeros_like(q2)
        t0 = time.perf_counter()
        _core.softmax_xent(
            q2, emb, cand, np.ascontiguousarray(tgt_idx[keep]), 1.0, dq2, demb2, rowset2
        )
        only.append(time.perf_counter() - t0)
        rowset2[0][:] = 0
        rowset2[2][0] = 0
    out = {k: statistics.median(v) for k, v in parts.items()}
    out["_target rows only"] = statistics.median(only)
    return out


def profile_torch(trainer, batches, n_steps):
    """Median seconds of forward + losses, backward, and clip + Adam."""
    parts = {"fwd+losses": [], "backward": [], "clip+adam": []}
    for i in range(n_steps):
        t0 = time.perf_counter()
        loss = trainer.loss(*batches[i % len(batches)])
        t1 = time.perf_counter()
        for o in trainer.opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        trainer._clip()
        for o in trainer.opts:
            o.step()
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)
    return {k: statistics.median(v) for k, v in parts.items()}


def fmt_parts(parts):
    """'forward 12.3 ms (20%), ...'; keys starting with '_' are what-ifs."""
    step = {k: v for k, v in parts.items() if not k.startswith("_")}
    total = sum(step.values())
    text = ", ".join(f"{k} {v * 1e3:.1f} ms ({v / total:.0%})" for k, v in step.items())
    extra = [
        f"{k[1:]}: {v * 1e3:.1f} ms" for k, v in parts.items() if k.startswith("_")
    ]
    return text + (f" [what-if: next-item on {'; '.join(extra)}]" if extra else "")


# ---------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~20 s smoke run")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--settings", default="paper,recbole")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    p.add_argument("--block", type=float, default=0.4, help="seconds per block")
    p.add_argument(
        "--torch-table",
        choices=("auto", "dense", "sparse"),
        default="auto",
        help="torch item table (auto: sparse when the softmax is sampled)",
    )
    p.add_argument(
        "--compile",
        default="none",
        help="torch.compile peers for: none, all or model names",
    )
    p.add_argument(
        "--compile-budget",
        type=float,
        default=120.0,
        help="seconds allowed for compile + warm-up per model",
    )
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="retry a measurement if other processes used more "
        "cores than this meanwhile",
    )
    p.add_argument("--retries", type=int, default=2)
    a = p.parse_args(argv)
    if a.quick:
        a.threads, a.repeats, a.block, a.profile_steps = "1", 2, 0.1, 1
        a.retries = 0
    return a


def compiled_peer(name, s, args, batches):
    """A torch.compile peer warmed up, or (None, note) if it fails or is slow."""
    wanted = args.compile.lower()
    if wanted == "none" or (wanted != "all" and name.lower() not in wanted.split(",")):
        return None, "off"
    import torch._dynamo

    # one compiled entry per model instance and thread count (a thread-count
    # change recompiles); past the limit dynamo silently falls back to eager
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = torch_trainer(name, s, args.torch_table, compile=True)
            for i in range(3):
                tr.step(*batches[i])
                if time.perf_counter() - t0 > args.compile_budget:
                    return None, f"compile > {args.compile_budget:.0f} s"
    except Exception as e:  # noqa: BLE001 - any compiler failure: report, go on
        return None, f"failed: {type(e).__name__}"
    return tr, (
        f"compile + 3 warm-up steps {time.perf_counter() - t0:.0f} s "
        "(less when the inductor cache on disk is warm)"
    )


def make_contenders(model, kw, eager, comp, batches):
    """name -> fn(i) running one training step on batch i (mod the batch count)."""
    n = len(batches)
    out = {
        "nfcl": lambda i: model._train_step(*batches[i % n], **kw),
        "eager": lambda i: eager.step(*batches[i % n]),
    }
    if comp is not None:
        out["compile"] = lambda i: comp.step(*batches[i % n])
    return out


def measure(contenders, args):
    """Interleaved timing; retried while other processes held a core.

    Returns (timings, cpu) of the attempt with the least CPU used by other
    processes, after at most 1 + args.retries attempts.
    """
    best = None
    for _ in range(1 + args.retries):
        meter = _common.CpuMeter()
        res = _common.interleaved(
            contenders, args.repeats, args.block, warmup=1 if args.quick else 2
        )
        cpu = meter.stop()
        if best is None or cpu["others"] < best[1]["others"]:
            best = (res, cpu)
        if cpu["others"] <= args.max_others:
            break
    return best


def main(argv=None):
    args = parse_args(argv)
    import torch

    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    print(_common.header("bench_train: sequences/s of fwd + bwd + Adam", True))
    print(f"# 2-thread headroom at start: {_common.thread_headroom()}", flush=True)
    models = [m for m in MODELS if m.lower() in args.models.lower().split(",")]
    threads = [int(n) for n in args.threads.split(",")]
    rows, profiles, notes = [], [], []
    t_start = time.perf_counter()
    for sname in args.settings.split(","):
        s = SETTINGS[sname]
        batches = _common.synthetic_batches(16, s["batch"], s["max_len"], s["n_items"])
        for name in models:
            model = nfcl_model(name, s)
            kw = step_args(s)
            eager = torch_trainer(name, s, args.torch_table, compile=False)
            comp, note = compiled_peer(name, s, args, batches)
            if note != "off":
                notes.append(f"torch.compile {name} {sname}: {note}")
            contenders = make_contenders(model, kw, eager, comp, batches)
            for n in threads:
                nfcl.set_num_threads(n)
                torch.set_num_threads(n)
                res, cpu = measure(contenders, args)
                B = s["batch"]
                row = {
                    "model": name,
                    "setting": sname,
                    "threads": n,
                    "nfcl": B / res["nfcl"]["median"],
                    "eager": B / res["eager"]["median"],
                    "spread": _common.spread(res["nfcl"]["samples"]),
                    "others": f"{cpu['others']:.2f}",
                }
                row["compile"] = B / res["compile"]["median"] if comp else None
                rows.append(row)
                print(
                    f"  {name:8s} {sname:7s} {n} thr: nfcl {row['nfcl']:7.0f} seq/s, "
                    f"torch eager {row['eager']:7.0f} seq/s"
                    + (f", compiled {row['compile']:7.0f}" if comp else "")
                    + f"  (other processes: {cpu['others']:.2f} cores)",
                    flush=True,
                )

            # where the time goes, at 1 thread
            nfcl.set_num_threads(1)
            torch.set_num_threads(1)
            profiles.append(
                (
                    name,
                    sname,
                    profile_nfcl(model, batches, args.profile_steps, s),
                    profile_torch(eager, batches, args.profile_steps),
                )
            )
    report(rows, profiles, notes, args, time.perf_counter() - t_start)


def report(rows, profiles, notes, args, seconds):
    for r in rows:
        r["ratio"] = f"{r['nfcl'] / r['eager']:.2f}x"
        best = max(r["eager"], r["compile"] or 0.0)
        r["ratio_best"] = f"{r['nfcl'] / best:.2f}x"
        for k in ("nfcl", "eager"):
            r[k + "_s"] = f"{r[k]:.0f}"
        r["compile_s"] = f"{r['compile']:.0f}" if r["compile"] else "-"
    cols = [
        ("model", "model"),
        ("setting", "setting"),
        ("threads", "threads"),
        ("nfcl_s", "nfcl seq/s"),
        ("eager_s", "torch eager seq/s"),
        ("compile_s", "torch.compile seq/s"),
        ("ratio", "nfcl / eager"),
        ("ratio_best", "nfcl / best torch"),
        ("spread", "nfcl block spread"),
        ("others", "other procs (cores)"),
    ]
    print()
    print(_common.table(rows, cols))

    # thread scaling at batch 256 (and the bars)
    by = {(r["model"], r["setting"], r["threads"]): r for r in rows}
    if any(n == 2 for (_, _, n) in by):
        print("\n1 -> 2 threads speed-up (nfcl / torch eager):")
    for (m, sname, n), r in by.items():
        two = by.get((m, sname, 2))
        if n == 1 and two:
            print(
                f"  {m:8s} {sname:7s} batch {SETTINGS[sname]['batch']:3d}: "
                f"nfcl {two['nfcl'] / r['nfcl']:.2f}x, "
                f"torch {two['eager'] / r['eager']:.2f}x"
            )
    print("\nbars:")
    for r in rows:
        if r["threads"] == 1:
            x = r["nfcl"] / r["eager"]
            ok = "met" if x >= 3 else f"MISSED (needs {3 / x:.1f}x more)"
            print(f"  >= 3x torch eager, {r['model']} {r['setting']}: {x:.2f}x {ok}")
    for (m, sname, n), r in by.items():
        two = by.get((m, sname, 2))
        if n == 1 and two and SETTINGS[sname]["batch"] == 256:
            x = two["nfcl"] / r["nfcl"]
            ok = "met" if x >= 1.7 else "MISSED"
            print(f"  >= 1.7x from 1 to 2 threads, {m} {sname}: {x:.2f}x {ok}")

    print("\nprofile at 1 thread, median ms per step:")
    for name, sname, pn, pt in profiles:
        print(
            f"  {name} {sname}\n    nfcl:  {fmt_parts(pn)}\n    torch: {fmt_parts(pt)}"
        )
    for n in notes:
        print("note:", n)
    if args.compile == "none":
        print(
            "note: torch.compile not run (add --compile all; ~15-45 s of "
            "compilation per model and setting)"
        )
    print(f"# 2-thread headroom at end: {_common.thread_headroom()}")
    if args.quick:
        print(
            "note: --quick is a smoke run (1-2 short blocks, little warm-up); "
            "its ratios are not comparable with a default run"
        )
    print(f"# load average at end: {_common.load_average()}; took {seconds:.0f} s")


if __name__ == "__main__":
    main()
