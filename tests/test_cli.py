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
    assert "sampled:HR@10" in text and "full:Skip-MRR@10" in text and "paired diff" in text
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4  # 2 seeds x (base, +term)
    assert {r["variant"] for r in results["runs"]} == {"base", "+term"}
    assert results["meta"]["data"]["sessions"] > 100
    assert (out / "runs.csv").read_text().count("\n") == 5
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
