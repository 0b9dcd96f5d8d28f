"""What calibration and simulated quantization cost at Stable Diffusion scale, as ratios from one run.

No download: UNets with the real SD 1.5 and SDXL base configs and random weights, at a reduced
latent size.

Only the UNet is quantized, so only the UNet is real-sized: each pipeline's UNet has its
checkpoint's config (pcr.pipelines.checkpoints.UNET_CONFIGS, with their sources) and seeded random
weights, while the text encoders and the VAE are tiny (pcr.pipelines.tiny's, widened where the UNet
reads them: a 768-wide hidden state for SD 1.5; for SDXL 768 + 1280 = 2048 concatenated and a
1280-wide pooled projection; a 4-block VAE, so latents are 1/8 of the image side as in SD). Latents are 16x16 by
default (128x128 images, ``--latent``): the cost of a UNet call follows the latent area, the size
of its weights (what calibration's memory is about) does not. Both run a DDIM scheduler with SD's
betas, guidance 7.5 batched into one UNet call per step, ``--prompts`` P prompts in batches of
``--batch``. ``--model tiny`` is pcr's tiny random SD pipeline, for smoke tests.

Measured, each ratio from one run of this script:

- time of progressive activation calibration (``calibrate()``'s ``params.info["act_seconds"]``;
  min-max weights, ``weight_seconds``, timed apart) / one FP sampling pass over the same prompts
  (goal <= 3);
- time of fake-quantized W8A8 sampling (after ``pcr.quantize``) / FP sampling (goal <= 1.5); FP
  sampling is timed before and after the others, and their mean is the denominator;
- peak memory of the whole ``calibrate()`` call / peak memory of FP sampling, at P and 2P
  prompts (goal <= 1.5, and flat in P). On CPU: the resident set's growth over its size before the
  call, in a fresh process per measurement, as calibration_cost.py measures (see _measure.py; unlike
  it, the window here holds the weight step too, since the public calibrate() runs both). On
  CUDA: torch.cuda.max_memory_allocated over memory_allocated before the call, reset between
  measurements. The whole-process peaks (weights included) are printed beside them;
- the params file's size (``pcr.quant.save_params``) beside the UNet's float32 size.

Timings are taken side by side in one process (a fresh one too: this one only starts the measuring
processes and reports). A process whose resident set passes ``--max-gib`` (default 12) is ended
and what it had not measured yet is reported as not measured: SDXL's float32 UNet alone is 9.6 GiB.
On a CPU shared with other work, ``--threads 1``: with 2 threads and other processes on the 2
cores, OpenMP's barriers made the tiny model's sampling 90x slower and the SD 1.5 ratios swing by
2x from pass to pass; with one thread wall and CPU seconds agreed (both are printed).

    python benchmarks/sd_scale.py --model sd15 --threads 1
    python benchmarks/sd_scale.py --model sdxl --threads 1
    python benchmarks/sd_scale.py --model sd15 --device cuda --dtype float16 --latent 64

Writes (merging, one entry per model, device and dtype) benchmarks/results/sd_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from _measure import MALLOC_ENV, PeakRSS, run_fresh  # beside this script
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import pcr
from pcr.calibrate import calibrate
from pcr.pipelines import StepTracker, load_pipeline, tiny
from pcr.pipelines.checkpoints import UNET_CONFIGS, UNET_PARAMS
from pcr.pipelines.sampling import sample_latents
from pcr.quant import QuantConfig, save_params, unquantize_unet
from pcr.quant.select import quantizable_layers
from pcr.runtime import torch_dtype, use_available_cpus
from pcr.tokenizer import clip_tokenizer

OUT = Path(__file__).parent / "results"
MB = 2**20


# pcr.pipelines.tiny's VAE with four blocks: latents are 1/8 of the image side, as in SD.
VAE_8X = dict(tiny.VAE, block_out_channels=(16, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)

PROMPTS = [
    "a lighthouse on a rocky coast at dusk",
    "a bowl of ramen with a soft boiled egg, studio photo",
    "an astronaut riding a horse on the moon",
    "a watercolor painting of a fox in a snowy forest",
    "a red vintage car parked in front of a bakery",
    "two cats sleeping on a windowsill in the sun",
    "a city skyline at night reflected in a river",
    "a wooden cabin by a lake, autumn, morning fog",
    "a portrait of an old fisherman, oil painting",
    "a cup of coffee on a desk next to a laptop",
    "a field of sunflowers under a stormy sky",
    "a robot reading a book in a library",
    "a plate of sushi on a black slate board",
    "a steam train crossing a stone bridge",
    "an owl perched on a branch, detailed illustration",
    "a small boat on a calm turquoise sea",
]


def prompts(n: int) -> list[str]:
    """``n`` distinct prompts: the list above, then again with a numbered variation."""
    return [PROMPTS[i % len(PROMPTS)] + (f", variation {i // len(PROMPTS)}" if i >= len(PROMPTS) else "")
            for i in range(n)]


@contextlib.contextmanager
def building(device: str, dtype: torch.dtype, seed: int):
    """Modules made inside are made on ``device`` in ``dtype`` (no float32 copy first: SDXL's is
    10 GB) from seeded random weights."""
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def text_encoder(hidden: int, with_projection: bool = False) -> torch.nn.Module:
    """pcr.pipelines.tiny's text encoder, as wide as the UNet reads it."""
    config = CLIPTextConfig(**dict(tiny.TEXT, hidden_size=hidden, projection_dim=hidden))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def build_pipeline(model: str, latent: int, device: str, dtype: torch.dtype, seed: int = 0):
    """The pipeline measured, with its StepTracker attached; the UNet's default latent side is ``latent``."""
    if model == "tiny":
        pipe = load_pipeline("tiny-sd", device=device, dtype=dtype)
        pipe.unet.register_to_config(sample_size=latent)
        return pipe
    scheduler = DDIMScheduler(**tiny.SD_SCHEDULER)
    with building(device, dtype, seed):
        vae = AutoencoderKL(**dict(VAE_8X, sample_size=8 * latent)).eval()
        if model == "sd15":
            unet = UNet2DConditionModel(**dict(UNET_CONFIGS["sd15"], sample_size=latent)).eval()
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder(768), tokenizer=clip_tokenizer(),
                                           unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        else:
            unet = UNet2DConditionModel(**dict(UNET_CONFIGS["sdxl"], sample_size=latent)).eval()
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder(768),
                                             text_encoder_2=text_encoder(1280, with_projection=True),
                                             tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
                                             scheduler=scheduler, add_watermarker=False)
    count = sum(p.numel() for p in pipe.unet.parameters())
    if count != UNET_PARAMS[model]:
        raise AssertionError(f"the {model} UNet built has {count:,} parameters, the checkpoint {UNET_PARAMS[model]:,}")
    StepTracker.attach(pipe)
    return pipe


