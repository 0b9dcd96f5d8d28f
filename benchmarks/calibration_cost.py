"""What calibration and simulated quantization cost on the toy model, as ratios measured in one run.

- time of one-pass progressive activation calibration / time of one FP sampling pass over the same
  calibration prompts (goal <= 3), beside the reference re-run form's ratio (about (N + 1) / 2 + 1);
- time of fake-quantized sampling / FP sampling (goal <= 1.5);
- peak memory of calibration / peak memory of FP sampling (goal <= 1.5), at P and 2P prompts
  (flat: observers keep ranges or histograms, never activations).

Weights are calibrated first (min-max) and timed apart. Memory is the growth of the process's
resident set over its size before the measured call, in a fresh subprocess per measurement
(``--memory-only`` skips the timings).

    python benchmarks/calibration_cost.py --model results/toy/model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from _measure import MALLOC_ENV, PeakRSS, timed  # beside this script

import pcr
from pcr.calibrate.progressive import calibrate_activations, calibrate_progressive_rerun
from pcr.calibrate.weights import calibrate_weights
from pcr.pipelines import load_pipeline
from pcr.pipelines.sampling import sample_latents
from pcr.quant import QuantConfig, quantize_unet, unquantize_unet
from pcr.runtime import use_available_cpus
from pcr.toy.world import toy_prompts

OUT = Path(__file__).parent / "results"


def setup(args, prompts: int):
    pipe = load_pipeline(f"toy:{args.model}")
    texts = [p.text for p in toy_prompts("calib", prompts, seed=0)]
    config = QuantConfig(method="progressive", num_steps=args.steps, guidance_scale=args.guidance,
                         batch_size=args.batch, seed=0)
    return pipe, texts, list(range(len(texts))), config


def fp_sampling(pipe, texts, seeds, config) -> None:
    for i in range(0, len(texts), config.batch_size):
        sample_latents(pipe, texts[i:i + config.batch_size], seeds[i:i + config.batch_size], config.num_steps,
                       config.guidance_scale)


def measure_memory(args) -> None:
    """Child process: one measurement, printed as JSON."""
    pipe, texts, seeds, config = setup(args, args.prompts)
    fp_sampling(pipe, texts[:1], seeds[:1], config.replace(num_steps=2))  # warm up allocator and kernels
    if args.measure == "calib":
        layers = quantize_unet(pipe.unet, config, config.num_steps, cache_weights=False)  # DDIM: a call per step
        calibrate_weights(layers, "minmax", progress=False)
        with PeakRSS() as peak:
            calibrate_activations(pipe, layers, texts, seeds, config, config.act_bits_per_step(), progress=False)
    else:
        with PeakRSS() as peak:
            fp_sampling(pipe, texts, seeds, config)
    print(json.dumps({"growth_mb": peak.growth_mb}))


def child(args, measure: str, prompts: int) -> float:
    cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--guidance",
           str(args.guidance), "--batch", str(args.batch), "--measure", measure, "--prompts", str(prompts)]
    env = {**os.environ, **MALLOC_ENV}  # a fixed mmap threshold: see _measure.py
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["growth_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/toy/model")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--measure", choices=["fp", "calib"], help=argparse.SUPPRESS)
    parser.add_argument("--no-rerun", action="store_true", help="skip timing the re-run form (slow)")
    parser.add_argument("--memory-only", action="store_true", help="measure memory only")
    args = parser.parse_args()
    use_available_cpus()
    if args.measure:
        return measure_memory(args)

    memory = {"fp": child(args, "fp", args.prompts), "calib": child(args, "calib", args.prompts),
              "fp_2x": child(args, "fp", 2 * args.prompts), "calib_2x": child(args, "calib", 2 * args.prompts)}
    print(json.dumps({"memory_growth_mb": memory}), flush=True)
    if args.memory_only:
        return
    pipe, texts, seeds, config = setup(args, args.prompts)
    fp_sampling(pipe, texts[:1], seeds[:1], config.replace(num_steps=2))  # warm-up
    with torch.no_grad():
        fp = timed(fp_sampling, pipe, texts, seeds, config)
        layers = quantize_unet(pipe.unet, config, config.num_steps, cache_weights=False)  # DDIM: a call per step
        weights = timed(calibrate_weights, layers, "minmax", progress=False)
        one_pass = timed(calibrate_activations, pipe, layers, texts, seeds, config, config.act_bits_per_step(),
                         progress=False)
        rerun = None if args.no_rerun else timed(calibrate_progressive_rerun, pipe, layers, texts, seeds, config,
                                                  config.act_bits_per_step(), progress=False)
        unquantize_unet(pipe.unet)
    params = pcr.calibrate.calibrate(pipe, texts, config, progress=False)
    pcr.quantize(pipe, params)
    fake_quant = timed(fp_sampling, pipe, texts, seeds, config)
    unquantize_unet(pipe.unet)
    fp_again = timed(fp_sampling, pipe, texts, seeds, config)  # FP timed on both sides of the others

    fp_mean = (fp + fp_again) / 2
    n = args.steps
    result = {
        "setup": vars(args) | {"threads": torch.get_num_threads(), "device": "cpu"},
        "seconds": {"fp_sampling": [round(fp, 2), round(fp_again, 2)], "weights_minmax": round(weights, 2),
                    "progressive_one_pass": round(one_pass, 2), "progressive_rerun": rerun and round(rerun, 2),
                    "fake_quant_sampling": round(fake_quant, 2)},
        "ratios": {
            "one_pass_calibration / fp_sampling (goal <= 3)": round(one_pass / fp_mean, 2),
            "rerun_calibration / fp_sampling (expected ~ (N+1)/2 + 1 = %.1f)" % ((n + 1) / 2 + 1):
                rerun and round(rerun / fp_mean, 2),
            "fake_quant_sampling / fp_sampling (goal <= 1.5)": round(fake_quant / fp_mean, 2),
            "calibration_peak / fp_sampling_peak (goal <= 1.5)": round(memory["calib"] / memory["fp"], 2),
            "calibration_peak 2P / P prompts (flat ~ 1)": round(memory["calib_2x"] / memory["calib"], 2),
        },
        "memory_growth_mb": {k: round(v, 1) for k, v in memory.items()},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "calibration_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
