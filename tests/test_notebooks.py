"""Execute every notebook on a small setting (parameters injected); any error fails."""
import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(path, params: dict, cwd, timeout=300):
    """Run ``path`` with ``params`` assigned in a cell after the "parameters"
    cell (papermill's convention); returns the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = "# injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _fake_store(path):
    """A few synthetic rows covering the three ways and the sweep."""
    rows = []
    sets = [("bundled", 0.2), ("bundled:under:10", 0.1), ("bundled:under:60", 0.4),
            ("listener:u01", 0.3), ("listener:u02", 0.1), ("sim:0.1", 0.1),
            ("sim:0.5", 0.5), ("sweep:w=0.5,tau=0.1", 0.2)]
    for ds, rate in sets:
        for variant, gain in (("base", 0.0), ("+term", rate / 10)):
            for seed in (0, 1):
                m = {"sampled:HR@10": 0.2 + gain + 0.01 * seed,
                     "sampled:MRR@10": 0.1 + gain, "sampled:Skip-MRR@10": 0.05 - gain}
                if ds.startswith("sim:"):
                    m["true:aff@10"] = 0.3 + gain
                rows.append(dict(key=f"{ds}{variant}{seed}", dataset=ds, model="sasrec",
                                 variant=variant, seed=seed, skip_rate=rate, metrics=m,
                                 info={"loss": [2.0, 1.0]}, seconds=1.0))
    for variant, gain in (("base", 0.0), ("+term", 0.02)):  # pooled, by listener
        for seed in (0, 1):
            m = {"sampled:HR@10": 0.2 + gain, "sampled:MRR@10": 0.1,
                 "sampled:Skip-MRR@10": 0.05}
            for u, rate in (("u01", 0.1), ("u02", 0.3), ("u03", 0.5)):
                m[f"by:{u}:sampled:HR@10"] = 0.2 + gain * rate * 10 + 0.01 * seed
                m[f"by:{u}:skip_rate"] = rate
            rows.append(dict(key=f"pooled{variant}{seed}", dataset="pooled", model="sasrec",
                             variant=variant, seed=seed, skip_rate=0.3, metrics=m,
                             info={"loss": [2.0, 1.0]}, seconds=1.0))
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_notebook_folder_is_complete():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["gains_vs_skip_rate.ipynb", "quickstart.ipynb"]


def test_quickstart(tmp_path):
    nb = execute(NOTEBOOKS / "quickstart.ipynb", dict(epochs=1, dim=8, seeds=(0,)),
                 tmp_path)
    text = json.dumps(nb.cells[-1]["outputs"])
    assert "+term" in text and "mostpop" in text


def test_gains_vs_skip_rate(tmp_path):
    store = tmp_path / "store.jsonl"
    _fake_store(store)
    png = tmp_path / "gain.png"
    nb = execute(NOTEBOOKS / "gains_vs_skip_rate.ipynb",
                 dict(store_path=str(store), out_png=str(png)), tmp_path)
    assert png.stat().st_size > 1000
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "listener:u01" in text and "Error" not in text
    assert "pooled SASRec: slope" in text or "u03" in text
