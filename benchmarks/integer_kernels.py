"""Float32 vs pcr's integer backend, side by side in one run, as ratios: layers, UNets, memory, sampling.

1. Layers (in this process): one Linear (x 4096x640 @ W 640x2560, an SD 1.5 64x64 feed-forward's first
   matmul, halved) and one 3x3 convolution (320 -> 320 channels at 64x64, batch 2, SD 1.5's first level),
   as float32 (F.linear / F.conv2d), fake (the quantized layer's simulated forward: fake-quantized input,
   dequantized cached weight) and int8 (``integer_forward``, activation quantization and zero-point terms
   included), with asymmetric (pcr's default, 8-bit: zero-point correction) and symmetric weights.
2. UNet forwards, batch 2, random weights, pcr's default config (per-channel asymmetric min-max weights),
   each layer's activation range from one float forward: float32 (the same layers, quantization off) vs
   simulated (fake quantization, ``pcr.quantize``'s default backend) vs integer (``freeze_integer``, what
   ``pcr.quantize(..., backend="integer")`` gives: int8 codes only, float weights released, codes of 4
   bits packed two per byte and unpacked per call). Toy UNet (pcr.toy.model, 32x32) W8A8; SD 1.5 UNet
   (real config, ``--latent``) at ``--sd15-bits`` (W8A8, W4A8); SDXL UNet (real config, ``--sdxl-latent``,
   0 skips) W8A8, its simulated model dequantizing per call (``cache_weights=False``: 2.25x of 10 GB
   does not fit 24 GB).
3. Weight memory, from the same processes: ``weight_bytes`` (parameters, buffers, frozen integer weights)
   of the integer and the simulated model over the float32 model's (goals: W8 <= 0.3x, W4 <= 0.17x).
4. Peak memory of an SD 1.5 UNet forward, float32 vs integer W8A8, one fresh process each (glibc's mmap
   threshold fixed, as benchmarks/_measure.py does: the resident set follows live memory): the resident
   set before the forward (model held), its peak during two forwards (sampled every 2 ms), and apart,
   the process maximum (``ru_maxrss``): the integer model is built from the float one, so building
   peaks at float size or more.
5. Whole-pipeline sampling (text encoder, every UNet call, VAE decode) of an SD 1.5-shaped pipeline
   (benchmarks/sd_scale.py's: real UNet config, random weights, tiny text encoder and VAE), ``--latent``
   latents, 2 prompts in one batch, ``--steps`` DDIM steps, guidance 7.5 batched (UNet batch 4): float32
   vs ``pcr.quantize(pipe, params, backend="integer")`` with W8A8 QuantParams from ``pcr.calibrate``
   (method perstep, min-max observer: one FP pass over the same prompts; cheap, and real per-call params).

Each whole-model measurement runs in a fresh process (``--child``), ended if the machine runs short of
memory (reported as not measured). Times are medians of ``--repeats`` calls (SD 1.5 and the pipeline:
half as many; SDXL: one) after a warm-up call (float32: the activation-range forward or calibration's FP
pass; SDXL's fake path: none, its float kernels are warm). Timing processes run with glibc's default
malloc: a fixed mmap threshold made the integer UNet forward 2x slower. No download. Writes
benchmarks/results/integer_kernels.json.

    PCR_TORCH_THREADS=1 .venv/bin/python benchmarks/integer_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from _measure import MALLOC_ENV, PeakRSS, run_fresh  # beside this script
from diffusers import UNet2DConditionModel
from torch import nn

from pcr.calibrate.weights import calibrate_weights, round_to_nearest, weight_range
from pcr.io import atomic_file
from pcr.pipelines.checkpoints import UNET_CONFIGS
from pcr.pipelines.steps import StepTracker
from pcr.quant import QuantConfig, quantize_unet
from pcr.quant.freeze import freeze_integer, weight_bytes
from pcr.quant.integer import integer_forward
from pcr.quant.layers import QuantConv2d, QuantLinear
from pcr.toy.model import toy_unet_config

OUT = Path(__file__).parent / "results" / "integer_kernels.json"
GOALS = {8: 0.30, 4: 0.17}  # integer weight bytes / float32 weight bytes (issue 13)
MIB = 2**20
NAMES = {"toy": "toy", "sd15": "SD 1.5", "sdxl": "SDXL"}


def median_ms(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def quant_layer(module: nn.Module, x: torch.Tensor, symmetric: bool):
    """``module`` quantized W8A8 (min-max weights, the input's own range), switched fully on."""
    steps = types.SimpleNamespace(step=0, num_calls=None, num_steps=None)
    cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
    layer = cls.from_float(module, weight_bits=8, weight_symmetric=symmetric, per_channel=True, num_calls=1,
                           act_symmetric=False, steps=steps)
    round_to_nearest(layer, *weight_range(layer, "minmax"))
    layer.act_quantizer.set_step(0, x.min(), x.max(), 8)
    layer.quant_weights, layer.act_quantizer.enabled = True, True
    return layer


@torch.no_grad()
def layer_rows(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    cases = [("Linear 4096x640 @ 640x2560", nn.Linear(640, 2560), torch.randn(4096, 640),
              lambda m, x: F.linear(x, m.weight, m.bias)),
             ("Conv 3x3 320->320, 2x64x64", nn.Conv2d(320, 320, 3, padding=1), torch.randn(2, 320, 64, 64),
              lambda m, x: F.conv2d(x, m.weight, m.bias, 1, 1))]
    rows = []
    for name, module, x, float_fn in cases:
        float_ms = median_ms(lambda: float_fn(module, x), repeats)  # noqa: B023 (called at once)
        for symmetric in (False, True):
            layer = quant_layer(module, x, symmetric)
            fake_ms = median_ms(lambda: layer(x), repeats)  # noqa: B023
            int_ms = median_ms(lambda: integer_forward(layer, x), repeats)  # noqa: B023
            rows.append(dict(name=f"{name}, {'sym' if symmetric else 'asym'} W8A8", float_ms=float_ms,
                             fake_ms=fake_ms, int_ms=int_ms))
    return rows


# -- in a fresh process: one UNet (or pipeline) each ------------------------------------------------

def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def unet_config(model: str) -> dict:
    return toy_unet_config() if model == "toy" else {k: v for k, v in UNET_CONFIGS[model].items()
                                                      if not k.startswith("_")}


def unet_inputs(config: dict, latent: int, batch: int = 2) -> tuple[tuple, dict]:
    """(args, kwargs) of one UNet call: latents, timestep 500, text states; SDXL's pooled text and size ids."""
    gen = torch.Generator().manual_seed(1)
    args = (torch.randn(batch, config["in_channels"], latent, latent, generator=gen), torch.tensor(500),
            torch.randn(batch, 77, config["cross_attention_dim"], generator=gen))
    if config.get("addition_embed_type") != "text_time":
        return args, {}
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    side = 8.0 * latent  # original size, crop corner, target size, in pixels
    ids = torch.tensor([side, side, 0.0, 0.0, side, side]).repeat(batch, 1)
    return args, {"added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, generator=gen), "time_ids": ids}}


def build_unet(model: str, latent: int):
    """A random-weight UNet with its StepTracker, and a function calling it once (batch 2)."""
    torch.manual_seed(0)
    config = unet_config(model)
    unet = UNet2DConditionModel(**config).eval()
    tracker = StepTracker.attach(types.SimpleNamespace(unet=unet))
    args, kwargs = unet_inputs(config, latent)
    return unet, tracker, lambda: unet(*args, **kwargs)


def quantize(unet: nn.Module, forward, bits: int, cache_weights: bool) -> list:
    """Quantize ``unet`` W{bits}A8 (min-max weights; each layer's activation range from one float forward,
    UNet call 0); quantization stays off. Its layers."""
    config = QuantConfig(weight_bits=bits, act_bits=8, num_steps=1)
    layers = quantize_unet(unet, config, num_calls=1, cache_weights=cache_weights)
    calibrate_weights(layers, "minmax", progress=False)
    ranges = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a: ranges.__setitem__(m, (a[0].min(), a[0].max())))
             for layer in layers.values()]
    forward()
    for hook in hooks:
        hook.remove()
    for layer, (lo, hi) in ranges.items():
        layer.act_quantizer.set_step(0, lo, hi, 8)
    return list(layers.values())


def unet_child(args) -> None:
    """Times float32, simulated and integer forwards of one UNet; weight bytes of each model."""
    unet, tracker, forward = build_unet(args.model, args.latent)
    cache = args.model != "sdxl"
    out = dict(model=args.model, bits=args.bits, latent=args.latent, repeats=args.repeats, cache_weights=cache,
               float_bytes=weight_bytes(unet))
    with tracker.at(0, 1):
        layers = quantize(unet, forward, args.bits, cache)  # its float forward: the float path's warm-up
        out["simulated_bytes"] = weight_bytes(unet)
        out["float_ms"] = median_ms(forward, args.repeats, warmup=False)
        for layer in layers:
            layer.quant_weights, layer.act_quantizer.enabled = True, True
        out["fake_ms"] = median_ms(forward, args.repeats, warmup=cache)  # SDXL: float kernels warm, 25 s a call
        counts = freeze_integer(unet)
        del layers
        gc.collect()
        out["integer_bytes"] = weight_bytes(unet)
        out["int_ms"] = median_ms(forward, args.repeats)
    emit(**out, paths=dict(counts), max_rss_mib=max_rss_mib())


def memory_child(args) -> None:
    """Resident set of one SD 1.5 UNet (float32 or frozen integer) before and during two forwards."""
    base = psutil.Process().memory_info().rss / MIB
    unet, tracker, forward = build_unet(args.model, args.latent)
    with tracker.at(0, 1):
        if args.backend == "integer":
            for layer in quantize(unet, forward, args.bits, cache_weights=False):  # as pcr.quantize does
                layer.quant_weights, layer.act_quantizer.enabled = True, True
            freeze_integer(unet)
        gc.collect()
        before, max_before = psutil.Process().memory_info().rss / MIB, max_rss_mib()
        with PeakRSS() as peak:
            forward()
            forward()
    emit(model=args.model, backend=args.backend, bits=args.bits, latent=args.latent, baseline_mib=base,
         before_mib=before, peak_mib=peak.peak / MIB, growth_mib=peak.growth_mb, max_rss_before_mib=max_before,
         max_rss_mib=max_rss_mib(), weight_mib=weight_bytes(unet) / MIB)


def pipeline_child(args) -> None:
    """Sampling time of an SD 1.5-shaped pipeline, float32 vs the integer backend with calibrated params."""
    from sd_scale import build_pipeline, prompts  # beside this script

    import pcr
    from pcr.calibrate import calibrate
    from pcr.pipelines.sampling import final_images

    pipe = build_pipeline("sd15", args.latent, "cpu", torch.float32)
    side, batch = 8 * args.latent, 2
    texts, seeds = prompts(batch), list(range(batch))
    config = QuantConfig(weight_bits=8, act_bits=8, method="perstep", observer="minmax", num_steps=args.steps,
                         batch_size=batch, height=side, width=side, seed=0)
    start = time.perf_counter()
    params = calibrate(pipe, texts, config, progress=False)  # its FP pass: the float path's warm-up
    calib_s = time.perf_counter() - start
    images = {}

    def sample(key):
        images[key] = final_images(pipe, texts, seeds, args.steps, config.guidance_scale, batch, side, side)

    float_s = median_ms(lambda: sample("float"), args.repeats, warmup=False) / 1000
    start = time.perf_counter()
    pcr.quantize(pipe, params, backend="integer")
    quantize_s = time.perf_counter() - start
    int_s = median_ms(lambda: sample("int"), args.repeats) / 1000
    emit(latent=args.latent, steps=args.steps, batch=batch, repeats=args.repeats, calibrate_s=calib_s,
         quantize_s=quantize_s, float_s=float_s, int_s=int_s, paths=dict(pipe.unet.pcr_kernel_paths),
         image_mean_abs_diff=(images["float"] - images["int"]).abs().mean().item())


# -- in the parent ----------------------------------------------------------------------------------

def child(args, kind: str, env: dict | None = None, **opts) -> dict | None:
    """Run one measurement in a fresh process; its record, or None (what went wrong printed)."""
    cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads), "--steps", str(args.steps)]
    cmd += [f"--{key}={value}" for key, value in opts.items()]
    load, start = os.getloadavg()[0], time.perf_counter()
    run = run_fresh(cmd, env=env, cap_bytes=int(args.max_gib * 2**30))
    record = {k: v for r in run.records for k, v in r.items()}
    if run.returncode != 0 or not record:
        why = run.ended_because or f"exit status {run.returncode}"
        print(f"    not measured: {kind} {opts} ({why}; peak resident set {run.peak_rss_mb:.0f} MiB)", flush=True)
        return None
    return dict(record, seconds=time.perf_counter() - start, load_before=load, load_after=os.getloadavg()[0])


