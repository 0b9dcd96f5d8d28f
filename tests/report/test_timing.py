import pandas as pd
import pytest

from pcr.report.timing import run_time_table, write_run_time_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(root, rel, seconds):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t100\t200\t50\t60\t0\t0\t90\t{seconds}\n")


def test_jobs_are_summed_per_rule_longest_first(tmp_path):
    bench(tmp_path, "toy_model.tsv", 300.0)
    bench(tmp_path, "calibrate/progressive/W8A8.tsv", 20.0)
    bench(tmp_path, "calibrate/perstep/W4A6.tsv", 10.0)
    bench(tmp_path, "generate/fp/fp32/in_domain.shard-0.tsv", 5.0)
    bench(tmp_path, "generate/fp/fp32/in_domain.shard-1.tsv", 7.0)
    table = run_time_table(tmp_path)
    assert list(table["rule"]) == ["toy_model", "calibrate", "generate", "total"]
    rows = table.set_index("rule")
    assert rows.loc["calibrate", "jobs"] == 2 and rows.loc["calibrate", "total_s"] == 30.0
    assert rows.loc["calibrate", "mean_s"] == 15.0 and rows.loc["calibrate", "max_s"] == 20.0
    assert rows.loc["total", "jobs"] == 5 and rows.loc["total", "total_s"] == 342.0
    assert rows.loc["total", "max_s"] == 300.0
    assert rows.loc[["toy_model", "calibrate", "generate"], "share"].sum() == pytest.approx(1.0, abs=2e-3)


def test_tables_are_written_as_csv_and_markdown(tmp_path):
    bench(tmp_path / "b", "metrics/naive/W8A8/in_domain.tsv", 1.5)
    write_run_time_table(tmp_path / "b", tmp_path / "t.csv", tmp_path / "t.md")
    assert pd.read_csv(tmp_path / "t.csv")["rule"].tolist() == ["metrics", "total"]
    assert "| metrics | 1 |" in (tmp_path / "t.md").read_text()


def test_no_benchmarks_and_a_foreign_file_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the workflow first"):
        run_time_table(tmp_path)
    (tmp_path / "notes.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="notes.tsv is not a Snakemake benchmark file"):
        run_time_table(tmp_path)
