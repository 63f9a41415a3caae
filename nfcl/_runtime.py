"""Thread control for the C core.

The core runs its own threads (OpenMP) and keeps OpenBLAS single-threaded,
so that results are bitwise the same with any thread count (see
csrc/blas.c). More threads than cores only slows training down, so asking
for that warns, as implicit does for a misconfigured OpenBLAS.
"""
import os
import warnings

from . import _core


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Set how many threads the core uses (OpenBLAS stays at one)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    if n > _cores():
        warnings.warn(f"nfcl: {n} threads requested on {_cores()} cores; "
                      "oversubscribing slows training down", RuntimeWarning,
                      stacklevel=2)
    _core.set_threads(n)


def get_num_threads() -> int:
    """Return how many threads the core uses."""
    return int(_core.get_threads())


def _init_threads() -> None:
    """At import: pin OpenBLAS to one thread and keep OpenMP's default
    (OMP_NUM_THREADS or the cores), warning if that oversubscribes."""
    n = get_num_threads()
    if n > _cores():
        warnings.warn(f"nfcl: OMP_NUM_THREADS asks for {n} threads on {_cores()} "
                      "cores; oversubscribing slows training down", RuntimeWarning,
                      stacklevel=3)
    _core.set_threads(n)
