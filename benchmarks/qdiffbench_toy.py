"""QDiffBench on the toy model: FP and quantized images of held-out prompts, their metrics and costs.

Why: a quantized model is judged by how far its images move from the full-precision (FP) model's,
and those numbers only mean something beside a floor and a trend. So this script calibrates
W8A8, W4A8 and W4A6 (progressive) on toy `calib` prompts, samples the disjoint `eval_in` and
`eval_out` prompts with the FP and each quantized model from the same seeds (images pair up by
prompt index), and evaluates every folder against the FP one: FID/KID (toy CLIP features), CLIP
score, paired PSNR/SSIM, plus average activation bits, packed weight size and BitOPs. The floor is
the FP model sampled again from other seeds ("fp-reseeded"): its FID to FP is what sampling noise
alone gives. The checks printed at the end say whether fewer bits do worse.

    python benchmarks/qdiffbench_toy.py --model results/toy/model --clip results/toy/clip

Writes under --out (default benchmarks/results/qdiffbench_toy): params/<model>.safetensors,
images/<model>/<set>/, metrics/<model>.<set>.json (with the cost), table.csv and table.md.
A rerun skips calibrations, images and metrics already there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import pcr
from pcr.bench import (
    MetricsConfig,
    check_disjoint,
    cost_report,
    evaluate,
    generate,
    load_prompts,
    read_metrics,
    write_metrics,
)
from pcr.calibrate import calibrate
from pcr.pipelines import load_pipeline
from pcr.quant import QuantConfig, load_params, save_params, unquantize_unet
from pcr.runtime import use_available_cpus

SETS = ("eval_in", "eval_out")
QUANTIZED = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A6": (4, 6)}
RESEED = 100_000  # fp-reseeded samples from seed + RESEED + i instead of seed + i
BATCH = 16


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/toy/model")
    parser.add_argument("--clip", default="results/toy/clip")
    parser.add_argument("--n", type=int, default=64, help="images per evaluation prompt set")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--calib", type=int, default=32, help="calibration prompts")
    parser.add_argument("--out", default="benchmarks/results/qdiffbench_toy")
    parser.add_argument("--seed", type=int, default=0, help="prompt draws, calibration and image seeds")
    args = parser.parse_args()
    use_available_cpus()
    out, spec = Path(args.out), f"toy:{args.model}"
    for sub in ("params", "images", "metrics"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    calib = load_prompts("toy:calib", n=args.calib, seed=args.seed)
    sets = {s: load_prompts(f"toy:{s}", n=args.n, seed=args.seed) for s in SETS}
    for prompts in sets.values():
        check_disjoint(calib, prompts)
    metrics_cfg = MetricsConfig.toy(args.clip, seed=args.seed)
    pipe = load_pipeline(spec)

    def images(model: str, s: str) -> Path:
        return out / "images" / model / s

    def metrics(model: str, s: str) -> Path:
        return out / "metrics" / f"{model}.{s}.json"

    def sample(model: str, seed: int, config_hash: str | None = None) -> None:
        for s, prompts in sets.items():
            generate(pipe, prompts, images(model, s), seed=seed, batch_size=BATCH, num_inference_steps=args.steps,
                     guidance_scale=args.guidance,
                     info={"model": spec, "quant_config_hash": config_hash, "prompt_set": prompts.name})

    sample("fp", args.seed)
    sample("fp-reseeded", args.seed + RESEED)
    fp_cost = {"avg_act_bits": 32.0, "weight_mb_packed": sum(p.numel() for p in pipe.unet.parameters()) * 4 / 2**20,
               "bitops_ratio": 1.0, "note": "full precision (FP32)"}
    for s, prompts in sets.items():
        if not metrics("fp-reseeded", s).exists():
            # other seeds than the reference: FID's floor from sampling alone; PSNR/SSIM are unpaired
            result = evaluate(images("fp-reseeded", s), images("fp", s), prompts, metrics_cfg, paired=False)
            write_metrics(metrics("fp-reseeded", s), {**result, "cost": fp_cost})

    base = QuantConfig(method="progressive", num_steps=args.steps, guidance_scale=args.guidance,
                       batch_size=BATCH, seed=args.seed)
    for name, (w, a) in QUANTIZED.items():
        if all(metrics(name, s).exists() for s in SETS):
            continue
        config, path = base.replace(weight_bits=w, act_bits=a), out / "params" / f"{name}.safetensors"
        if path.exists():
            params = load_params(path)
            if params.config != config:
                sys.exit(f"{path} was calibrated with another config ({params.config}); delete it or use another --out")
        else:
            print(f"calibrating {name} on {len(calib)} prompts", flush=True)
            params = calibrate(pipe, list(calib), config, model=spec)
            save_params(path, params)
        cost = cost_report(pipe.unet, params.config, params.act_bits)  # on the FP UNet, before quantizing
        pcr.quantize(pipe, params)
        try:
            sample(name, args.seed, config.digest())
        finally:
            unquantize_unet(pipe.unet)
        for s, prompts in sets.items():
            if not metrics(name, s).exists():
                result = evaluate(images(name, s), images("fp", s), prompts, metrics_cfg)
                write_metrics(metrics(name, s), {**result, "cost": cost})

    rows = []
    for model in ("fp-reseeded", *QUANTIZED):
        for s in SETS:
            m = read_metrics(metrics(model, s))
            r, c = m["metrics"], m["cost"]
            rows.append({"model": model, "set": s, "FID to FP": r["fid"], "KID x1000": 1000 * r["kid"],
                         "CLIP": r["clip_score"], "CLIP (FP)": r["clip_score_reference"], "PSNR": r["psnr"],
                         "SSIM": r["ssim"], "avg act bits": c["avg_act_bits"], "weight MB": c["weight_mb_packed"],
                         "BitOPs ratio": c["bitops_ratio"]})
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False)
    command = f"python benchmarks/qdiffbench_toy.py {' '.join(sys.argv[1:])}".strip()
    lines = [f"`{command}`", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"\nQDiffBench, toy model: {args.n} images per set, {args.steps} steps, guidance {args.guidance}; "
          f"every row against the FP model's images\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nfp-reseeded is the FP model from seeds seed+{RESEED}+i: its FID to FP is the floor from sampling "
          "noise alone (identical folders give 0). Its PSNR/SSIM are low because its images start from other "
          "noise; the quantized models share the FP seeds, so their PSNR/SSIM measure quantization error only, "
          "and their FID can fall below the floor.\n")

    def check(text: str, holds: bool) -> None:
        print(f"  [{'ok' if holds else 'DOES NOT HOLD'}] {text}")

    get = table.set_index(["model", "set"])
    print("sanity checks")
    for s in SETS:
        fid, psnr = get.xs(s, level="set")["FID to FP"], get.xs(s, level="set")["PSNR"]
        check(f"{s}: fp-reseeded FID to FP {fid['fp-reseeded']:.4g} > 0", fid["fp-reseeded"] > 0)
        check(f"{s}: FID to FP W8A8 {fid['W8A8']:.4g} < W4A6 {fid['W4A6']:.4g}", fid["W8A8"] < fid["W4A6"])
        check(f"{s}: PSNR W8A8 {psnr['W8A8']:.2f} > W4A8 {psnr['W4A8']:.2f} > W4A6 {psnr['W4A6']:.2f}",
              psnr["W8A8"] > psnr["W4A8"] > psnr["W4A6"])
        check(f"{s}: every quantized PSNR > fp-reseeded's {psnr['fp-reseeded']:.2f}",
              all(psnr[q] > psnr["fp-reseeded"] for q in QUANTIZED))
        print(f"       {s}: W8A8 FID / noise floor = {fid['W8A8'] / max(fid['fp-reseeded'], 1e-12):.3g}")
    print(f"\nwrote {out / 'table.csv'}, {out / 'table.md'} and {out / 'metrics'}/*.json")


if __name__ == "__main__":
    main()
