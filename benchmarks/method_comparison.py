"""Every activation-calibration method on the toy model: final-image error against the FP model.

Calibrates on toy `calib` prompts, samples toy `eval_in` prompts with fixed seeds with the FP and
each quantized model, and reports the PSNR (dB, higher is better) of the quantized images against
the FP images of the same prompt and seed. Also measures how far the activation ranges observed on
the quantized trajectory (progressive) drift from those on the FP trajectory (perstep).

    python benchmarks/method_comparison.py --model results/toy/model

Writes benchmarks/results/method_comparison.{csv,json}; a rerun skips rows already there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pcr
import pcr.report
from pcr.calibrate import calibrate
from pcr.pipelines import load_pipeline
from pcr.pipelines.sampling import final_images
from pcr.quant import QuantConfig, unquantize_unet
from pcr.quant.params import trajectory_ranges
from pcr.runtime import use_available_cpus
from pcr.toy.world import toy_prompts

OUT = Path(__file__).parent / "results"
METHODS = ["naive", "qdiff", "ptq4dm", "perstep", "progressive"]


def rows(steps: int) -> list[tuple[str, dict]]:
    """(setting, config changes) of every row, in the order they are run."""
    first, last = (0.0, 0.2), (0.8, 1.0)
    out = []
    for w, a in [(8, 8), (4, 8), (4, 6)]:
        setting = f"W{w}A{a}"
        out += [(setting, dict(weight_bits=w, act_bits=a, method=m)) for m in METHODS]
        for name, extra in [("first 20%", dict(relax_interval=first)), ("last 20%", dict(relax_interval=last)),
                            ("auto", dict(relax_auto_bits=a + 0.2 * (10 - a)))]:
            out.append((setting, dict(weight_bits=w, act_bits=a, method="progressive", **extra,
                                      label=f"+relax {name}")))
        out.append((setting, dict(weight_bits=w, act_bits=a, method="perstep", relax_interval=first,
                                  label="+relax first 20%")))
    # equal average bits: A6 relaxed on 20% of steps averages 6.8 bits, less than A7 everywhere
    out += [("W4A7", dict(weight_bits=4, act_bits=7, method=m)) for m in ("perstep", "progressive")]
    for observer in ("minmax", "percentile", "mse"):  # the observers, on the setting where methods separate
        for m in ("perstep", "progressive"):
            out.append(("W4A6", dict(weight_bits=4, act_bits=6, method=m, observer=observer, label=f"obs={observer}")))
    return out


def psnr(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR in dB (images in [0, 1]) and the overall MSE."""
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp(min=1e-12))).mean().item(), mse.mean().item()


def range_drift(perstep, progressive) -> dict:
    """Relative difference of each layer's per-step range (hi - lo) between the two trajectories:
    pcr.report.range_drift (the workflow's act_ranges figure), summarised over layers and steps."""
    table = pcr.report.range_drift(pd.DataFrame(trajectory_ranges(perstep, progressive)))
    drift = table.pivot(index="layer", columns="step", values="rel_drift").to_numpy()  # (layers, steps)

    def median(axis=None):  # the lower of the two middle values, as torch.median
        return np.nanquantile(drift, 0.5, axis=axis, method="lower")

    return {"median_all": float(median()), "max_all": float(np.nanmax(drift)),
            "median_per_step": [round(v, 4) for v in median(0).tolist()],
            "max_per_step": [round(v, 4) for v in np.nanmax(drift, 0).tolist()]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/toy/model")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--adaround-iters", type=int, default=300)
    args = parser.parse_args()
    use_available_cpus()
    OUT.mkdir(exist_ok=True)
    csv_path, json_path = OUT / "method_comparison.csv", OUT / "method_comparison.json"
    done = pd.read_csv(csv_path).to_dict("records") if csv_path.exists() else []
    extra = json.loads(json_path.read_text()) if json_path.exists() else {}

    pipe = load_pipeline(f"toy:{args.model}")
    calib = [p.text for p in toy_prompts("calib", args.calib, seed=0)]
    evaluation = [p.text for p in toy_prompts("eval_in", args.eval, seed=0)]
    seeds = [10_000 + i for i in range(len(evaluation))]
    base = QuantConfig(num_steps=args.steps, guidance_scale=args.guidance, batch_size=16, seed=0)
    fp = final_images(pipe, evaluation, seeds, args.steps, args.guidance, batch_size=16)
    weights: dict[int, object] = {}
    kept: dict[str, object] = {}

    todo = rows(args.steps) + [("W4A8", dict(weight_bits=4, act_bits=8, method="progressive", weight_method="adaround",
                                             weight_iters=args.adaround_iters, label="+AdaRound"))]
    for setting, changes in todo:
        label = changes.pop("label", "")
        name = f"{changes['method']} {label}".strip()
        if any(r["setting"] == setting and r["method"] == name for r in done):
            continue
        config = base.replace(**changes)
        start = time.perf_counter()
        reuse = weights.get(config.weight_bits) if config.weight_method == "minmax" else None
        params = calibrate(pipe, calib, config, model=f"toy:{args.model}", weights=reuse, progress=False)
        seconds = time.perf_counter() - start
        if config.weight_method == "minmax":
            weights.setdefault(config.weight_bits, params)
        pcr.quantize(pipe, params)
        out = final_images(pipe, evaluation, seeds, args.steps, args.guidance, batch_size=16)
        unquantize_unet(pipe.unet)
        db, mse = psnr(out, fp)
        row = {"setting": setting, "method": name, "psnr_db": round(db, 2), "mse": mse,
               "avg_act_bits": params.avg_act_bits, "calib_seconds": round(seconds, 1),
               "relaxed_steps": " ".join(str(s) for s, b in enumerate(params.act_bits) if b > config.act_bits)}
        done.append(row)
        print(f"{setting:5s} {name:32s} {db:6.2f} dB  avg bits {params.avg_act_bits:.2f}  {seconds:5.1f}s", flush=True)
        if setting == "W4A6" and label == "" and config.method in ("perstep", "progressive"):
            kept[config.method] = params
        if "relax_auto" in params.info:
            extra.setdefault("relax_auto", {})[setting] = params.info["relax_auto"]
        if "adaround_unit_error" in params.info:
            extra["adaround_unit_error"] = params.info["adaround_unit_error"]
        pd.DataFrame(done).to_csv(csv_path, index=False)
        json_path.write_text(json.dumps(extra, indent=1))
    if "range_drift_W4A6_ema" not in extra:
        for method in ("perstep", "progressive"):  # rows done in an earlier run: calibrate them again
            if method not in kept:
                config = base.replace(weight_bits=4, act_bits=6, method=method)
                kept[method] = calibrate(pipe, calib, config, weights=weights.get(4), progress=False)
        extra["range_drift_W4A6_ema"] = range_drift(kept["perstep"], kept["progressive"])
        json_path.write_text(json.dumps(extra, indent=1))
    table = pd.DataFrame(done).pivot_table(index="method", columns="setting", values="psnr_db", sort=False)
    print("\nPSNR against the FP model's images (dB, higher is better)\n")
    print(table.to_string())
    if "range_drift_W4A6_ema" in extra:
        print("\nrange drift, quantized vs FP trajectory:", extra["range_drift_W4A6_ema"])


if __name__ == "__main__":
    main()
