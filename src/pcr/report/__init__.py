"""Reports: result files (metrics JSON, range CSV, image folders) -> pandas tables and matplotlib figures.

Layering rule: this package reads result files only. It imports nothing of the model side (no torch,
no pcr.quant, pcr.bench, pcr.calibrate or pcr.pipelines), only the stdlib, numpy, pandas, matplotlib,
PIL and pcr.io, so tables and figures can be rebuilt, and the notebook run, on a machine without the
model stack, and a report job never waits on a GPU import.
"""

from pcr.report.deltas import main_figure
from pcr.report.draw import FIGURE_KINDS, draw_figure
from pcr.report.figures import (
    act_range_figure,
    bar_figure,
    bits_figure,
    fid_psnr_figure,
    range_drift,
    save_figure,
    sweep_figure,
)
from pcr.report.grid import sample_grid
from pcr.report.tables import (
    delta_table,
    main_table,
    metrics_table,
    paired_deltas,
    read_metrics_json,
    to_markdown,
    write_delta_table,
    write_table,
)

__all__ = [
    "FIGURE_KINDS",
    "act_range_figure",
    "bar_figure",
    "bits_figure",
    "delta_table",
    "draw_figure",
    "fid_psnr_figure",
    "main_figure",
    "main_table",
    "metrics_table",
    "paired_deltas",
    "range_drift",
    "read_metrics_json",
    "sample_grid",
    "save_figure",
    "sweep_figure",
    "to_markdown",
    "write_delta_table",
    "write_table",
]