def show_times(name: str, r: dict) -> None:
    print(f"{name:58s} {r['float_ms']:9.1f} {r['fake_ms']:9.1f} {r['int_ms']:9.1f} "
          f"{r['float_ms'] / r['int_ms']:10.2f} {r['fake_ms'] / r['int_ms']:9.2f}", flush=True)


def unet_name(r: dict) -> str:
    return f"{NAMES[r['model']]} UNet W{r['bits']}A8, batch 2, {r['latent']}x{r['latent']}"


def show_unet(r: dict) -> None:
    show_times(unet_name(r), r)
    calls = sum(r["paths"].values())
    paths = ", ".join(f"{n / calls:.0%} {path}" for path, n in sorted(r["paths"].items(), key=lambda p: -p[1]))
    notes = ["fake dequantizes its weights per call (cache_weights=False)"] if not r["cache_weights"] else []
    notes += ["int8: 4-bit codes unpacked (convolutions prepacked for oneDNN) per call"] if r["bits"] <= 4 else []
    notes.append(f"median of {r['repeats']}")
    print(f"    integer layer calls: {paths}; {'; '.join(notes)}, "
          f"{r['seconds']:.0f} s in all (load {r['load_before']:.1f} -> {r['load_after']:.1f})", flush=True)


def show_weights(unets: list[dict]) -> None:
    print("\nWeight memory: weight_bytes (parameters, buffers, frozen integer weights; each storage once), MiB, "
          "and over float32")
    print(f"{'':20s} {'float32':>8s} {'simulated':>16s} {'integer':>15s} {'goal':>12s}")
    for r in unets:
        fp = r["float_bytes"]
        goal = GOALS.get(r["bits"])
        verdict = f"<= {goal:.2f} {'met' if r['integer_bytes'] <= goal * fp else 'MISSED'}" if goal else ""
        print(f"{NAMES[r['model']] + ' UNet W' + str(r['bits']):20s} {fp / MIB:8.0f} "
              f"{r['simulated_bytes'] / MIB:8.0f} ({r['simulated_bytes'] / fp:.2f}x) "
              f"{r['integer_bytes'] / MIB:7.0f} ({r['integer_bytes'] / fp:.3f}x) {verdict:>12s}")
    print("    simulated: float weights + 1-byte codes (+ a dequantized float copy where cache_weights): up by the "
          "factor shown;\n    integer: what the frozen model holds (the peak-memory rows below check it against the "
          "resident set)", flush=True)


