"""Shared pieces of the benchmarks: machine facts, synthetic batches, timing.

Timings on a shared machine are noisy, so every figure is the median of
several timed blocks, and the blocks of the contenders alternate (nfcl,
torch, nfcl, torch, ...) so that a burst of load from elsewhere hits both.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import statistics
import time
from importlib import metadata

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # cblas enums


def cpu_model() -> str:
    """The CPU model name as lscpu and /proc/cpuinfo report it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.65 1.89 1.45'."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def source_state() -> str:
    """The git commit of the nfcl tree being measured, '+dirty' if csrc/ or
    nfcl/ differ from it (read-only git calls; 'unknown' outside a checkout)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "csrc", "nfcl"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def header(title: str, with_torch: bool = False) -> str:
    """A few lines naming the machine, the versions, the date and the load."""
    dists = ["nfcl", "numpy", "scipy-openblas32"] + (["torch"] if with_torch else [])
    versions = ", ".join(f"{d} {version(d)}" for d in dists)
    return "\n".join(
        [
            f"# {title}",
            f"# machine: {cpu_model()}, {os.cpu_count()} cores (lscpu model name)",
            f"# versions: {versions}, python {platform.python_version()}",
            f"# nfcl source: git {source_state()}",
            f"# date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"# load average at start: {load_average()}",
        ]
    )


class CpuMeter:
    """CPU used by this process and by every other process over an interval.

    From /proc/stat (all CPUs) and getrusage (this process): ``others`` is
    the average number of cores other processes kept busy, the figure that
    tells whether a timing shared the machine.
    """

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        import resource

        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, r.ru_utime + r.ru_stime

    def stop(self) -> dict:
        """dict(wall=s, mine=cores, others=cores) since construction."""
        (w0, b0, s0), (w1, b1, s1) = self.start, self._read()
        wall = max(w1 - w0, 1e-9)
        return {
            "wall": wall,
            "mine": (s1 - s0) / wall,
            "others": max(0.0, (b1 - b0 - (s1 - s0)) / wall),
        }


def synthetic_batches(n_batches, batch, max_len, n_items, skip_rate=0.3, seed=0):
    """Training rows like training_batches yields, from random sessions.

    Each row holds a session of L ~ uniform[(T+1)//2, T+1] items drawn
    uniformly from 1..n_items-1, right-padded with 0; each item is skipped
    with probability ``skip_rate``.

    Shapes:
        returns a list of (items int32 (B,T+1), skips uint8 (B,T+1)).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    width = max_len + 1
    out = []
    for _ in range(n_batches):
        lengths = rng.integers(max(2, width // 2), width + 1, batch)
        real = np.arange(width)[None, :] < lengths[:, None]
        items = np.where(real, rng.integers(1, n_items, (batch, width)), 0)
        skips = real & (rng.random((batch, width)) < skip_rate)
        out.append((items.astype(np.int32), skips.astype(np.uint8)))
    return out


def openblas_sgemm():
    """scipy_cblas_sgemm from nfcl's OpenBLAS, with its argument types."""
    import scipy_openblas32

    config = scipy_openblas32.get_openblas_config()
    fn = scipy_openblas32.dll.scipy_cblas_sgemm
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    fn.restype = None
    return fn, config


def sgemm_rate(fn, M, N, K, ta, tb, seconds=0.15, repeats=3):
    """Median GFLOP/s of C (M,N) = op(A) op(B), op(A) (M,K), op(B) (K,N)."""
    import numpy as np

    rng = np.random.default_rng(0)
    A = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    C = np.zeros((M, N), np.float32)
    args = (
        ROW_MAJOR,
        TRANS if ta else NO_TRANS,
        TRANS if tb else NO_TRANS,
        M,
        N,
        K,
        1.0,
        A.ctypes.data,
        A.shape[1],
        B.ctypes.data,
        B.shape[1],
        0.0,
        C.ctypes.data,
        N,
    )
    fn(*args)  # warm-up, and pack buffers
    t0 = time.perf_counter()
    fn(*args)
    reps = max(1, round(seconds / max(time.perf_counter() - t0, 1e-7)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(*args)
        times.append((time.perf_counter() - t0) / reps)
    return 2.0 * M * N * K / statistics.median(times) / 1e9


def thread_headroom(seconds=0.2) -> str:
    """How much a second thread speeds up a large sgemm right now.

    On an idle 2-core machine this is ~1.9x; when other processes hold a
    core it drops towards 1x (or below), and so does every 2-thread figure.
    """
    import nfcl
    import scipy_openblas32

    # OpenBLAS's own threads, set directly: nfcl keeps OpenBLAS at one
    # thread and runs its own, so nfcl.set_num_threads does not apply here
    fn, _ = openblas_sgemm()
    before = nfcl.get_num_threads()
    rates = []
    for n in (1, 2):
        scipy_openblas32.dll.scipy_openblas_set_num_threads(ctypes.c_int(n))
        rates.append(sgemm_rate(fn, 1024, 1024, 1024, 0, 0, seconds=seconds))
    nfcl.set_num_threads(before)  # pins OpenBLAS back to one thread
    return (
        f"1024^3 sgemm {rates[0]:.0f} GFLOP/s at 1 thread, {rates[1]:.0f} at 2 "
        f"({rates[1] / rates[0]:.2f}x)"
    )


def block_size(fn, target_seconds: float, warmup: int = 2) -> int:
    """Run ``fn(i)`` ``warmup`` times; the number of calls that fill a block."""
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(i)
    per_call = (time.perf_counter() - t0) / warmup
    return max(1, round(target_seconds / max(per_call, 1e-9)))


def interleaved(contenders: dict, repeats: int, block_seconds: float, warmup=2) -> dict:
    """Median seconds per call of each ``fn(i)``, timed in alternating blocks.

    Every contender is warmed up, then each of ``repeats`` rounds times one
    block of about ``block_seconds`` of every contender in turn (the order
    rotates by round).

    Returns:
        name -> dict(median=s, samples=[s, ...], calls=n) per call.
    """
    names = list(contenders)
    calls = {n: block_size(contenders[n], block_seconds, warmup) for n in names}
    samples = {n: [] for n in names}
    counter = {n: 1000 for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            fn, c = contenders[name], calls[name]

            # one untimed call when calls are short: the other side's idle
            # BLAS / OpenMP threads may still be spinning on a core
            if c > 1:
                fn(counter[name])
                counter[name] += 1
            t0 = time.perf_counter()
            for _ in range(c):
                fn(counter[name])
                counter[name] += 1
            samples[name].append((time.perf_counter() - t0) / c)
    return {
        n: {"median": statistics.median(s), "samples": s, "calls": calls[n]}
        for n, s in samples.items()
    }


def spread(samples) -> str:
    """'min..max' of timing samples relative to their median, e.g. '-3%..+8%'."""
    med = statistics.median(samples)
    lo, hi = min(samples) / med - 1, max(samples) / med - 1
    return f"{lo:+.0%}..{hi:+.0%}"


def table(rows, columns) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` (key, title)."""
    head = "| " + " | ".join(t for _, t in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows
    ]
    return "\n".join([head, rule] + body)
