"""The results store: keys, reuse, torn lines, t-intervals and paired differences."""
import json
import math

import numpy as np
import pytest

from nfcl.results import (ResultStore, cell_key, mean_ci, paired_differences, summarize,
                          t_quantile)


def test_key_is_stable_and_sensitive():
    k = cell_key({"w": 0.5, "a": [1, 2]}, "sasrec", "+term", 0, "ff")
    assert k == cell_key({"a": [1, 2], "w": 0.5}, "sasrec", "+term", 0, "ff")
    for other in (cell_key({"w": 0.25, "a": [1, 2]}, "sasrec", "+term", 0, "ff"),
                  cell_key({"w": 0.5, "a": [1, 2]}, "gru4rec", "+term", 0, "ff"),
                  cell_key({"w": 0.5, "a": [1, 2]}, "sasrec", "base", 0, "ff"),
                  cell_key({"w": 0.5, "a": [1, 2]}, "sasrec", "+term", 1, "ff"),
                  cell_key({"w": 0.5, "a": [1, 2]}, "sasrec", "+term", 0, "fe")):
        assert other != k


def test_run_reuses_unless_recompute(tmp_path):
    store = ResultStore(tmp_path / "sub" / "r.jsonl")
    calls = []

    def fn():
        calls.append(1)
        return {"sampled:HR@10": 0.1 * len(calls), "info": {"loss": [2.0, 1.0]}}

    kw = dict(config={"w": 0.5}, model="sasrec", variant="+term", seed=3, dataset="d",
              fingerprint="abc")
    a = store.run(fn, **kw)
    b = store.run(fn, **kw)
    assert len(calls) == 1 and not a["reused"] and b["reused"]
    assert b["metrics"] == a["metrics"] and b["info"]["loss"] == [2.0, 1.0]
    c = store.run(fn, recompute=True, **kw)
    assert len(calls) == 2 and c["metrics"]["sampled:HR@10"] == pytest.approx(0.2)
    assert len(store.rows()) == 1  # the later row of a key wins
    assert store.get(a["key"])["metrics"]["sampled:HR@10"] == pytest.approx(0.2)


def test_torn_last_line_is_ignored(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append({"key": "a", "x": 1})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "x"')  # a writer killed mid-line
    assert [r["key"] for r in store.rows()] == ["a"]
    lines = open(store.path).read().splitlines()
    assert json.loads(lines[0]) == {"key": "a", "x": 1}


def test_t_quantile_and_ci():
    assert t_quantile(1) == pytest.approx(12.706, rel=1e-4)
    assert t_quantile(4) == pytest.approx(2.776, rel=1e-4)
    assert t_quantile(60) == pytest.approx(2.000, abs=2e-3)
    assert t_quantile(10**6) == pytest.approx(1.96, abs=1e-3)
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, half, n = mean_ci(x)
    assert (mean, n) == (3.0, 5)
    assert half == pytest.approx(2.776 * np.std(x, ddof=1) / math.sqrt(5), rel=1e-4)
    assert math.isnan(mean_ci([1.0])[1]) and mean_ci([])[2] == 0


def _row(ds, model, variant, seed, hr):
    return dict(dataset=ds, model=model, variant=variant, seed=seed,
                metrics={"sampled:HR@10": hr})


def test_summaries_pair_by_seed():
    rng = np.random.default_rng(0)
    base = rng.random(5)
    gain = np.array([0.01, 0.02, 0.03, 0.02, 0.05])
    rows = [_row("d", "m", "base", s, base[s]) for s in range(5)]
    rows += [_row("d", "m", "+term", s, base[s] + gain[s]) for s in range(5)]
    rows.append(_row("d", "m", "+term", 9, 0.9))  # no base partner: not paired
    (diff,) = paired_differences(rows, metrics=("sampled:HR@10",))
    assert diff["n"] == 5 and diff["mean"] == pytest.approx(gain.mean(), abs=1e-12)
    assert diff["ci"] == pytest.approx(2.776 * gain.std(ddof=1) / math.sqrt(5), rel=1e-4)
    # the paired CI is far narrower than the spread of either variant
    s = {(r["variant"]): r for r in summarize(rows, metrics=("sampled:HR@10",))}
    assert s["base"]["n"] == 5 and s["+term"]["n"] == 6
    assert s["base"]["mean"] == pytest.approx(base.mean(), abs=1e-12)
    assert diff["ci"] < s["base"]["ci"]


def test_slope_ci_recovers_a_known_line_and_refuses_too_few_points():
    from nfcl.results import slope_ci

    rng = np.random.default_rng(0)
    x = np.linspace(0.05, 0.5, 40)
    y = 0.2 * x + 0.01 + rng.normal(0, 0.002, x.size)
    s, half, n = slope_ci(x, y)
    assert n == 40 and abs(s - 0.2) < half and half < 0.01
    assert math.isnan(slope_ci([0.1, 0.2], [1.0, 2.0])[0])
    s, half, _ = slope_ci(x, 0.3 - x)  # exact line: zero residual
    assert s == pytest.approx(-1.0) and half == pytest.approx(0.0, abs=1e-12)


def _claim_row(dataset, model, variant, seed, hr, skip_mrr, rate):
    return dict(dataset=dataset, model=model, variant=variant, seed=seed, skip_rate=rate,
                metrics={"sampled:HR@10": hr, "sampled:MRR@10": hr / 3,
                         "sampled:Skip-MRR@10": skip_mrr})


def test_claim_checks_give_each_verdict():
    from nfcl.results import claim_checks

    rows = []
    for seed in range(5):
        eps = 0.001 * seed
        # gru4rec: the term helps HR clearly and lowers Skip-MRR; sasrec: hurts
        rows += [_claim_row("bundled", "gru4rec", "base", seed, 0.20 + eps, 0.10 + eps, 0.2),
                 _claim_row("bundled", "gru4rec", "+term", seed, 0.25 + 2 * eps, 0.05, 0.2),
                 _claim_row("bundled", "sasrec", "base", seed, 0.30 + eps, 0.10, 0.2),
                 _claim_row("bundled", "sasrec", "+term", seed, 0.28 + eps / 2, 0.12 + eps, 0.2)]
        for rate in (0.1, 0.3, 0.5):  # gain = rate / 10 for gru4rec
            rows += [_claim_row(f"sim:{rate}", "gru4rec", "base", seed, 0.2 + eps, 0.1, rate),
                     _claim_row(f"sim:{rate}", "gru4rec", "+term", seed, 0.2 + rate / 10 + eps * 1.5,
                          0.1, rate)]
    got = {(c["claim"], c["model"], c["axis"]): c["verdict"] for c in claim_checks(rows)}
    assert got[("term raises HR@10", "gru4rec", "bundled")] == "held"
    assert got[("term lowers Skip-MRR@10", "gru4rec", "bundled")] == "held"
    assert got[("term raises HR@10", "sasrec", "bundled")] == "not held: opposite"
    assert got[("term lowers Skip-MRR@10", "sasrec", "bundled")] == "not held: opposite"
    assert got[("HR@10 gain grows with skip rate (slope)", "gru4rec", "sim")] == "held"
    assert got[("SASRec has the highest base HR@10", "sasrec", "bundled")] == "held"
