"""Figure kinds by name: the figure each workflow table gets, so a rule names it and needs no code.

A kind is the table's name: "main" reads the delta table (main_deltas.csv: paired differences to the
baseline method), "bits" the main table, "ablation_<name>" an ablation table, "act_ranges" a per-step
range CSV. Unknown ablations fall back to bars per label, so a new
ablation in the config gets a figure before it gets a tailored one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from pcr.report.deltas import main_figure
from pcr.report.figures import act_range_figure, bar_figure, bits_figure, fid_psnr_figure, sweep_figure

__all__ = ["FIGURE_KINDS", "draw_figure"]


def _sweep(x, hue, title):
    return lambda df, stem: sweep_figure(df, x, stem, title, hue=hue)


def _start_each_line_unrelaxed(df: pd.DataFrame) -> pd.DataFrame:
    """The unrelaxed row (relax_where "none", share 0) is the x = 0 point of every where-line."""
    none = df["relax_where"] == "none"
    wheres = [w for w in df.loc[~none & df["relax_where"].notna(), "relax_where"].unique()]
    starts = [df[none].assign(relax_where=w) for w in wheres]
    return pd.concat([*starts, df[~none]], ignore_index=True) if wheres else df


def _act_ranges(df, stem):
    out = act_range_figure(df, stem)
    print(f"act_ranges: drew layers {', '.join(out['layers'])}", file=sys.stderr)  # into the rule's log
    return out["paths"]


FIGURE_KINDS = {
    "main": main_figure,
    "bits": bits_figure,
    "act_ranges": _act_ranges,
    # per-step (FP-trajectory) vs progressive parameters at each bit setting
    "ablation_progressive": lambda df, stem: fid_psnr_figure(
        df, stem, "Per-step vs progressive calibration: distance to the FP images per bit setting"),
    "ablation_relax_share": lambda df, stem: sweep_figure(
        _start_each_line_unrelaxed(df), "relax_share", stem,
        "Relaxing the first vs the last sampling steps: quality vs share relaxed", hue="relax_where"),
    "ablation_relax_bits": _sweep("relax_bits", "method", "Quality vs activation bits of the relaxed steps"),
    "ablation_calib_size": _sweep("calib_size", "method", "Quality vs number of calibration prompts"),
    "ablation_relax_auto": lambda df, stem: bar_figure(
        df, stem, "Relaxed steps picked by measured sensitivity vs fixed intervals (same average bits)"),
}


def draw_figure(kind: str, table: str | os.PathLike, stem: str | os.PathLike) -> list[Path]:
    """Read the CSV `table` and draw figure `kind` (see FIGURE_KINDS) to stem.png/.pdf; returns the paths."""
    draw = FIGURE_KINDS.get(kind)
    if draw is None and kind.startswith("ablation_"):
        name = kind.removeprefix("ablation_")
        return bar_figure(pd.read_csv(table), stem, f"Ablation {name}: distance to the FP images")
    if draw is None:
        raise ValueError(f"unknown figure kind {kind!r}; known: {', '.join(FIGURE_KINDS)} or ablation_<name>")
    return draw(pd.read_csv(table), stem)
