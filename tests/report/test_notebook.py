import json
from pathlib import Path

import pandas as pd

from pcr.report import metrics_table, write_delta_table, write_table

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "main_figure.ipynb"


def code_cells(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells)  # no stored outputs
    return ["".join(c["source"]) for c in cells]


def test_notebook_redraws_main_figure_from_results(run_paths, tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    (root / "workflow").mkdir(parents=True)
    (root / "workflow" / "Snakefile").touch()
    write_table(metrics_table(run_paths), root / "results" / "tables" / "main.csv")
    write_delta_table(run_paths, "naive", root / "results" / "tables" / "main_deltas.csv")  # the figure's table
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")  # where Jupyter starts it: the root is found by walking up

    namespace = {"__name__": "__main__"}
    for source in code_cells(NOTEBOOK):
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)

    assert namespace["ROOT"] == root.resolve()
    assert isinstance(namespace["table"], pd.DataFrame) and namespace["table"].shape == (5, 11)
    figures = root.resolve() / "results" / "figures"
    assert namespace["paths"] == [figures / "main_notebook.png", figures / "main_notebook.pdf"]
    assert (figures / "main_notebook.png").stat().st_size > 0
    assert (figures / "main_notebook.pdf").read_bytes().startswith(b"%PDF")
    assert "results/figures/main_notebook.png" in capsys.readouterr().out
