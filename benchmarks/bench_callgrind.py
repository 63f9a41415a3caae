"""Instruction counts of one training step under callgrind: a figure for
regressions that does not move with machine load.

Builds benchmarks/c/step_driver.c against the core's C sources (the flags of
setup.py, no Python involved), runs it under `valgrind --tool=callgrind
--toggle-collect=one_step`, and prints, per encoder, the instructions
executed by exactly one optimizer step (forward, sampled softmax, InfoNCE,
backward, Adam) and the share of them inside OpenBLAS. The step is the
second one (the first warms up Adam's state); the data are fixed, so the
count repeats exactly for the same binary.

Valgrind emulates a CPU without AVX-512, so the counts are those of the
AVX2 paths (OpenBLAS's Haswell kernels, nfcl's AVX2 clones); compare counts
from the same machine kind and compiler only.

    python benchmarks/bench_callgrind.py                 # small setting, 4 models, ~1 min
    python benchmarks/bench_callgrind.py --setting paper --models sasrec   # ~8 min
    python benchmarks/bench_callgrind.py --save          # record as the baseline
    python benchmarks/bench_callgrind.py --src-ref <git-ref>   # count an older core

Exits 1 when a count is more than --tolerance (default 2%) above the saved
baseline (benchmarks/callgrind_baseline.json) for the same setting.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "benchmarks" / "callgrind_baseline.json"
FLAGS = ["-std=c11", "-O3", "-fno-fast-math", "-fno-trapping-math", "-fno-math-errno",
         "-fopenmp", "-w"]


def build(workdir: Path, src_ref: str | None) -> Path:
    """Compile the step driver with the core's sources (of HEAD's work tree,
    or of git ref src_ref, exported read-only into workdir)."""
    import scipy_openblas32 as ob

    csrc = ROOT / "csrc"
    if src_ref:
        csrc = workdir / "csrc"
        csrc.mkdir()
        names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", src_ref,
                                "csrc/"], capture_output=True, text=True, check=True)
        for name in names.stdout.split():
            blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{src_ref}:{name}"],
                                  capture_output=True, check=True).stdout
            (workdir / name).write_bytes(blob)
    sources = [str(p) for p in sorted(csrc.glob("*.c")) if p.name != "binding.c"]
    exe = workdir / "step_driver"
    lib = ob.get_lib_dir()
    subprocess.run(["gcc", *FLAGS, f"-I{csrc}", f"-I{ob.get_include_dir()}", *sources,
                    str(ROOT / "benchmarks" / "c" / "step_driver.c"), f"-L{lib}",
                    f"-l{ob.get_library()}", f"-Wl,-rpath,{lib}", "-lm", "-o", str(exe)],
                   check=True)
    return exe


def count(exe: Path, model: str, setting: str, workdir: Path) -> dict:
    """Run one model under callgrind -> {"total": Ir, "openblas": Ir, "top": [...]}."""
    out = workdir / f"cg.{model}.{setting}"
    r = subprocess.run(["valgrind", "--tool=callgrind", "--toggle-collect=one_step",
                        f"--callgrind-out-file={out}", str(exe), model, setting],
                       capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                            "OPENBLAS_NUM_THREADS": "1",
                                                            "PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        raise RuntimeError(f"{model} {setting}: step_driver failed:\n{r.stderr[-2000:]}")
    ann = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)],
                         capture_output=True, text=True, check=True).stdout
    total, openblas, top = 0, 0, []
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n, what = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in what:
            total = n
            continue
        func = what.split(":", 1)[1].split(" [")[0] if ":" in what else what
        if "openblas" in what:
            openblas += n
        elif len(top) < 3:
            top.append((func, n))
    return dict(total=total, openblas=openblas, top=top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="small", choices=["small", "paper", "recbole"])
    ap.add_argument("--models", default="sasrec,bert4rec,gru4rec,caser")
    ap.add_argument("--src-ref", default=None, help="count the core of this git ref")
    ap.add_argument("--save", action="store_true", help="write the counts as the baseline")
    ap.add_argument("--tolerance", type=float, default=0.02)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        print("valgrind and gcc are needed", file=sys.stderr)
        return 2

    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    base = baseline.get(args.setting, {})
    worse = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp), args.src_ref)
        print(f"# callgrind, one training step, setting {args.setting!r}, core "
              f"{args.src_ref or 'work tree'}\n")
        print("| model | instructions | in OpenBLAS | vs baseline | top nfcl functions |")
        print("|---|---|---|---|---|")
        counts = {}
        for model in args.models.split(","):
            c = count(exe, model, args.setting, Path(tmp))
            counts[model] = c["total"]
            ref = base.get(model)
            delta = f"{c['total'] / ref - 1:+.1%}" if ref else "-"
            if ref and c["total"] > ref * (1 + args.tolerance):
                worse.append(model)
            top = ", ".join(f"{f} {n / c['total']:.0%}" for f, n in c["top"])
            print(f"| {model} | {c['total'] / 1e6:,.1f} M | {c['openblas'] / c['total']:.0%} "
                  f"| {delta} | {top} |", flush=True)
    if args.save:
        baseline[args.setting] = counts
        BASELINE.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
        print(f"\nsaved to {BASELINE.relative_to(ROOT)}")
    if worse:
        print(f"\nmore than {args.tolerance:.0%} above the baseline: {', '.join(worse)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
