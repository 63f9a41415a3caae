"""Run a recommender with and without the skip-aware term and compare them.

One *run* trains one model variant on one seed and evaluates it on the test
examples; ``compare`` does every (variant, seed) pair on the same split and
candidate sets, so differences between variants are paired by seed.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np

from .errors import InputError
from .models import SASRec

MODELS = {"sasrec": SASRec}
HEADLINE = ("HR@1", "HR@5", "HR@10", "HR@20", "MRR@10", "NDCG@10", "Skip-MRR@10")


def compare(split, *, model="sasrec", seeds=(0, 1, 2), w=0.5, contrastive="ours",
            model_kw=None, fit_kw=None, eval_seed=0, progress=True,
            on_run=None) -> list:
    """Train ``model`` with w=0 ("base") and with ``w`` ("+term") for every seed.

    Returns one dict per run: model, variant, w, seed, seconds and every test
    metric ("full:..." and "sampled:..."). ``on_run(row)`` is called after each.
    """
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    model_kw, fit_kw = dict(model_kw or {}), dict(fit_kw or {})
    rows = []
    for seed in seeds:
        for variant, weight in (("base", 0.0), ("+term", float(w))):
            t0 = time.perf_counter()
            m = MODELS[model](split.train.n_items, seed=int(seed),
                              item_keys=split.train.item_keys, **model_kw)
            m.fit(split.train, split.valid, w=weight, contrastive=contrastive,
                  eval_seed=eval_seed, progress=progress, **fit_kw)
            metrics = m.evaluate(split.test, seed=eval_seed)
            row = dict(model=model, variant=variant, w=weight, seed=int(seed),
                       seconds=time.perf_counter() - t0, **metrics)
            rows.append(row)
            if on_run is not None:
                on_run(row)
    return rows


def summarize(rows, protocol="sampled") -> list:
    """Per metric: mean and sd over seeds of each variant, and the paired
    difference (+term minus base) with its sd."""
    by = {(r["variant"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = []
    for name in HEADLINE:
        key = f"{protocol}:{name}"
        base = np.array([by[("base", s)][key] for s in seeds if ("base", s) in by], float)
        term = np.array([by[("+term", s)][key] for s in seeds if ("+term", s) in by], float)
        paired = [by[("+term", s)][key] - by[("base", s)][key] for s in seeds
                  if ("base", s) in by and ("+term", s) in by]
        out.append(dict(metric=key, base_mean=_mean(base), base_sd=_sd(base),
                        term_mean=_mean(term), term_sd=_sd(term),
                        diff_mean=_mean(paired), diff_sd=_sd(paired)))
    return out


def _mean(x) -> float:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _sd(x) -> float:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def format_table(summary, n_seeds) -> str:
    """The summary as a fixed-width text table (mean ± sd over seeds)."""
    head = f"{'metric':<22}{'base':>18}{'+term':>18}{'paired diff':>20}"
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(f"{s['metric']:<22}{_pm(s['base_mean'], s['base_sd']):>18}"
                     f"{_pm(s['term_mean'], s['term_sd']):>18}"
                     f"{_pm(s['diff_mean'], s['diff_sd'], signed=True):>20}")
    lines.append(f"(mean ± sd over {n_seeds} seeds; Skip-MRR@10: lower is better)")
    return "\n".join(lines)


def _pm(mean, sd, signed=False) -> str:
    if math.isnan(mean):
        return "n/a"
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{mean:.4f} ± {sd:.4f}" if not math.isnan(sd) else f"{sign}{mean:.4f}"


def write_results(folder, rows, summaries, meta) -> dict:
    """Write results.json and runs.csv into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = dict(json=os.path.join(folder, "results.json"),
                 csv=os.path.join(folder, "runs.csv"))
    _atomic_write(paths["json"], json.dumps(dict(meta=meta, runs=rows,
                                                 summary=summaries), indent=2))
    keys = list(rows[0].keys())
    tmp = paths["csv"] + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, paths["csv"])
    return paths


def _atomic_write(path, text) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def plot_comparison(summary, path, title="") -> str:
    """Bar chart of base vs +term per metric with sd error bars, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["metric"].split(":", 1)[1] for s in summary]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    for i, (label, key) in enumerate((("base", "base"), ("+term", "term"))):
        means = [s[f"{key}_mean"] for s in summary]
        sds = [0 if math.isnan(s[f"{key}_sd"]) else s[f"{key}_sd"] for s in summary]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("value (Skip-MRR: lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