def quant_config(args, model: str) -> QuantConfig:
    side = args.latent * (2 if model == "tiny" else 8)  # pixels: the VAE's scale factor
    return QuantConfig(weight_bits=8, act_bits=8, method="progressive", num_steps=args.steps,
                       guidance_scale=args.guidance, batch_size=args.batch, height=side, width=side, seed=0)


@torch.no_grad()
def fp_sampling(pipe, texts: list[str], config: QuantConfig, progress: bool = False) -> None:
    """Every prompt sampled once, batch by batch, with the seeds calibrate() gives them; latents out."""
    size = config.batch_size
    for i in tqdm(range(0, len(texts), size), desc="sampling", disable=not progress, leave=False):
        seeds = [config.seed + j for j in range(i, min(i + size, len(texts)))]
        sample_latents(pipe, texts[i:i + size], seeds, config.num_steps, config.guidance_scale)


# -- in the measuring process ---------------------------------------------------------------------

def emit(**record) -> None:
    """One JSON line on stdout, read by the parent (what was printed survives the process's end)."""
    print(json.dumps(record), flush=True)


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


class Device:
    """Times calls (synchronizing on CUDA) and measures CUDA memory."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def clock(self, name: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, its wall-clock and this process's CPU seconds emitted under ``name``.

        CPU seconds are a cross-check on a shared machine: other processes' load lengthens wall time
        more than CPU time."""
        self.sync()
        cpu, start = cpu_seconds(), time.perf_counter()
        result = fn(*args, **kwargs)
        self.sync()
        emit(seconds={name: time.perf_counter() - start}, cpu_seconds={name: cpu_seconds() - cpu})
        return result

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def peak(self, into: dict):
        """CUDA: into gets growth_mb (peak allocated over allocated before) and peak_mb (peak allocated)."""
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield
        self.sync()
        peak = torch.cuda.max_memory_allocated()
        into.update(growth_mb=(peak - start) / MB, start_mb=start / MB, peak_mb=peak / MB)