def show_memory(rows: list[dict]) -> None:
    print("\nPeak memory, SD 1.5 UNet forward (fresh process each; resident set, MiB): before the forward (model "
          "held),\npeak during two forwards (sampled every 2 ms), growth, and the process's ru_maxrss before the "
          "forward\n(building included: the integer model is quantized from the float one) and at the end")
    print(f"{'':40s} {'before':>8s} {'peak':>8s} {'growth':>8s} {'max build':>10s} {'max end':>8s}")
    for r in rows:
        name = f"integer W{r['bits']}A8" if r["backend"] == "integer" else "float32"
        name += f", batch 2, {r['latent']}x{r['latent']}"
        print(f"{name:40s} {r['before_mib']:8.0f} {r['peak_mib']:8.0f} "
              f"{r['growth_mib']:8.0f} {r['max_rss_before_mib']:10.0f} {r['max_rss_mib']:8.0f}")
    if len(rows) == 2:
        fp, it = rows
        ratios = [it[k] / fp[k] for k in ("before_mib", "peak_mib", "max_rss_before_mib", "max_rss_mib")]
        print(f"{'integer / float32':40s} {ratios[0]:8.2f} {ratios[1]:8.2f} {'':8s} {ratios[2]:10.2f} {ratios[3]:8.2f}")
        model = [r["before_mib"] - r["baseline_mib"] for r in rows]
        print(f"    python + torch before building: {fp['baseline_mib']:.0f} MiB (in every column); the UNets over "
              f"it: {model[0]:.0f} and {model[1]:.0f} MiB ({model[1] / model[0]:.2f}x)", flush=True)


