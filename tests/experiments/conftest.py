"""Options of the experiment suite (select with ``pytest -m experiment tests/experiments``).

Environment:
    NFCL_EXP_SCALE: "quick" (default: 2 seeds, tiny models, SASRec only on the
        skip-definition, listener and simulator axes) or "full" (5 seeds,
        every model everywhere; base, +term and the published code's variant
        on the bundled data, base and +term on the skip-rate axes). Each
        listener contributes their most recent 6,000 plays (whole sessions),
        so one heavy listener does not take most of the budget.
    NFCL_EXP_STORE: the JSON-lines results store (default
        results/experiments-<scale>.jsonl under the repository).
    NFCL_EXP_RECOMPUTE=1: re-run cells already in the store.
    NFCL_SPOTIFY_HISTORIES: folder of per-listener CSVs (default
        /work/shared/data/spotify-histories; skipped when absent).
"""
import os
from pathlib import Path

import pytest

from nfcl.results import ResultStore

ROOT = Path(__file__).resolve().parents[2]
SCALE = os.environ.get("NFCL_EXP_SCALE", "quick")
if SCALE not in ("quick", "full"):
    raise pytest.UsageError(f"NFCL_EXP_SCALE must be quick or full, got {SCALE!r}")

MODELS = ("gru4rec", "caser", "sasrec", "bert4rec")
VARIANTS = ("base", "+term", "+term-reference")
SETTINGS = {
    "quick": dict(seeds=(0, 1), fit_kw=dict(epochs=8, batch_size=64, lr=1e-2, n_neg=100),
                  dim=16, axis_models=("sasrec",), axis_variants=("base", "+term"),
                  n_listeners=3),
    "full": dict(seeds=(0, 1, 2, 3, 4),
                 fit_kw=dict(epochs=30, batch_size=64, lr=5e-3, n_neg=1000),
                 dim=64, axis_models=MODELS, axis_variants=("base", "+term"), n_listeners=None),
}[SCALE]
LISTENER_MAX_EVENTS = 6000
HISTORIES = Path(os.environ.get("NFCL_SPOTIFY_HISTORIES",
                                "/work/shared/data/spotify-histories"))


def model_kw(model: str) -> dict:
    from nfcl.experiment import QUICK_MODEL_KW

    if SCALE == "quick":
        return dict(QUICK_MODEL_KW[model])
    d = SETTINGS["dim"]
    return {"sasrec": dict(dim=d, heads=2, layers=2), "bert4rec": dict(dim=d, heads=2,
                                                                       layers=2),
            "gru4rec": dict(dim=d, hidden=d), "caser": dict(dim=d)}[model]


def listeners() -> list:
    """Listener files, smallest first (quick: the 3 smallest)."""
    if not HISTORIES.is_dir():
        return []
    files = sorted(HISTORIES.glob("u*.csv"), key=lambda p: p.stat().st_size)
    n = SETTINGS["n_listeners"]
    return files[:n] if n else files


@pytest.fixture(scope="session")
def store():
    default = ROOT / "results" / f"experiments-{SCALE}.jsonl"
    return ResultStore(os.environ.get("NFCL_EXP_STORE", default))


@pytest.fixture(scope="session")
def recompute():
    return os.environ.get("NFCL_EXP_RECOMPUTE", "") == "1"
