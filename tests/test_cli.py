"""`nfcl run`: the main job end to end on a tiny setting, and its errors."""
import json
import subprocess
import sys

from nfcl import cli


def test_run_writes_table_results_and_plot(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["run", "--epochs", "2", "--seeds", "2", "--dim", "16", "--heads", "2",
                     "--layers", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "HR@10" in text and "SkipMRR@10↓" in text and "sampled" in text
    assert "full" in text and "sasrec   diff" in text
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6  # 2 seeds x (base, +term) + 2 baselines
    assert "itemknn  base" in text and "mostpop  base" in text
    assert {r["variant"] for r in results["runs"]} == {"base", "+term"}
    assert results["meta"]["data"]["sessions"] > 100
    assert (out / "runs.csv").read_text().count("\n") == 7
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_data_path_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["run", "--data", str(tmp_path / "missing.csv"), "--no-progress",
                     "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err


def test_malformed_csv_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,item_id,timestamp,skip\nu,a,1000,0\nu,b,notatime,1\n")
    code = cli.main(["run", "--data", str(bad), "--no-progress", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "timestamp" in err


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "nfcl", "run", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--contrastive" in r.stdout


def test_run_all_models_prints_one_table(tmp_path, capsys):
    code = cli.main(["run", "--model", "all", "--epochs", "1", "--seeds", "2", "--dim", "8",
                     "--heads", "2", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    for name in ("gru4rec", "caser", "sasrec", "bert4rec"):
        for variant in ("base", "+term", "diff"):
            assert f"{name:<9}{variant:<8}" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 18


def test_impossible_options_fail_before_training(tmp_path, capsys):
    assert cli.main(["run", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["run", "--out", str(blocker), "--no-progress"]) == 2
    assert "file" in capsys.readouterr().err
