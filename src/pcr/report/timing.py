"""Where a run's time went: Snakemake's benchmark files (one TSV per job, results/benchmarks/) summed per rule.

A job's benchmark path names its rule: results/benchmarks/<rule>.tsv or results/benchmarks/<rule>/<wildcards>.tsv.
The table holds every job whose benchmark file is present, so a rerun's table still counts the jobs it did
not have to run again (with the time they took when they ran).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pcr.report.tables import write_table

__all__ = ["run_time_table", "write_run_time_table"]

COLUMNS = ["rule", "jobs", "total_s", "mean_s", "max_s", "share"]


def _job_seconds(path: Path) -> float:
    frame = pd.read_csv(path, sep="\t")
    if frame.empty or "s" not in frame.columns:
        raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column with a row); delete it and "
                         "rerun the job that writes it")
    return float(frame["s"].iloc[0])


def run_time_table(bench_dir: str | os.PathLike) -> pd.DataFrame:
    """Per rule: jobs, total / mean / longest wall seconds, and share of the summed time; longest first,
    then a `total` row. Wall time includes waiting for the model lock when jobs ran side by side."""
    root = Path(bench_dir)
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no benchmark files under {root}: run the workflow first (snakemake --cores 1 all)")
    rows = [{"rule": f.relative_to(root).parts[0].removesuffix(".tsv"), "s": _job_seconds(f)} for f in files]
    per_rule = pd.DataFrame(rows).groupby("rule")["s"].agg(jobs="count", total_s="sum", mean_s="mean", max_s="max")
    per_rule = per_rule.sort_values("total_s", ascending=False).reset_index()
    total = per_rule["total_s"].sum()
    per_rule["share"] = per_rule["total_s"] / total
    all_jobs = {"rule": "total", "jobs": per_rule["jobs"].sum(), "total_s": total,
                "mean_s": total / per_rule["jobs"].sum(), "max_s": per_rule["max_s"].max(), "share": 1.0}
    table = pd.concat([per_rule, pd.DataFrame([all_jobs])], ignore_index=True)[COLUMNS]
    return table.round({"total_s": 1, "mean_s": 1, "max_s": 1, "share": 3})


def write_run_time_table(bench_dir: str | os.PathLike, csv: str | os.PathLike, markdown: str | os.PathLike) -> None:
    write_table(run_time_table(bench_dir), csv, markdown)
