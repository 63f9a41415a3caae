"""nfcl: skip-aware sequential music recommendation with a C core.

Skips are negative feedback. nfcl trains next-track recommenders (SASRec
first) with an optional contrastive term that pulls each kept position's
prediction towards the next kept track and pushes it from the session's
skipped tracks (Seshadri, Shashaani & Knees, RecSys 2024).
"""
import scipy_openblas32 as _openblas

# The extension links libscipy_openblas.so by soname; load it globally first
# so the dynamic loader finds it wherever pip put the wheel.
_openblas.get_openblas_config()

from . import _core  # noqa: E402
from ._runtime import _init_threads, get_num_threads, set_num_threads  # noqa: E402
from .baselines import ItemKNN, MostPopular  # noqa: E402
from .models import BERT4Rec, Caser, GRU4Rec, SASRec  # noqa: E402

_init_threads()

__version__ = "0.1.0"
__all__ = ["SASRec", "BERT4Rec", "GRU4Rec", "Caser", "MostPopular", "ItemKNN",
           "get_num_threads", "set_num_threads", "__version__"]
