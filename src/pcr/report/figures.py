"""Tables of results -> PNG + PDF figures.

Figures are built on `matplotlib.figure.Figure` directly, never pyplot, so no global state or GUI
backend is involved and a Snakemake job, a test and a notebook can draw side by side. Every function
takes the data and an output stem (no suffix), writes stem.png and stem.pdf atomically and returns the
paths. The FP row (method "fp": FP images from other seeds) is a noise floor, not a method, so it is
drawn as a dashed line where the metric is unpaired (FID), never as a bar.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pcr.io import atomic_file

__all__ = ["act_range_figure", "bar_figure", "bits_figure", "fid_psnr_figure", "range_drift", "save_figure",
           "sweep_figure"]

METRIC_LABELS = {
    "fid": "FID to FP (lower is better)",
    "kid": "KID to FP (lower is better)",
    "psnr": "PSNR to FP, dB (higher is better)",
    "ssim": "SSIM to FP (higher is better)",
    "clip_score": "CLIP score (higher is better)",
}
KNOB_LABELS = {
    "relax_share": "share of relaxed UNet calls",
    "relax_bits": "activation bits of relaxed steps",
    "relax_auto_bits": "average activation bit budget (auto relaxing)",
    "calib_size": "calibration prompts",
    "avg_act_bits": "average activation bits over sampling steps",
}
HUE_TITLES = {"label": "method", "bits": "bit setting", "relax_where": "relaxed steps"}
LINESTYLES = ["-", ":", "-.", (0, (3, 1, 1, 1, 1, 1))]  # "--" is kept for the FP floor
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
FP_FLOOR = {"color": "0.35", "linestyle": "--", "linewidth": 1.2}
DPI = 150


def save_figure(fig: Figure, stem: str | os.PathLike, dpi: int = DPI) -> list[Path]:
    """Write stem.png and stem.pdf atomically (a killed job leaves no half image); returns both paths."""
    stem = Path(stem)
    written = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        # No creation date in the PDF, so an unchanged figure gives an unchanged file.
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else None)
        written.append(path)
    return written


def _order(values) -> list:
    """Distinct values in first-seen order: the caller orders the table, figures keep that order."""
    return list(dict.fromkeys(v for v in values if not (isinstance(v, float) and math.isnan(v))))


def _split_fp(df: pd.DataFrame, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    is_fp = df["method"] == "fp"  # by method: the workflow names the floor's variant "fp-reseeded"
    runs = df[~is_fp]
    if runs.empty:
        raise ValueError(f"{what}: no quantized rows (all rows are method 'fp' or the table is empty)")
    return df[is_fp], runs


def _check_unique(df: pd.DataFrame, keys: list[str], what: str) -> None:
    """Two rows for one point would be drawn on top of each other; make the caller filter instead."""
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ValueError(f"{what}: {len(dup)} rows share {dict(zip(keys, first[keys]))}; "
                         "filter the table so each point has one row")


def _colors(values) -> dict:
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(values)}


def _fp_floor(ax, fp: pd.DataFrame, metric: str, prompt_sets: list, label_sets: bool = False,
              label: str | None = None) -> bool:
    """Dashed FP noise-floor lines (one per prompt set); True if any was drawn."""
    drawn = False
    for prompt_set in prompt_sets:
        values = fp.loc[fp["prompt_set"] == prompt_set, metric].to_numpy(float)
        if values.size and np.isfinite(values[0]):
            ax.axhline(values[0], label=label if not drawn else None, **FP_FLOOR)
            if label_sets:
                ax.annotate(str(prompt_set), (1, values[0]), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize="x-small", color=FP_FLOOR["color"])
            drawn = True
    return drawn


def _legend(ax, sections: list[tuple[str, list[Line2D]]], **kwargs) -> None:
    """One legend of several keyed sections (colour = method, marker = weight bits, ...)."""
    handles = []
    for title, section in sections:
        if section:
            handles += [Line2D([], [], linestyle="none", label=f"{title}:"), *section]
    ax.legend(handles=handles, fontsize="small", **kwargs)


def _grouped_bars(ax, table: pd.DataFrame, colors: dict, lo=None, hi=None) -> np.ndarray:
    """Bars of `table` (index = x groups, columns = bars in a group); returns the group centres.

    An infinite value (PSNR of identical images) gets a "∞" mark instead of a bar; `lo`/`hi` (same
    shape) draw the interval itself, as it need not contain the point estimate (bootstrap).
    """
    x = np.arange(len(table.index))
    n = max(len(table.columns), 1)
    width = 0.8 / n
    ci_label = "95% bootstrap interval"
    for j, col in enumerate(table.columns):
        pos = x + (j - (n - 1) / 2) * width
        v = table[col].to_numpy(float)
        ax.bar(pos, np.where(np.isfinite(v), v, np.nan), width, color=colors[col], label=str(col))
        for p in pos[np.isposinf(v)]:
            ax.text(p, 0.02, "∞", transform=ax.get_xaxis_transform(), ha="center", color=colors[col])
        if lo is not None and hi is not None:
            low, high = lo[col].to_numpy(float), hi[col].to_numpy(float)
            ok = np.isfinite(low) & np.isfinite(high)
            if ok.any():
                ax.errorbar(pos[ok], (low + high)[ok] / 2, yerr=(high - low)[ok] / 2, fmt="none",
                            ecolor="0.15", capsize=2, linewidth=0.8, label=ci_label)
                ci_label = "_nolegend_"
    ax.set_xticks(x, [textwrap.fill(str(i), 18) for i in table.index], rotation=25, ha="right",
                  fontsize="small")
    return x


def _has_ci(df: pd.DataFrame, metric: str = "fid") -> bool:
    return metric in ("fid", "psnr", "ssim") and {f"{metric}_lo", f"{metric}_hi"} <= set(df.columns)


def fid_psnr_figure(df: pd.DataFrame, stem: str | os.PathLike, title: str | None = None) -> list[Path]:
    """FID and PSNR to the FP images: columns = prompt sets, bars = methods, one colour per bit setting.

    `df` is a metrics_table; the FP row, where present, is the dashed FID noise floor (PSNR skips it:
    it is unpaired). Bars carry their bootstrap interval where <metric>_lo/_hi are known. Used for the
    progressive ablation; the main figure (pcr.report.deltas) shows paired differences instead.
    """
    fp, runs = _split_fp(df, "fid_psnr_figure")
    _check_unique(runs, ["label", "bits", "prompt_set"], "fid_psnr_figure")
    prompt_sets, labels, bits = _order(runs["prompt_set"]), _order(runs["label"]), _order(runs["bits"])
    colors = _colors(bits)
    fig = Figure(figsize=(max(4.5, 0.8 * len(labels) + 1.5) * len(prompt_sets), 7.5), layout="constrained")
    axes = fig.subplots(2, len(prompt_sets), squeeze=False, sharex=True)
    for col, prompt_set in enumerate(prompt_sets):
        sub = runs[runs["prompt_set"] == prompt_set]

        def wide(column, sub=sub):
            return sub.pivot(index="label", columns="bits", values=column).reindex(index=labels, columns=bits)

        for row, metric in enumerate(["fid", "psnr"]):
            ax = axes[row, col]
            ci = (wide(f"{metric}_lo"), wide(f"{metric}_hi")) if _has_ci(sub, metric) else (None, None)
            _grouped_bars(ax, wide(metric), colors, *ci)
            if metric == "fid":
                _fp_floor(ax, fp, "fid", [prompt_set], label="FP noise floor (other seeds)")
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.set_ylabel(METRIC_LABELS[metric])
            if row == 0:
                ax.set_title(f"prompt set: {prompt_set}")
            else:
                ax.set_xlabel("method")
    handles = dict(zip(*reversed(axes[0, 0].get_legend_handles_labels())))  # label -> artist
    order = [str(b) for b in bits] + ["95% bootstrap interval", "FP noise floor (other seeds)"]
    axes[0, 0].legend([handles[k] for k in order if k in handles], [k for k in order if k in handles],
                      title="bit setting", fontsize="small")
    fig.suptitle(title or "Quantized vs FP: distance of each method's images to the FP model's images")
    return save_figure(fig, stem)


def range_drift(ranges_df: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, step): activation range width (hi - lo) on both trajectories and their relative drift.

    Columns: layer, step, fp, quantized, rel_drift = |quantized - fp| / fp (NaN where the FP width is 0).
    """
    missing = {"layer", "step", "trajectory", "lo", "hi"} - set(ranges_df.columns)
    if missing:
        raise ValueError(f"range table lacks columns {sorted(missing)}")
    width = ranges_df.assign(width=ranges_df["hi"] - ranges_df["lo"]).pivot(
        index=["layer", "step"], columns="trajectory", values="width")
    if not {"FP", "quantized"} <= set(width.columns):
        raise ValueError(f"range table needs trajectories 'FP' and 'quantized', got {list(width.columns)}")
    fp, quantized = width["FP"], width["quantized"]
    drift = (quantized - fp).abs() / fp.where(fp > 0)
    return pd.DataFrame({"fp": fp, "quantized": quantized, "rel_drift": drift}).reset_index()


