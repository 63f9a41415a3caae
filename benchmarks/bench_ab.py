"""A/B of nfcl's training step: two source trees, same machine, minutes apart.

Machine speed drifts on a shared box by more than most changes to the core,
so a table measured an hour ago is no baseline. This script builds each side
(a git revision is exported with `git archive` into a temporary folder; a
folder is used as it is) and times the same training step of each side in
separate processes, alternating A, B, A, B, at 1 and 2 threads.

    python benchmarks/bench_ab.py 3c634db .                # a revision vs this tree
    python benchmarks/bench_ab.py OLD NEW --models GRU4Rec --settings paper
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# one process: the step loop of one model at 1 then 2 threads, ms per step
STEP_LOOP = r"""
import sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2])
import nfcl, bench_train as bt, _common
assert nfcl.__file__.startswith(sys.argv[1]), nfcl.__file__
name, setting, seconds = sys.argv[3], sys.argv[4], float(sys.argv[5])
s = bt.SETTINGS[setting]
kw = bt.step_args(s)
m = bt.nfcl_model(name, s)
batches = _common.synthetic_batches(8, s["batch"], s["max_len"], s["n_items"])
out = []
for n in (1, 2):
    nfcl.set_num_threads(n)
    for it, sk in batches[:2]:
        m._train_step(it, sk, **kw)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for it, sk in batches:
            m._train_step(it, sk, **kw)
            k += 1
    out.append((time.perf_counter() - t0) / k * 1e3)
print(out[0], out[1])
"""


def prepare(side: str, scratch: Path) -> Path:
    """A built source tree for a folder or a git revision."""
    path = Path(side)
    if not path.is_dir():
        path = scratch / side.replace("/", "_")
        path.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", side],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=path,
                   check=True, capture_output=True)
    return path.resolve()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="source folder or git revision (the baseline)")
    ap.add_argument("b", help="source folder or git revision")
    ap.add_argument("--models", default="SASRec,BERT4Rec,GRU4Rec,Caser")
    ap.add_argument("--settings", default="recbole,paper")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed per thread count")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        sides = {"A": prepare(args.a, Path(tmp)), "B": prepare(args.b, Path(tmp))}
        print(f"# A = {args.a} ({sides['A']}), B = {args.b} ({sides['B']})")
        print("| model | setting | side | 1 thread ms/step | 2 threads ms/step | 1 -> 2 |")
        print("|---|---|---|---|---|---|")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for setting in args.settings.split(","):
            for model in args.models.split(","):
                best = {}
                for _ in range(args.rounds):
                    for label, path in sides.items():
                        res = subprocess.run(
                            [sys.executable, "-c", STEP_LOOP, str(path), str(HERE),
                             model, setting, str(args.seconds)],
                            check=True, capture_output=True, text=True, env=env)
                        one, two = map(float, res.stdout.split())
                        old = best.get(label, (float("inf"), float("inf")))
                        best[label] = (min(old[0], one), min(old[1], two))
                for label, (one, two) in best.items():
                    print(f"| {model} | {setting} | {label} | {one:.1f} | {two:.1f} | "
                          f"{one / two:.2f}x |")
    print("(best of the rounds for each side; runs alternate A, B, A, B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
