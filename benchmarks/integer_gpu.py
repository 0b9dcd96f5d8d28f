"""The integer backend on a GPU: SD 1.5 UNet forward, float16 vs int8 kernels, 512x512, batch 2 (issue 13's goal:
>= 1.3x faster than float16). Prepared for a CUDA machine; it has not run on one yet (README, "Integer backend").

One UNet with SD 1.5's real config and random weights, W8A8 with pcr's default config (per-channel
asymmetric min-max weights, each layer's activation range from one float forward), as
``pcr.quantize(..., backend="integer")`` leaves it (``freeze_integer``): Linear layers on
``torch._int_mm`` (padded to CUDA's shape rules), convolutions dequantized from their int8 codes per
call (PyTorch has no int8 convolution on CUDA), float16 activations around them. Prints the median
forward times, their ratio, the UNet's weight memory (``weight_bytes``) and the peak GPU memory of a
forward (``torch.cuda.max_memory_allocated``) of each, and the integer layer calls per kernel path.

    .venv/bin/python benchmarks/integer_gpu.py                                     # CUDA, float16, 64x64 latents
    .venv/bin/python benchmarks/integer_gpu.py --device cpu --dtype float32 --latent 8   # smoke test of the paths
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from diffusers import UNet2DConditionModel
from integer_kernels import quantize, unet_config, unet_inputs  # beside this script

from pcr.pipelines.steps import StepTracker
from pcr.quant.freeze import freeze_integer, weight_bytes

MIB = 2**20


def timed(forward, device: str, repeats: int) -> tuple[float, float]:
    """(median ms of ``repeats`` calls after a warm-up, peak GPU MiB during them; 0 off CUDA)."""
    forward()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        forward()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / MIB if device == "cuda" else 0.0
    return 1000 * statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--latent", type=int, default=64, help="latent side (64: 512x512 images)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = unet_config("sd15")
    unet = UNet2DConditionModel(**config).eval().to(args.device, dtype)
    tracker = StepTracker.attach(type("Pipe", (), {"unet": unet})())
    (sample, timestep, text), _ = unet_inputs(config, args.latent)
    inputs = (sample.to(args.device, dtype), timestep.to(args.device), text.to(args.device, dtype))

    def forward():
        return unet(*inputs)

    float_bytes = weight_bytes(unet)
    with tracker.at(0, 1):
        float_ms, float_peak = timed(forward, args.device, args.repeats)
        for layer in quantize(unet, forward, 8, cache_weights=False):
            layer.quant_weights, layer.act_quantizer.enabled = True, True
        counts: Counter = freeze_integer(unet)
        int_bytes = weight_bytes(unet)
        int_ms, int_peak = timed(forward, args.device, args.repeats)
    calls = sum(counts.values())
    print(f"torch {torch.__version__}, {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else ''})"
          f", {args.dtype}, SD 1.5 UNet, batch 2, {args.latent}x{args.latent} latents, median of {args.repeats}")
    print(f"    {args.dtype} {float_ms:.1f} ms, integer W8A8 {int_ms:.1f} ms: {args.dtype} / integer "
          f"{float_ms / int_ms:.2f} (goal >= 1.3 on CUDA at 64x64)")
    print(f"    weight memory {float_bytes / MIB:.0f} -> {int_bytes / MIB:.0f} MiB ({int_bytes / float_bytes:.2f}x); "
          f"peak GPU memory of a forward {float_peak:.0f} -> {int_peak:.0f} MiB")
    print("    integer layer calls: " + ", ".join(f"{n / calls:.0%} {path}" for path, n in counts.most_common()))


if __name__ == "__main__":
    main()
