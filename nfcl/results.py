"""A results store for experiments: one JSON line per finished run.

Each row holds the run's config, model, variant, seed, dataset name and data
fingerprint, metrics and wall time, under a stable ``key`` (a hash of
config + model + variant + seed + fingerprint). A cell whose key is already
stored is not run again unless ``recompute=True``. Rows are appended whole
(write, flush, fsync), so a killed run leaves at most one torn last line,
which reading ignores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np

from .errors import InputError

__all__ = ["ResultStore", "cell_key", "summarize", "paired_differences", "t_quantile"]


def cell_key(config: dict, model: str, variant: str, seed: int, fingerprint: str) -> str:
    """A stable hex key (SHA-256, first 24 digits) of one experiment cell."""
    blob = json.dumps(dict(config=config, model=model, variant=variant, seed=int(seed),
                           fingerprint=fingerprint), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ResultStore:
    """Rows of finished runs in a JSON-lines file; the last row of a key wins."""

    def __init__(self, path):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)

    def rows(self) -> list:
        """Every readable row, later rows replacing earlier ones of the same key."""
        if not os.path.exists(self.path):
            return []
        by_key = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line from a killed writer
                if isinstance(row, dict) and "key" in row:
                    by_key[row["key"]] = row
        return list(by_key.values())

    def get(self, key: str):
        """The stored row of ``key``, or None."""
        return next((r for r in self.rows() if r["key"] == key), None)

    def append(self, row: dict) -> None:
        """Append one row atomically enough: one write, flush and fsync."""
        if "key" not in row:
            raise InputError("a result row needs a 'key'")
        line = json.dumps(row, sort_keys=True, default=_jsonable) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def run(self, fn, *, config: dict, model: str, variant: str, seed: int,
            dataset: str, fingerprint: str, recompute=False, **extra) -> dict:
        """Reuse the stored row of this cell, or call ``fn()`` -> metrics and store it.

        ``fn`` returns a dict of metrics (floats) and may hold an "info" dict
        (loss history, sizes) kept beside them. Returns the row.
        """
        key = cell_key(config, model, variant, seed, fingerprint)
        if not recompute:
            old = self.get(key)
            if old is not None:
                return dict(old, reused=True)
        t0 = time.perf_counter()
        out = dict(fn())
        info = out.pop("info", {})
        row = dict(key=key, dataset=dataset, fingerprint=fingerprint, model=model,
                   variant=variant, seed=int(seed), config=config, metrics=out, info=info,
                   seconds=time.perf_counter() - t0, finished=time.time(), **extra)
        self.append(row)
        return dict(row, reused=False)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ---------------------------------------------------------------------------
# summaries

# two-sided 95% critical values of Student's t for df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
         2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values) -> tuple:
    """(mean, half-width of the 95% t-interval, n) of the finite values."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    if x.size == 1:
        return float(x[0]), math.nan, 1
    half = t_quantile(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half), int(x.size)


def summarize(rows, metrics=("sampled:HR@10", "sampled:MRR@10", "sampled:Skip-MRR@10"),
              group=("dataset", "model", "variant")) -> list:
    """Per group and metric: mean and 95% CI over seeds.

    Returns dicts with the group fields, metric, mean, ci (half-width), lo,
    hi and n.
    """
    cells = {}
    for r in rows:
        cells.setdefault(tuple(r[g] for g in group), []).append(r)
    out = []
    for k, rs in cells.items():
        for m in metrics:
            mean, half, n = mean_ci([r["metrics"].get(m, math.nan) for r in rs])
            out.append(dict(zip(group, k), metric=m, mean=mean, ci=half, lo=mean - half,
                            hi=mean + half, n=n))
    return out


def paired_differences(rows, metrics=("sampled:HR@10", "sampled:MRR@10",
                                      "sampled:Skip-MRR@10"),
                       variant="+term", against="base") -> list:
    """Per (dataset, model, metric): ``variant`` minus ``against`` on the same
    seed, mean and 95% t-interval over the paired seeds.

    Returns dicts with dataset, model, metric, variant, mean, ci, lo, hi, n.
    """
    by = {}
    for r in rows:
        by[(r["dataset"], r["model"], r["variant"], r["seed"])] = r
    pairs = {}
    for (ds, model, var, seed), r in by.items():
        if var != variant or (ds, model, against, seed) not in by:
            continue
        pairs.setdefault((ds, model), []).append((r, by[(ds, model, against, seed)]))
    out = []
    for (ds, model), ps in pairs.items():
        for m in metrics:
            d = [a["metrics"].get(m, math.nan) - b["metrics"].get(m, math.nan)
                 for a, b in ps]
            mean, half, n = mean_ci(d)
            out.append(dict(dataset=ds, model=model, metric=m, variant=variant,
                            mean=mean, ci=half, lo=mean - half, hi=mean + half, n=n))
    return out