def act_range_figure(ranges_df: pd.DataFrame, stem: str | os.PathLike, layers: int = 4) -> dict:
    """Per-step activation ranges on the FP vs the quantized trajectory, for the most-drifting layers.

    A layer's drift is the mean over steps of |width_q - width_fp| / width_fp (ties: layer name); the
    `layers` largest get a panel each, and a last panel shows the median drift over all layers per step.
    Returns {"paths": [png, pdf], "layers": [the layer names drawn, largest drift first]}.
    """
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    drift = range_drift(ranges_df)
    score = drift.groupby("layer")["rel_drift"].mean().sort_values(ascending=False, kind="stable")
    chosen = list(score.index[:layers])
    n = len(chosen) + 1
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, layer in zip(axes, chosen):
        d = drift[drift["layer"] == layer].sort_values("step")
        ax.plot(d["step"], d["fp"], color="C0", label="FP trajectory")
        ax.plot(d["step"], d["quantized"], color="C1", linestyle="--", label="quantized trajectory")
        ax.set_title(f"{textwrap.shorten(str(layer), 40, placeholder='…')}\nmean drift {score[layer]:.1%}",
                     fontsize="small")
        ax.set_ylabel("activation range hi − lo")
    summary = axes[len(chosen)]
    median = drift.groupby("step")["rel_drift"].median() * 100
    summary.plot(median.index, median.to_numpy(), color="k", marker=".")
    summary.set_title(f"median over all {score.size} layers", fontsize="small")
    summary.set_ylabel("|range_q − range_FP| / range_FP (%)")
    for ax in axes[: n]:
        ax.set_xlabel("sampling step (0 = pure noise)")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    if chosen:
        axes[0].legend(fontsize="small")
    fig.suptitle("Per-step activation ranges: FP vs quantized sampling trajectory")
    return {"paths": save_figure(fig, stem), "layers": chosen}