def watch_unet_inputs(pipe) -> set:
    """The (batch, channels, h, w) shapes the UNet is called with, collected from now on."""
    shapes: set = set()
    pipe.unet.register_forward_pre_hook(lambda module, args: shapes.add(tuple(args[0].shape)))
    return shapes


def measure(args) -> None:
    """Child process: build the pipeline, then one memory measurement or the timings, as JSON lines."""
    use_available_cpus()
    dtype, device = torch_dtype(args.dtype), Device(args.device)
    if device.cuda and torch.device(args.device).index is not None:
        torch.cuda.set_device(torch.device(args.device))  # the peak counters read the current device
    start = time.perf_counter()
    pipe = build_pipeline(args.model, args.latent, args.device, dtype)
    config = quant_config(args, args.model)
    texts = prompts(args.prompts)
    shapes = watch_unet_inputs(pipe)
    emit(setup=dict(unet_params=sum(p.numel() for p in pipe.unet.parameters()),
                    quantized_weights=sum(m.weight.numel() for m in quantizable_layers(pipe.unet).values()),
                    threads=torch.get_num_threads(), image_px=config.height, load_before=os.getloadavg()[0],
                    build_seconds=round(time.perf_counter() - start, 1)))
    fp_sampling(pipe, texts[:config.batch_size], config.replace(num_steps=2))  # warm up allocator and kernels

    if args.measure in ("fp", "calib"):  # CPU memory, one measurement in this fresh process
        call = (lambda: fp_sampling(pipe, texts, config)) if args.measure == "fp" else (
            lambda: calibrate(pipe, texts, config, progress=False, cache_weights=args.cache_weights))
        with PeakRSS() as peak:
            call()
        emit(memory=dict(growth_mb=peak.growth_mb, start_mb=peak.start / MB, peak_mb=peak.peak / MB),
             unet_inputs=sorted(shapes))
        return

    # timings: one whole pass more first; here the first pass after a build still ran up to 2x slower
    fp_sampling(pipe, texts[:config.batch_size], config)
    memory: dict = {"fp": {}, "calib": {}, "fp_2x": {}, "calib_2x": {}}
    with device.peak(memory["fp"]) if device.cuda else contextlib.nullcontext():
        device.clock("fp_sampling", fp_sampling, pipe, texts, config, progress=True)
    with device.peak(memory["calib"]) if device.cuda else contextlib.nullcontext():
        params = device.clock("calibrate", calibrate, pipe, texts, config, progress=True,
                              cache_weights=args.cache_weights)
    emit(seconds={"weights": params.info["weight_seconds"], "activations": params.info["act_seconds"]},
         act_unet_calls=params.info.get("act_unet_calls"))
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        path = Path(folder) / "params.safetensors"
        save_params(path, params)
        emit(params_file_mb=path.stat().st_size / MB)
    pcr.quantize(pipe, params)
    del params
    device.clock("fake_quant_sampling", fp_sampling, pipe, texts, config, progress=True)
    unquantize_unet(pipe.unet)
    device.clock("fp_sampling_again", fp_sampling, pipe, texts, config, progress=True)
    if device.cuda:  # memory at twice the prompts, in this process (CUDA's peak counters are exact)
        texts_2x = prompts(2 * args.prompts)
        with device.peak(memory["fp_2x"]):
            fp_sampling(pipe, texts_2x, config)
        with device.peak(memory["calib_2x"]):
            calibrate(pipe, texts_2x, config, progress=False, cache_weights=args.cache_weights)
        emit(memory=memory)
    # the machine's 1-minute load average: above the thread count, other processes shared the CPUs
    emit(unet_inputs=sorted(shapes), setup=dict(load_after=os.getloadavg()[0]))


# -- in the parent --------------------------------------------------------------------------------

def child_command(args, model: str, what: str, prompt_count: int) -> list[str]:
    return [sys.executable, __file__, "--model", model, "--measure", what, "--prompts", str(prompt_count),
            "--latent", str(args.latent), "--steps", str(args.steps), "--guidance", str(args.guidance),
            "--batch", str(args.batch), "--dtype", args.dtype, "--device", args.device] + (
                ["--cache-weights"] if args.cache_weights else [])


def cap_bytes(args) -> int:
    """--max-gib, or less when the machine has less available (keeping 1 GiB for everyone else)."""
    available = psutil.virtual_memory().available
    return int(min(args.max_gib * 2**30, available - 2**30))