def markdown_table(records, columns) -> str:
    """A plain markdown table of ``records`` (dicts) over ``columns``."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |"
              for r in records]
    return "\n".join(lines)


def slope_ci(x, y) -> tuple:
    """Least-squares slope of y on x with its 95% t-interval.

    Returns (slope, half-width, n); NaN where fewer than 3 finite points.
    Used for "does the gain grow with the skip rate": x are the skip rates of
    the data sets, y the mean paired gains measured on them.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0:
        return math.nan, math.nan, n
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    resid = y - y.mean() - slope * xc
    se = math.sqrt((resid**2).sum() / (n - 2) / (xc**2).sum())
    return slope, t_quantile(n - 2) * se, n


def skip_rate_of(row) -> float:
    """The skip rate of a stored run's data set (top level or in its config)."""
    v = row.get("skip_rate", row.get("config", {}).get("skip_rate"))
    return math.nan if v is None else float(v)


def claim_checks(rows, models=("gru4rec", "caser", "sasrec", "bert4rec"), dataset="bundled",
                 axes=("listener:", "bundled:", "sim:")) -> list:
    """The paper's four claims, tested on stored runs (95% intervals).

    1. +term raises HR@10 and MRR@10 for every model (paired gain > 0 on
       ``dataset``); 2. Skip-MRR@10 falls (paired change < 0); 3. the HR@10
       gain grows with the skip rate (slope > 0 across the data sets of each
       axis prefix); 4. SASRec has the highest base HR@10 on ``dataset``.

    Returns dicts: claim, model, axis, estimate, lo, hi, n, verdict
    ("held", "not held: opposite", or "not shown" when the interval holds 0).
    """
    out = []

    def verdict(lo, hi, sign):
        if math.isnan(lo) or math.isnan(hi):
            return "not shown"
        if (lo > 0 if sign > 0 else hi < 0):
            return "held"
        if (hi < 0 if sign > 0 else lo > 0):
            return "not held: opposite"
        return "not shown"

    present = sorted({r["model"] for r in rows if r["dataset"] == dataset})
    for model in [m for m in models if m in present] or present:
        for metric, sign, claim in (("sampled:HR@10", 1, "term raises HR@10"),
                                    ("sampled:MRR@10", 1, "term raises MRR@10"),
                                    ("sampled:Skip-MRR@10", -1, "term lowers Skip-MRR@10")):
            d = [x for x in paired_differences([r for r in rows if r["dataset"] == dataset],
                                               metrics=(metric,)) if x["model"] == model]
            if d:
                e = d[0]
                out.append(dict(claim=claim, model=model, axis=dataset, estimate=e["mean"],
                                lo=e["lo"], hi=e["hi"], n=e["n"],
                                verdict=verdict(e["lo"], e["hi"], sign)))
        for prefix in axes:
            sub = [r for r in rows if r["dataset"].startswith(prefix) and r["model"] == model]
            gains = paired_differences(sub, metrics=("sampled:HR@10",))
            rate = {r["dataset"]: skip_rate_of(r) for r in sub}
            s, half, n = slope_ci([rate[g["dataset"]] for g in gains],
                                  [g["mean"] for g in gains])
            if n:
                out.append(dict(claim="HR@10 gain grows with skip rate (slope)", model=model,
                                axis=prefix.rstrip(":"), estimate=s, lo=s - half,
                                hi=s + half, n=n, verdict=verdict(s - half, s + half, 1)))
    base = summarize([r for r in rows if r["dataset"] == dataset and r["variant"] == "base"],
                     metrics=("sampled:HR@10",), group=("model",))
    if base:
        best = max(base, key=lambda b: b["mean"])
        sas = next((b for b in base if b["model"] == "sasrec"), None)
        if sas is not None:
            others = [b for b in base if b["model"] != "sasrec"]
            clear = all(sas["lo"] > b["hi"] for b in others)
            v = ("held" if clear else "not shown") if best["model"] == "sasrec" else \
                f"not held: {best['model']} higher"
            out.append(dict(claim="SASRec has the highest base HR@10", model="sasrec",
                            axis=dataset, estimate=sas["mean"], lo=sas["lo"], hi=sas["hi"],
                            n=sas["n"], verdict=v))
    return out
