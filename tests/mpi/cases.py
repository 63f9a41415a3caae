"""Data, models and fit arguments shared by the MPI scripts and the tests
that check them against a single process (tests/test_distributed.py)."""
import numpy as np

import nfcl
from nfcl import sessions
from nfcl.simulate import ListeningSimulator

# name -> (encoder, model options, fit options); dropout 0 unless named, so a
# single process draws the same masks (there are none) as the ranks
CASES = {
    "sasrec-sampled": ("SASRec", dict(heads=2, layers=1), dict(loss="sampled")),
    "sasrec-full": ("SASRec", dict(heads=2, layers=1), dict(loss="full")),
    "gru4rec-sampled": ("GRU4Rec", dict(), dict(loss="sampled")),
    "gru4rec-full": ("GRU4Rec", dict(), dict(loss="full")),
    "bert4rec-sampled": ("BERT4Rec", dict(heads=2, layers=1), dict(loss="sampled")),
    "caser-full": ("Caser", dict(window=3), dict(loss="full")),
    "sasrec-dropout": ("SASRec", dict(heads=2, layers=1, dropout=0.2),
                       dict(loss="sampled")),
}

# 1000 sessions of 8 plays: 1000 training rows, so 5 steps of 192 rows and a
# last one of 40 (uneven over 3 ranks); 1000 test examples (not a multiple of
# the evaluation block 256 or the sampled group 64)
BATCH = 192
FIT = dict(epochs=1, batch_size=BATCH, w=0.5, n_neg=50, lr=5e-3, progress=False)


def split():
    sim = ListeningSimulator(n_users=30, n_items=200, n_sessions=1000, session_len=8,
                             seed=1)
    return sessions.leave_last_out(sim.sessions(), max_len=8)


def model(name, data, seed=7):
    kind, options, _ = CASES[name]
    options = dict(dict(dim=16, max_len=8, dropout=0.0, seed=seed), **options)
    return getattr(nfcl, kind)(data.train.n_items, **options)


def fit_args(name) -> dict:
    return dict(FIT, **CASES[name][2])


def digest(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
