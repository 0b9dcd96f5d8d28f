"""Result files -> pandas tables.

One tidy row per metrics JSON is the single source every table and figure is drawn from, so a number
in the paper table and a bar in a figure can never disagree; delta_table adds each method's paired
difference to a baseline method, from the per-image values the metrics JSONs keep. Only result files
are read here: no model code is imported, so reports can be rebuilt on a machine without torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pcr.io import atomic_file

__all__ = ["BASE_COLUMNS", "DELTA_COLUMNS", "delta_table", "main_table", "metrics_table", "paired_deltas",
           "read_metrics_json", "to_markdown", "write_delta_table", "write_table"]

# Fixed leading columns of metrics_table; knob columns and `source` follow them. clip_lo/clip_hi are
# the spread of the prompts' CLIP scores; clip_score_delta (quantized image's score minus its FP
# image's, paired by prompt) with clip_delta_lo/hi is the method's effect on CLIP score.
BASE_COLUMNS = [
    "variant", "label", "method", "bits", "weight_bits", "act_bits", "prompt_set", "prompt_spec",
    "n_images", "fid", "fid_lo", "fid_hi", "kid", "clip_score", "clip_lo", "clip_hi", "clip_score_fp",
    "clip_score_delta", "clip_delta_lo", "clip_delta_hi", "psnr", "psnr_lo", "psnr_hi", "ssim", "ssim_lo",
    "ssim_hi", "paired", "avg_act_bits", "weight_mb", "bitops_ratio", "backend", "seconds_per_image",
    "speedup_vs_fp", "unet_weight_mb", "unet_weight_ratio", "quant_config_hash",
]  # fmt: skip

# Metrics of the paper table, in column order.
MAIN_METRICS = ["fid", "psnr", "ssim", "clip_score"]
MEASURED = ["speedup_vs_fp", "unet_weight_ratio"]  # measured costs the paper table adds where they exist

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
    # A list knob (e.g. relax_interval: [0.8, 1.0]) is kept as its JSON text: a cell must stay flat and
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
    measured = cost.get("measured") or {}
    fid_lo, fid_hi = _interval(metrics.get("fid_ci95"))
    clip_lo, clip_hi = _interval(metrics.get("clip_score_ci95"))
    delta_lo, delta_hi = _interval(metrics.get("clip_score_delta_ci95"))
    psnr_lo, psnr_hi = _interval(metrics.get("psnr_ci95"))
    ssim_lo, ssim_hi = _interval(metrics.get("ssim_ci95"))
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
        "clip_score_delta": _num(metrics.get("clip_score_delta")),
        "clip_delta_lo": delta_lo,
        "clip_delta_hi": delta_hi,
        "psnr": _num(metrics.get("psnr")),
        "psnr_lo": psnr_lo,
        "psnr_hi": psnr_hi,
        "ssim": _num(metrics.get("ssim")),
        "ssim_lo": ssim_lo,
        "ssim_hi": ssim_hi,
        "paired": metrics.get("paired"),
        "avg_act_bits": _num(cost.get("avg_act_bits")),
        "weight_mb": _num(cost.get("weight_mb_packed")),
        "bitops_ratio": _num(cost.get("bitops_ratio")),
        "backend": run.get("backend", "fp" if run.get("method") == "fp" else "simulated"),
        "seconds_per_image": _num(measured.get("seconds_per_image")),  # measured by the generation job
        "speedup_vs_fp": _num(measured.get("speedup_vs_fp")),
        "unet_weight_mb": _num(measured.get("unet_weight_mb")),  # resident, as the backend holds it
        "unet_weight_ratio": _num(measured.get("unet_weight_ratio")),
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
    (fid, psnr, ssim, clip_score), then avg_act_bits and, where the generation jobs measured them, the
    sampling speed-up and the UNet's weight memory against FP (means over the prompt sets' folders).
    FID/PSNR/SSIM are measured against the FP images.
    Raises ValueError if `df` has two rows for one (label, bits, prompt set).
    """
    keys = ["label", "bits"]
    wide = df.pivot(index=keys, columns="prompt_set", values=MAIN_METRICS)  # raises on duplicates
    prompt_sets = list(dict.fromkeys(df["prompt_set"]))
    order = pd.MultiIndex.from_frame(df[keys].drop_duplicates())
    columns = [(metric, prompt_set) for prompt_set in prompt_sets for metric in MAIN_METRICS]
    wide = wide.reindex(index=order, columns=pd.MultiIndex.from_tuples(columns))
    wide.columns = [f"{metric}[{prompt_set}]" for metric, prompt_set in columns]
    groups = df.groupby(keys, sort=False)
    wide = wide.assign(avg_act_bits=groups["avg_act_bits"].first().reindex(order))
    for column in MEASURED:
        if column in df and df[column].notna().any():
            wide[column] = groups[column].mean().reindex(order)
    return wide.reset_index()


# -- paired differences against a baseline method ----------------------------------------------------
DELTA_METRICS = ("psnr", "ssim", "clip_score")
# Columns of delta_table, in order.
DELTA_COLUMNS = [
    "variant", "label", "method", "bits", "prompt_set", "n_images", "baseline_variant", "baseline_label",
    *[f"delta_{m}{end}" for m in DELTA_METRICS for end in ("", "_lo", "_hi")],
    "fid", "fid_lo", "fid_hi", "psnr", "ssim", "clip_score", "source",
]  # fmt: skip
PER_IMAGE = ("psnr", "ssim", "clip_score")  # metrics["per_image"] lists a delta needs


