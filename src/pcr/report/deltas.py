"""The main figure: each method's paired difference to a named baseline method, with its interval.

Why differences and not the values themselves: the methods' PSNRs differ by tenths of a dB on top of
30-50 dB, so bars from zero showed no difference at all, and an interval around each method's own
mean (its prompts' spread) is wider than any difference between methods. Differences image by image
(same prompts and seeds) and their paired bootstrap intervals are what tell methods apart.
The input is a delta table (pcr.report.delta_table; the workflow's results/tables/main_deltas.csv).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pcr.report.figures import FP_FLOOR, MARKERS, _check_unique, _colors, _legend, _order, save_figure

__all__ = ["main_figure"]

PANELS = {  # column of the delta table -> what its axis says (the baseline is appended)
    "delta_psnr": "Δ PSNR to FP, dB",
    "delta_ssim": "Δ SSIM to FP",
    "delta_clip_score": "Δ CLIP score",
}
CI_LABEL = "95% bootstrap interval (Δ: paired; FID: bias-corrected)"


def _points(ax, rows: pd.DataFrame, column: str, xs: dict, offsets: dict, colors: dict, markers: dict) -> None:
    """One point per row at its label's x (shifted by prompt set), with its interval as an error bar.
    An infinite value (every image identical to FP) is a "∞" at the panel's edge."""
    for _, r in rows.iterrows():
        x = xs[r["label"]] + offsets[r["prompt_set"]]
        v, lo, hi = (float(r[f"{column}{end}"]) for end in ("", "_lo", "_hi"))
        color = colors[r["prompt_set"]]
        if not np.isfinite(v):
            if not np.isnan(v):
                ax.text(x, 0.97 if v > 0 else 0.03, "∞" if v > 0 else "-∞", transform=ax.get_xaxis_transform(),
                        ha="center", va="top" if v > 0 else "bottom", color=color)
            continue
        yerr = None
        if np.isfinite(lo) and np.isfinite(hi):
            yerr = [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
        ax.errorbar([x], [v], yerr=yerr, fmt=markers[r["prompt_set"]], color=color, ecolor=color, capsize=3,
                    markersize=5, linewidth=1)


def _axes_labels(ax, labels: list, xs: dict) -> None:
    ax.set_xticks([xs[lab] for lab in labels], [textwrap.fill(str(lab), 22) for lab in labels], rotation=40,
                  ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _fid_panel(ax, rows: pd.DataFrame, fp: pd.DataFrame, xs: dict, offsets: dict, colors: dict,
               markers: dict) -> None:
    """FID to FP as points with intervals; the FP noise floor per prompt set as a dashed line. Log scale
    when every FID is positive: a W8A8 FID can be 1% of a W4A6 one, and both must be readable."""
    floors = {}
    for prompt_set in offsets:
        value = fp.loc[fp["prompt_set"] == prompt_set, "fid"].to_numpy(float)
        if value.size and np.isfinite(value[0]):
            floors[prompt_set] = value[0]
            ax.axhline(value[0], **{**FP_FLOOR, "color": colors[prompt_set]})
    values = np.concatenate([rows["fid"].to_numpy(float), list(floors.values())])
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all():
        ax.set_yscale("log")  # an interval reaching 0 runs to the bottom of the panel
    _points(ax, rows, "fid", xs, offsets, colors, markers)


def _check_delta_table(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    needed = {"label", "bits", "prompt_set", "method", "baseline_label", "fid", "fid_lo", "fid_hi"}
    needed |= {f"{c}{end}" for c in PANELS for end in ("", "_lo", "_hi")}
    missing = sorted(needed - set(df.columns))
    if missing:
        raise ValueError(f"main_figure draws a delta table (pcr.report.delta_table, results/tables/main_deltas.csv);"
                         f" this table lacks {missing}")
    fp, runs = df[df["method"] == "fp"], df[df["method"] != "fp"]
    if runs.empty:
        raise ValueError("main_figure: no quantized rows (all rows are method 'fp' or the table is empty)")
    _check_unique(runs, ["label", "bits", "prompt_set"], "main_figure")
    names = _order(runs["baseline_label"])
    if len(names) != 1:
        raise ValueError(f"main_figure: the table must have one baseline, it has {names or 'none'}")
    return fp, runs, str(names[0])


def main_figure(df: pd.DataFrame, stem: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Paired differences to the baseline (Δ PSNR, Δ SSIM, Δ CLIP score: method − baseline, the zero line)
    and FID to FP, one row of panels per bit setting, one point per method and prompt set with its 95%
    interval. `df` is a delta_table; its FP rows (method "fp") draw the FID noise floor."""
    fp, runs, baseline = _check_delta_table(df)
    bits, labels, prompt_sets = _order(runs["bits"]), _order(runs["label"]), _order(runs["prompt_set"])
    others = [lab for lab in labels if lab != baseline]
    colors = _colors(prompt_sets)
    markers = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(prompt_sets)}
    width = 0.5 / max(len(prompt_sets), 1)
    offsets = {p: (i - (len(prompt_sets) - 1) / 2) * width for i, p in enumerate(prompt_sets)}
    ncols = len(PANELS) + 1
    fig = Figure(figsize=(ncols * max(2.6, 0.45 * len(labels) + 1.2) + 2.2, 3.3 * len(bits) + 0.8),
                 layout="constrained")
    axes = fig.subplots(len(bits), ncols, squeeze=False)
    for row, bit in enumerate(bits):
        sub = runs[runs["bits"] == bit]
        for col, (column, name) in enumerate(PANELS.items()):
            ax, xs = axes[row, col], {lab: i for i, lab in enumerate(others)}
            ax.axhline(0.0, color="k", linewidth=1.2)
            _points(ax, sub[sub["label"] != baseline], column, xs, offsets, colors, markers)
            _axes_labels(ax, others, xs)
            ax.set_ylabel(f"{name}\nmethod − {textwrap.shorten(baseline, 30, placeholder='…')}", fontsize="small")
            ax.set_title(f"{bit}: higher is better", fontsize="medium")
        ax, xs = axes[row, -1], {lab: i for i, lab in enumerate(labels)}
        _fid_panel(ax, sub, fp, xs, offsets, colors, markers)
        _axes_labels(ax, labels, xs)
        ax.set_ylabel("FID to FP", fontsize="small")
        ax.set_title(f"{bit}: lower is better", fontsize="medium")
    sections = [("prompt set", [Line2D([], [], color=colors[p], marker=markers[p], linestyle="none", label=str(p))
                                for p in prompt_sets]),
                ("marks", [Line2D([], [], color="k", linewidth=1.2, label=f"baseline: {baseline}"),
                           Line2D([], [], color="0.3", marker="|", markersize=10, linestyle="none", label=CI_LABEL),
                           Line2D([], [], label="FP noise floor (other seeds), per prompt set", **FP_FLOOR)])]
    _legend(axes[0, -1], sections, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title or f"Quantized vs FP: each method's paired difference to {baseline} (same prompts and seeds)")
    return save_figure(fig, stem)