def show_pipeline(r: dict) -> None:
    side = 8 * r["latent"]
    print(f"\nSD 1.5-shaped pipeline, whole sampling (text encoder, UNet calls, VAE decode): {r['batch']} prompts, "
          f"{r['steps']} DDIM steps,\nguidance 7.5 batched (UNet batch {2 * r['batch']}), {side}x{side} px")
    print(f"    float32 {r['float_s']:.2f} s, integer W8A8 {r['int_s']:.2f} s: float32 / integer "
          f"{r['float_s'] / r['int_s']:.2f} (median of {r['repeats']})")
    calls = sum(r["paths"].values())
    paths = ", ".join(f"{n / calls:.0%} {path}" for path, n in r["paths"].items())
    print(f"    params: pcr.calibrate perstep/min-max, one FP pass, {r['calibrate_s']:.0f} s; pcr.quantize(..., "
          f"backend='integer') {r['quantize_s']:.1f} s; layer calls: {paths}; images' mean |float - integer| "
          f"{r['image_mean_abs_diff']:.4f} (of [0, 1]); {r['seconds']:.0f} s in all", flush=True)


def run_children(args) -> dict:
    """Every whole-model measurement, each printed when it comes back."""
    unets, memory, pipeline = [], [], None
    plan = [("toy", 8, 32, args.repeats)] + [("sd15", bits, args.latent, max(1, args.repeats // 2))
                                              for bits in (args.sd15_bits if args.latent else [])]
    plan += [("sdxl", 8, args.sdxl_latent, 1)] if args.sdxl_latent else []
    for model, bits, latent, repeats in plan:
        r = child(args, "unet", model=model, bits=bits, latent=latent, repeats=repeats)
        if r is not None:
            unets.append(r)
            show_unet(r)
    if unets:
        show_weights(unets)
    if args.latent:
        memory = [r for backend in ("float", "integer") if (r := child(args, "memory", env=MALLOC_ENV, model="sd15",
                                                                        backend=backend, bits=8, latent=args.latent))]
        show_memory(memory)
        pipeline = child(args, "pipeline", latent=args.latent, repeats=max(1, args.repeats // 2))
        if pipeline is not None:
            show_pipeline(pipeline)
    return dict(unets=unets, memory=memory, pipeline=pipeline)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="layers and toy; SD 1.5 and the pipeline half")
    parser.add_argument("--latent", type=int, default=32, help="SD 1.5 latent side (0: skip SD 1.5)")
    parser.add_argument("--sd15-bits", type=int, nargs="+", default=[8, 4], help="SD 1.5 weight bits")
    parser.add_argument("--sdxl-latent", type=int, default=32, help="SDXL latent side (0: skip SDXL)")
    parser.add_argument("--steps", type=int, default=2, help="pipeline sampling steps")
    parser.add_argument("--max-gib", type=float, default=16.0, help="a process's resident-set cap")
    parser.add_argument("--child", choices=("unet", "memory", "pipeline"), help=argparse.SUPPRESS)
    for name in ("model", "backend", "bits"):
        parser.add_argument(f"--{name}", type=int if name == "bits" else str, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        torch.set_grad_enabled(False)
        {"unet": unet_child, "memory": memory_child, "pipeline": pipeline_child}[args.child](args)
        return
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); times in ms, medians; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'':58s} {'float32':>9s} {'fake':>9s} {'int8':>9s} {'float/int8':>10s} {'fake/int8':>9s}")
    layers = layer_rows(args.repeats)
    for row in layers:
        show_times(row["name"], row)
    results = dict(layers=layers, **run_children(args))
    results.update(settings=vars(args), torch=torch.__version__, total_seconds=time.perf_counter() - start)
    with atomic_file(OUT) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    print(f"{results['total_seconds']:.0f} s in all; wrote {OUT}")


if __name__ == "__main__":
    main()