def _lines(ax, runs: pd.DataFrame, x: str, metric: str, hue: str, colors: dict, styles: dict,
           markers: dict | None = None) -> None:
    """One line per (hue, prompt set) of `metric` against `x`, sorted by x; point markers by weight
    bits if `markers` is given. An infinite value (identical images) is a "∞" at the top of the panel."""
    for (h, prompt_set), group in runs.groupby([hue, "prompt_set"], sort=False):
        group = group.sort_values(x)
        xs, y = group[x].to_numpy(), group[metric].to_numpy(float)
        finite = np.where(np.isfinite(y), y, np.nan)
        ax.plot(xs, finite, color=colors[h], linestyle=styles[prompt_set], marker=None if markers else "o")
        if markers:
            for w, m in markers.items():
                sel = (group["weight_bits"] == w).to_numpy()
                ax.plot(xs[sel], finite[sel], color=colors[h], marker=m, linestyle="none")
        for xi in xs[np.isposinf(y)]:
            ax.text(xi, 0.97, "∞", transform=ax.get_xaxis_transform(), ha="center", va="top", color=colors[h])


def _line_figure(df, x, stem, title, metrics, hue, what, by_weight_bits=False) -> list[Path]:
    fp, runs = _split_fp(df, what)
    if x not in df.columns:
        raise ValueError(f"{what}: no column {x!r} in the table (columns: {list(df.columns)})")
    runs = runs[runs[x].notna()]
    if runs.empty:
        raise ValueError(f"{what}: no quantized row has a value for {x!r}")
    _check_unique(runs, [hue, "prompt_set", "bits" if by_weight_bits else x], what)
    prompt_sets = _order(runs["prompt_set"])
    colors = _colors(_order(runs[hue]))
    styles = {p: LINESTYLES[i % len(LINESTYLES)] for i, p in enumerate(prompt_sets)}
    markers = ({w: MARKERS[i % len(MARKERS)] for i, w in enumerate(_order(runs["weight_bits"]))}
               if by_weight_bits else None)
    fig = Figure(figsize=(4.8 * len(metrics) + 1.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    floor = False
    for ax, metric in zip(axes, metrics):
        _lines(ax, runs, x, metric, hue, colors, styles, markers)
        if metric == "fid":
            floor |= _fp_floor(ax, fp, metric, prompt_sets, label_sets=len(prompt_sets) > 1)
        ax.set_xlabel(KNOB_LABELS.get(x, x))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    sections = [(HUE_TITLES.get(hue, hue), [Line2D([], [], color=c, label=str(h)) for h, c in colors.items()]),
                ("prompt set", [Line2D([], [], color="0.3", linestyle=s, label=str(p)) for p, s in styles.items()])]
    if markers:
        sections.append(("weight bits", [Line2D([], [], color="0.3", marker=m, linestyle="none", label=f"W{w}")
                                         for w, m in markers.items()]))
    if floor:
        sections.append(("FID", [Line2D([], [], label="FP noise floor", **FP_FLOOR)]))
    _legend(axes[-1], sections, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    return save_figure(fig, stem)


def sweep_figure(df: pd.DataFrame, x: str, stem: str | os.PathLike, title: str,
                 metrics=("fid", "psnr"), hue: str = "label") -> list[Path]:
    """Each metric against knob column `x` (relax_share, relax_bits, calib_size, ...): one panel per
    metric, one line per `hue` value (colour) and prompt set (line style). Rows without `x` are skipped.
    """
    return _line_figure(df, x, stem, title, list(metrics), hue, "sweep_figure")


def bits_figure(df: pd.DataFrame, stem: str | os.PathLike, title: str | None = None) -> list[Path]:
    """FID and PSNR to FP against average activation bits: one line per method (colour) and prompt set
    (line style) through its bit settings; the marker of each point gives its weight bits."""
    title = title or "Quality vs activation bits: distance to the FP images per method"
    return _line_figure(df, "avg_act_bits", stem, title, ["fid", "psnr"], "label", "bits_figure",
                        by_weight_bits=True)


def bar_figure(df: pd.DataFrame, stem: str | os.PathLike, title: str, metrics=("fid", "psnr")) -> list[Path]:
    """Grouped bars for an ablation (e.g. auto vs fixed relaxed steps): one group per prompt set (per bit
    setting and prompt set when there are several), one bar per label, one panel per metric; needs one
    row per (label, bits, prompt set)."""
    fp, runs = _split_fp(df, "bar_figure")
    _check_unique(runs, ["label", "bits", "prompt_set"], "bar_figure")
    several = runs["bits"].nunique() > 1
    runs = runs.assign(group=runs["bits"] + ", " + runs["prompt_set"] if several else runs["prompt_set"])
    set_of = dict(zip(runs["group"], runs["prompt_set"]))
    prompt_sets, labels = _order(runs["group"]), _order(runs["label"])
    colors = _colors(labels)
    fig = Figure(figsize=(max(3.5, 0.5 * len(labels) * len(prompt_sets) + 2) * len(metrics), 4.2),
                 layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]

    def wide(column):
        return runs.pivot(index="group", columns="label", values=column).reindex(index=prompt_sets, columns=labels)

    for ax, metric in zip(axes, metrics):
        ci = (wide(f"{metric}_lo"), wide(f"{metric}_hi")) if _has_ci(runs, metric) else (None, None)
        x = _grouped_bars(ax, wide(metric), colors, *ci)
        if metric == "fid":
            floor = "FP noise floor"  # labelled once, on the first group that has one
            for i, group in enumerate(prompt_sets):
                value = fp.loc[fp["prompt_set"] == set_of[group], "fid"].to_numpy(float)
                if value.size and np.isfinite(value[0]):
                    ax.hlines(value[0], x[i] - 0.45, x[i] + 0.45, label=floor, **FP_FLOOR)
                    floor = None
        ax.set_xlabel("bit setting, prompt set" if several else "prompt set")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    # one legend for every panel's artists (the floor is on the FID panel, intervals where drawn): labels
    # first, then the interval and the floor
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    order = [k for k in labels if k in handles] + sorted((k for k in handles if k not in labels),
                                                         key=lambda k: k.startswith("FP"))
    axes[-1].legend([handles[k] for k in order], order, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    return save_figure(fig, stem)