def _per_image(path, data: dict) -> dict[str, np.ndarray]:
    """The per-image lists of one metrics file, checked against its image count."""
    values = data["metrics"].get("per_image")
    n = (data.get("provenance") or {}).get("n_images")
    if not isinstance(values, dict) or any(k not in values for k in PER_IMAGE):
        raise ValueError(f"{path}: no metrics.per_image lists {list(PER_IMAGE)}; it was written before pcr.bench "
                         "kept them: rerun its metrics job (snakemake --forcerun metrics)")
    out = {k: np.asarray(values[k], dtype=float) for k in PER_IMAGE}
    if any(v.shape != (n,) for v in out.values()):
        raise ValueError(f"{path}: metrics.per_image lists do not have n_images = {n} values")
    return out


def _check_same_images(path, base_path, prov: dict, base_prov: dict) -> None:
    """A paired difference needs the same prompts and seeds, image by image."""
    for key in ("n_images", "prompts_sha256"):
        if prov.get(key) is None or base_prov.get(key) is None:
            raise ValueError(f"{path} or {base_path}: no provenance.{key}, so the images cannot be checked to "
                             "pair up with the baseline's")
    differ = [k for k in ("n_images", "prompts_sha256", "seeds")
              if prov.get(k) is not None and base_prov.get(k) is not None and prov[k] != base_prov[k]]
    if differ:
        raise ValueError(f"{path} and the baseline {base_path} were measured on different images ({differ} "
                         "differ): a paired difference needs the same prompts and seeds")


def _ratio_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den), 0 where they are equal (both 0: both methods reproduce FP exactly)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num == den, 0.0, 10 * np.log10(num / den))


def _interval95(values: np.ndarray) -> tuple[float, float]:
    # "nearest" where a resample is infinite (linear interpolation would give inf - inf = nan)
    method = "linear" if np.isfinite(values).all() else "nearest"
    lo, hi = np.percentile(values, [2.5, 97.5], method=method)
    return float(lo), float(hi)


def paired_deltas(run: dict, base: dict, resamples: int = 1000, seed: int = 0) -> dict:
    """run - base of pooled PSNR, mean SSIM and mean CLIP score, per-image lists paired by index, each
    with a 95% interval from one paired bootstrap (the same image indices for both).

    PSNR is the difference of the pooled-MSE PSNRs, 10 log10(MSE_base / MSE_run): finite when some
    images are identical to FP (MSE 0), where the mean per-image PSNR difference is inf - inf."""
    n = len(run["psnr"])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    mse_run, mse_base = (255.0**2 / 10 ** (d["psnr"] / 10) for d in (run, base))  # inf dB -> 0
    out = {"delta_psnr": float(_ratio_db(mse_base.mean(), mse_run.mean())),
           "delta_psnr_boot": _ratio_db(mse_base[idx].mean(1), mse_run[idx].mean(1))}
    for metric in ("ssim", "clip_score"):
        diff = run[metric] - base[metric]
        out[f"delta_{metric}"], out[f"delta_{metric}_boot"] = float(diff.mean()), diff[idx].mean(1)
    for metric in DELTA_METRICS:
        boot = out.pop(f"delta_{metric}_boot")
        out[f"delta_{metric}_lo"], out[f"delta_{metric}_hi"] = _interval95(boot) if resamples else (np.nan,) * 2
    return out


def _baselines(df: pd.DataFrame, baseline: str) -> dict:
    """(bits, prompt set) -> row index of the baseline, matched by variant name, else by label."""
    chosen = df.index[df["variant"] == baseline]
    if chosen.empty:
        chosen = df.index[df["label"] == baseline]
    if chosen.empty:
        raise ValueError(f"baseline {baseline!r} is neither the variant nor the label of any row; variants: "
                         f"{sorted(set(df['variant'].dropna()))}, labels: {sorted(set(df['label'].dropna()))}")
    keys = list(zip(df.loc[chosen, "bits"], df.loc[chosen, "prompt_set"]))
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"baseline {baseline!r} has several rows for (bits, prompt set) {twice}")
    return dict(zip(keys, chosen))


def delta_table(paths, baseline: str, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired differences method - `baseline` (a run's variant name or label) of PSNR, SSIM and CLIP
    score, image by image, with paired bootstrap 95% intervals (see paired_deltas), plus each row's
    FID to FP and its interval: columns DELTA_COLUMNS, rows in input order.

    A row is kept when its (bits, prompt set) has a baseline row (the baseline's own row has deltas 0);
    the FP noise-floor rows (method "fp") are kept with empty deltas, for their FID. Raises ValueError
    when a row and its baseline were measured on other prompts or seeds, or lack per-image values."""
    paths = [Path(p) for p in paths]
    df = metrics_table(paths)
    docs = [read_metrics_json(p) for p in paths]
    bases = _baselines(df, baseline)
    rows = []
    for i, row in df.iterrows():
        b = bases.get((row["bits"], row["prompt_set"]))
        if b is None and row["method"] != "fp":
            continue
        out = {c: row[c] for c in ("variant", "label", "method", "bits", "prompt_set", "n_images", "fid", "fid_lo",
                                   "fid_hi", "psnr", "ssim", "clip_score", "source")}
        if b is not None:
            out.update(baseline_variant=df.at[b, "variant"], baseline_label=df.at[b, "label"])
            _check_same_images(paths[i], paths[b], docs[i].get("provenance") or {}, docs[b].get("provenance") or {})
            out.update(paired_deltas(_per_image(paths[i], docs[i]), _per_image(paths[b], docs[b]), resamples, seed))
        rows.append(out)
    return pd.DataFrame.from_records(rows, columns=DELTA_COLUMNS)


def write_delta_table(paths, baseline: str, csv_path: str | os.PathLike,
                      markdown_path: str | os.PathLike | None = None) -> list[Path]:
    """delta_table(paths, baseline) written as CSV (and Markdown): what the main figure reads."""
    return write_table(delta_table(list(paths), baseline), csv_path, markdown_path)