def merge(records: list[dict]) -> dict:
    out: dict = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            else:
                out[key] = value
    return out


def run_child(args, model: str, what: str, prompt_count: int, env: dict | None) -> tuple[dict, str | None]:
    cap = cap_bytes(args)
    print(f"[{model}] {what} at {prompt_count} prompts: fresh process, resident-set cap {cap / 2**30:.1f} GiB "
          f"({psutil.virtual_memory().available / 2**30:.1f} GiB available)", file=sys.stderr, flush=True)
    if args.threads is not None:  # pcr.runtime.use_available_cpus reads it in the child
        env = {**(env or {}), "PCR_TORCH_THREADS": str(args.threads)}
    run = run_fresh(child_command(args, model, what, prompt_count), env=env, cap_bytes=cap)
    reason = None
    if run.ended_because:
        reason = f"ended: {run.ended_because} (at {run.peak_rss_mb / 1024:.1f} GiB)"
    elif run.returncode != 0:
        reason = f"failed with exit code {run.returncode} (its error is above)"
    if reason:
        print(f"[{model}] {what} at {prompt_count} prompts: {reason}", file=sys.stderr, flush=True)
    return merge(run.records), reason


def ratio(a, b):
    return None if a is None or b is None else round(a / b, 2)


def mean(times: dict, keys: tuple[str, ...]) -> float | None:
    """The mean of those of ``keys`` that were measured (FP sampling is timed before and after the others)."""
    found = [times[k] for k in keys if k in times]
    return sum(found) / len(found) if found else None


