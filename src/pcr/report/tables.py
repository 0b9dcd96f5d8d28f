"""Result files -> pandas tables.

One tidy row per metrics JSON is the single source every table and figure is drawn from, so a number
in the paper table and a bar in a figure can never disagree. Only result files are read here: no model
code is imported, so reports can be rebuilt on a machine without torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pcr.io import atomic_file

__all__ = ["BASE_COLUMNS", "main_table", "metrics_table", "read_metrics_json", "to_markdown", "write_table"]

# Fixed leading columns of metrics_table; knob columns and `source` follow them.
BASE_COLUMNS = [
    "variant", "label", "method", "bits", "weight_bits", "act_bits", "prompt_set", "prompt_spec",
    "n_images", "fid", "fid_lo", "fid_hi", "kid", "clip_score", "clip_lo", "clip_hi", "clip_score_fp",
    "psnr", "ssim", "paired", "avg_act_bits", "weight_mb", "bitops_ratio", "quant_config_hash",
]  # fmt: skip

# Metrics of the paper table, in column order.
MAIN_METRICS = ["fid", "psnr", "ssim", "clip_score"]

_NON_FINITE = ("inf", "-inf", "nan")


def _decode(value):
    """Undo pcr.bench.write_metrics' encoding of non-finite floats as strings (JSON has no inf/nan)."""
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return float(value) if value in _NON_FINITE else value


def read_metrics_json(path: str | os.PathLike) -> dict:
    """Read one metrics JSON; "inf"/"-inf"/"nan" strings in its `metrics` and `cost` blocks become floats.

    Only the numeric blocks are decoded, so a label or prompt set that happens to read "nan" stays text.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for block in ("metrics", "cost"):
        if isinstance(data.get(block), dict):
            data[block] = _decode(data[block])
    return data


def _num(value) -> float:
    """A float, or NaN for a missing/null value (so numeric columns stay numeric)."""
    return np.nan if value is None else float(value)


def _interval(value) -> tuple[float, float]:
    if value is None:
        return np.nan, np.nan
    lo, hi = value
    return _num(lo), _num(hi)


def _knob_value(value):
    # A list knob (e.g. relax_ratio: [0.8, 1.0]) is kept as its JSON text: a cell must stay flat and
    # survive a CSV round trip unchanged.
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _row(path: Path) -> tuple[dict, dict]:
    data = read_metrics_json(path)
    missing = [block for block in ("run", "metrics") if not isinstance(data.get(block), dict)]
    if missing:
        raise ValueError(f"{path}: no {' and no '.join(repr(m) for m in missing)} block; "
                         "was it written by the workflow's evaluate rule?")
    run, metrics = data["run"], data["metrics"]
    prov, cost = data.get("provenance") or {}, data.get("cost") or {}
    fid_lo, fid_hi = _interval(metrics.get("fid_ci95"))
    clip_lo, clip_hi = _interval(metrics.get("clip_score_ci95"))
    row = {
        "variant": run.get("variant"),
        "label": run.get("label"),
        "method": run.get("method"),
        "bits": run.get("bits"),
        "weight_bits": run.get("weight_bits"),
        "act_bits": run.get("act_bits"),
        "prompt_set": run.get("prompt_set"),
        "prompt_spec": run.get("prompt_spec"),
        "n_images": prov.get("n_images"),
        "fid": _num(metrics.get("fid")),
        "fid_lo": fid_lo,
        "fid_hi": fid_hi,
        "kid": _num(metrics.get("kid")),
        "clip_score": _num(metrics.get("clip_score")),
        "clip_lo": clip_lo,
        "clip_hi": clip_hi,
        "clip_score_fp": _num(metrics.get("clip_score_reference")),
        "psnr": _num(metrics.get("psnr")),
        "ssim": _num(metrics.get("ssim")),
        "paired": metrics.get("paired"),
        "avg_act_bits": _num(cost.get("avg_act_bits")),
        "weight_mb": _num(cost.get("weight_mb_packed")),
        "bitops_ratio": _num(cost.get("bitops_ratio")),
        "quant_config_hash": prov.get("quant_config_hash"),
    }
    knobs = run.get("knobs") or {}
    clash = sorted(set(knobs) & (set(BASE_COLUMNS) | {"source"}))
    if clash:
        raise ValueError(f"{path}: run.knobs {clash} would overwrite table columns of the same name")
    return row, {k: _knob_value(v) for k, v in knobs.items()}


def metrics_table(paths) -> pd.DataFrame:
    """One tidy row per metrics JSON, in input order (the caller decides the order).

    Columns: BASE_COLUMNS, then one column per knob key seen in any file (first-seen order, NaN where a
    file lacks it; list knobs as JSON text), then `source` (the path). Missing optional values are NaN.
    Raises ValueError naming the file when it has no `run` or no `metrics` block.
    """
    rows, knob_keys = [], {}
    for path in paths:
        row, knobs = _row(Path(path))
        knob_keys.update(dict.fromkeys(knobs))
        rows.append((row, knobs, str(path)))
    records = [{**row, **{k: knobs.get(k, np.nan) for k in knob_keys}, "source": source}
               for row, knobs, source in rows]
    return pd.DataFrame.from_records(records, columns=[*BASE_COLUMNS, *knob_keys, "source"])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (its index is not written); floats to 4 significant digits."""
    header = [_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, csv_path: str | os.PathLike,
                markdown_path: str | os.PathLike | None = None) -> list[Path]:
    """Write `df` as CSV (no index) and, if asked, as Markdown, each atomically; returns the paths written.

    Atomic so a killed report job never leaves a truncated table that a rerun (or the notebook) trusts.
    """
    written = []
    with atomic_file(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    written.append(Path(csv_path))
    if markdown_path is not None:
        with atomic_file(markdown_path) as tmp:
            tmp.write_text(to_markdown(df))
        written.append(Path(markdown_path))
    return written


def main_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper table: one row per (label, bits), in the order first seen in `df`.

    Columns: label, bits, then "<metric>[<prompt set>]" for each prompt set (first-seen order) and metric
    (fid, psnr, ssim, clip_score), then avg_act_bits. FID/PSNR/SSIM are measured against the FP images.
    Raises ValueError if `df` has two rows for one (label, bits, prompt set).
    """
    keys = ["label", "bits"]
    wide = df.pivot(index=keys, columns="prompt_set", values=MAIN_METRICS)  # raises on duplicates
    prompt_sets = list(dict.fromkeys(df["prompt_set"]))
    order = pd.MultiIndex.from_frame(df[keys].drop_duplicates())
    columns = [(metric, prompt_set) for prompt_set in prompt_sets for metric in MAIN_METRICS]
    wide = wide.reindex(index=order, columns=pd.MultiIndex.from_tuples(columns))
    wide.columns = [f"{metric}[{prompt_set}]" for metric, prompt_set in columns]
    bits = df.groupby(keys, sort=False)["avg_act_bits"].first().reindex(order)
    return wide.assign(avg_act_bits=bits).reset_index()
