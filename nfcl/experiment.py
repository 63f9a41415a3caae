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
from .baselines import ItemKNN, MostPopular
from .models import BERT4Rec, Caser, GRU4Rec, SASRec

MODELS = {"gru4rec": GRU4Rec, "caser": Caser, "sasrec": SASRec, "bert4rec": BERT4Rec}
BASELINES = {"mostpop": MostPopular, "itemknn": ItemKNN}
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


def baseline_rows(split, eval_seed=0) -> list:
    """The floor: most-popular and session item-kNN, evaluated like the models."""
    rows = []
    for name, cls in BASELINES.items():
        t0 = time.perf_counter()
        m = cls(split.train.n_items).fit(split.train)
        metrics = m.evaluate(split.test, seed=eval_seed)
        rows.append(dict(model=name, variant="base", w=0.0, seed=0,
                         seconds=time.perf_counter() - t0, **metrics))
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


TABLE_COLUMNS = (("sampled", "HR@1"), ("sampled", "HR@10"), ("sampled", "MRR@10"),
                 ("sampled", "NDCG@10"), ("sampled", "Skip-MRR@10"), ("full", "HR@10"),
                 ("full", "MRR@10"), ("full", "Skip-MRR@10"))


def format_table(rows) -> str:
    """One text table: for every model, base and +term (mean ± sd over seeds)
    and their paired difference, sampled- and full-ranking metrics side by side."""
    head1 = f"{'':<17}" + "".join(f"{p:>14}" for p, _ in TABLE_COLUMNS)
    head2 = f"{'model':<9}{'variant':<8}" + "".join(
        f"{m.replace('Skip-MRR@10', 'SkipMRR@10↓'):>14}" for _, m in TABLE_COLUMNS)
    lines = [head1, head2, "-" * len(head2)]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        stats = {p: {s["metric"]: s for s in summarize(mine, p)} for p in ("sampled", "full")}
        variants = (("base", "base", False), ("+term", "term", False), ("diff", "diff", True))
        if not any(r["variant"] == "+term" for r in mine):
            variants = variants[:1]  # a baseline: no skip-aware variant
        for label, key, signed in variants:
            cells = ""
            for p, m in TABLE_COLUMNS:
                st = stats[p][f"{p}:{m}"]
                cells += f"{_pm(st[key + '_mean'], st[key + '_sd'], signed):>14}"
            lines.append(f"{model:<9}{label:<8}{cells}")
    n_seeds = len({r["seed"] for r in rows if r["variant"] == "+term"}) or 1
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    lines.append(f"test set; mean ± sd over {seeds}; diff = paired +term minus base "
                 "(same seed, same candidates); ↓ lower is better")
    return "\n".join(lines)


def _pm(mean, sd, signed=False) -> str:
    if math.isnan(mean):
        return "n/a"
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{mean:.3f}±{sd:.3f}" if not math.isnan(sd) else f"{sign}{mean:.3f}"


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


def plot_comparison(rows, path, protocol="sampled", metrics=("HR@10", "MRR@10",
                                                              "Skip-MRR@10"),
                    title="") -> str:
    """Bars of base vs +term per model, one panel per metric, sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    x = np.arange(len(models))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), dpi=120)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for i, (variant, key) in enumerate((("base", "base"), ("+term", "term"))):
            stats = [next(s for s in summarize([r for r in rows if r["model"] == m],
                                               protocol)
                          if s["metric"] == f"{protocol}:{metric}") for m in models]
            means = [st[f"{key}_mean"] for st in stats]
            sds = [0.0 if math.isnan(st[f"{key}_sd"]) else st[f"{key}_sd"] for st in stats]
            ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=variant)
        ax.set_xticks(x, models)
        ax.set_title(f"{metric}" + (" (lower is better)" if "Skip" in metric else ""),
                     fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# experiment cells for the results store (nfcl.results)

VARIANTS = {"base": (0.0, "ours"), "+term": (None, "ours"),
            "+term-reference": (None, "reference")}
QUICK_MODEL_KW = {"sasrec": dict(dim=16, heads=1, layers=1),
                  "bert4rec": dict(dim=16, heads=1, layers=1),
                  "gru4rec": dict(dim=16, hidden=16),
                  "caser": dict(dim=16, n_h=4, n_v=2)}


def run_cell(store, split, *, dataset, fingerprint, model="sasrec", variant="base",
             seed=0, w=0.5, tau=0.1, model_kw=None, fit_kw=None, eval_seed=0,
             truth=None, breakdown=None, recompute=False, extra=None) -> dict:
    """Train and evaluate one (model, variant, seed) cell, or reuse its stored row.

    ``variant`` is "base" (w=0), "+term" (weight ``w``, our InfoNCE) or
    "+term-reference" (weight ``w``, the published code's behaviour).
    ``truth(model, split) -> float`` adds a ground-truth metric ("true:aff@10");
    ``breakdown(model, split) -> dict`` adds further metrics (for example the
    test metrics of each listener of a pooled data set).
    Returns the store row (with ``reused``).
    """
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    weight, contrastive = VARIANTS[variant]
    weight = float(w) if weight is None else weight
    model_kw, fit_kw = dict(model_kw or {}), dict(fit_kw or {})
    config = dict(dataset=dataset, w=weight, tau=float(tau), contrastive=contrastive,
                  model_kw=model_kw,
                  fit_kw=fit_kw, eval_seed=eval_seed, **(extra or {}))

    def fn():
        m = MODELS[model](split.train.n_items, seed=int(seed), **model_kw)
        m.fit(split.train, split.valid, w=weight, tau=float(tau), contrastive=contrastive,
              eval_seed=eval_seed, progress=False, **fit_kw)
        metrics = m.evaluate(split.test, seed=eval_seed)
        floor = MostPopular(split.train.n_items).fit(split.train)
        for k, v in floor.evaluate(split.test, protocols=("sampled",),
                                   seed=eval_seed).items():
            metrics["mostpop:" + k] = v
        if truth is not None:
            metrics["true:aff@10"] = float(truth(m, split))
        if breakdown is not None:
            metrics.update(breakdown(m, split))
        info = dict(loss=[h["loss"] for h in m.history], rec=[h["rec"] for h in m.history],
                    n_test=len(split.test.targets), n_train=int(split.train.n_events),
                    skip_rate=float(split.train.skip_rate),
                    test_skip_rate=float(split.test.skip_rate))
        return dict(metrics, info=info)

    return store.run(fn, config=config, model=model, variant=variant, seed=seed,
                     dataset=dataset, fingerprint=fingerprint, recompute=recompute)