def measure_model(args, model: str) -> dict:
    start = time.perf_counter()
    P = args.prompts
    not_measured: dict[str, str] = {}
    memory: dict[str, dict | None] = {}
    shapes: list = []  # every (batch, channels, h, w) the UNet was called with, in every process
    if args.device == "cpu":  # one fresh process per memory measurement, its allocator pinned (_measure.py)
        for key, what, count in (("fp", "fp", P), ("calib", "calib", P), ("fp_2x", "fp", 2 * P),
                                 ("calib_2x", "calib", 2 * P)):
            if what == "calib" and "calib" in not_measured:  # twice the prompts will not fit either
                not_measured[key] = not_measured["calib"]
                continue
            result, reason = run_child(args, model, what, count, MALLOC_ENV)
            memory[key] = result.get("memory")
            shapes += result.get("unet_inputs", [])
            if reason or memory[key] is None:
                not_measured[key] = reason or "failed: no figure came back"
    timing, reason = run_child(args, model, "timings", P, None)
    if reason:
        not_measured["timings"] = reason + "; the figures it printed before are kept"
    if args.device != "cpu":
        memory = timing.get("memory", {})
    shapes += timing.get("unet_inputs", [])
    elsewhere = sorted({tuple(shape) for shape in shapes if tuple(shape[-2:]) != (args.latent, args.latent)})
    if elsewhere:  # calibrate() or sampling ran at another resolution than asked: the ratios compare unlike runs
        not_measured["resolution"] = f"failed: UNet calls at {elsewhere}, not at the {args.latent}x{args.latent} latent"
    seconds = timing.get("seconds", {})
    setup = timing.get("setup", {})

    cpu = timing.get("cpu_seconds", {})
    fp, fp_cpu = (mean(times, ("fp_sampling", "fp_sampling_again")) for times in (seconds, cpu))
    mem = {k: (v or {}).get("growth_mb") for k, v in memory.items()}
    whole = {k: (v or {}).get("peak_mb") for k, v in memory.items()}
    unet_mb = setup.get("unet_params", UNET_PARAMS.get(model, 0)) * 4 / MB
    return {
        "setup": {"model": model, "latent": args.latent, "cache_weights": args.cache_weights,
                  "image_px": setup.get("image_px"), "prompts": P,
                  "steps": args.steps, "guidance": args.guidance, "batch": args.batch, "dtype": args.dtype,
                  "device": args.device, "threads": setup.get("threads"), "unet_params": setup.get("unet_params"),
                  "quantized_weights": setup.get("quantized_weights"), "max_gib": args.max_gib,
                  "unet_input_shapes": sorted({tuple(shape) for shape in shapes}),
                  "load_average": [setup.get("load_before"), setup.get("load_after")]},
        "seconds": {k: round(v, 2) for k, v in seconds.items()} | {"build": setup.get("build_seconds")},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "ratios": {
            "progressive activation calibration / FP sampling (goal <= 3)": ratio(seconds.get("activations"), fp),
            "whole calibrate(), weights included / FP sampling": ratio(seconds.get("calibrate"), fp),
            "fake-quantized sampling / FP sampling (goal <= 1.5)": ratio(seconds.get("fake_quant_sampling"), fp),
            "CPU seconds, whole calibrate() / FP sampling": ratio(cpu.get("calibrate"), fp_cpu),
            "CPU seconds, fake-quantized / FP sampling": ratio(cpu.get("fake_quant_sampling"), fp_cpu),
            "calibration peak / FP sampling peak, P prompts (goal <= 1.5)": ratio(mem.get("calib"), mem.get("fp")),
            "calibration peak / FP sampling peak, 2P prompts (goal <= 1.5)": ratio(mem.get("calib_2x"),
                                                                                   mem.get("fp_2x")),
            "calibration peak, 2P / P prompts (flat ~ 1)": ratio(mem.get("calib_2x"), mem.get("calib")),
            "whole-process peak, calibration / FP sampling, P prompts": ratio(whole.get("calib"), whole.get("fp")),
            "params file / UNet float32": ratio(timing.get("params_file_mb"), unet_mb),
        },
        "memory_mb": {k: v and {name: round(x, 1) for name, x in v.items()} for k, v in memory.items()},
        "params_file_mb": timing.get("params_file_mb") and round(timing["params_file_mb"], 1),
        "unet_float32_mb": round(unet_mb, 1),
        "not_measured": not_measured,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def print_table(result: dict) -> None:
    s = result["setup"]
    print(f"\n{s['model']}: UNet {s['unet_params'] or 0:,} parameters ({result['unet_float32_mb']:.0f} MB in float32), "
          f"latent {s['latent']}x{s['latent']} ({s['image_px']} px), {s['prompts']} prompts in batches of "
          f"{s['batch']}, {s['steps']} DDIM steps, guidance {s['guidance']}, {s['dtype']} on {s['device']} "
          f"({s['threads']} threads, load average {s['load_average']}); {result['wall_seconds']:.0f} s")
    print("| ratio | measured |\n| --- | --- |")
    for name, value in result["ratios"].items():
        print(f"| {name} | {'not measured' if value is None else value} |")
    seconds = result["seconds"]
    print("seconds:", ", ".join(f"{k} {v}" for k, v in seconds.items()))
    print("CPU seconds:", ", ".join(f"{k} {v}" for k, v in result["cpu_seconds"].items()))
    memory = ", ".join(f"{k} +{v['growth_mb']:.0f} (whole {v['peak_mb']:.0f})" for k, v in result["memory_mb"].items()
                       if v)
    print(f"memory MB, growth over the start (whole-process peak): {memory or 'none'}")
    if result["params_file_mb"] is not None:
        print(f"params file {result['params_file_mb']} MB; UNet in float32 {result['unet_float32_mb']} MB")
    elif s["quantized_weights"]:  # what its 8-bit weight codes alone would take
        print(f"params file not measured (the 8-bit codes of its {s['quantized_weights']:,} quantized weights alone: "
              f"{s['quantized_weights'] / MB:.0f} MB); UNet in float32 {result['unet_float32_mb']} MB")
    for name, reason in result["not_measured"].items():
        print(f"not measured: {name}: {reason}")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "both", "tiny"], default="sd15")
    parser.add_argument("--latent", type=int, default=16, help="latent side (image side / 8; tiny: / 2)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--cache-weights", action="store_true",
                        help="calibrate(cache_weights=True): a dequantized copy of every weight, not one per call")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: every CPU this process may use); "
                        "on a shared machine 1 keeps the ratios steady")
    parser.add_argument("--max-gib", type=float, default=12.0,
                        help="end a measuring process whose resident set passes this (default 12)")
    parser.add_argument("--out", type=Path, default=OUT / "sd_scale.json")
    parser.add_argument("--measure", choices=["fp", "calib", "timings"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    OUT.mkdir(exist_ok=True)
    if args.measure:
        return measure(args)

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    failed = False
    for model in (["sd15", "sdxl"] if args.model == "both" else [args.model]):
        result = measure_model(args, model)
        print_table(result)
        results[f"{model} {args.dtype} {args.device} latent {args.latent}"
                + (" cached weights" if args.cache_weights else "")] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        failed |= any(reason.startswith("failed") for reason in result["not_measured"].values())
    print(f"\nwritten: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
