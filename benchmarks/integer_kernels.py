"""Float32 vs the integer kernels (pcr.quant.integer), side by side in one run, as ratios.

Rows: one Linear (x 4096x640 @ W 640x2560, an SD 1.5 64x64 feed-forward's first matmul, halved) and
one 3x3 convolution (320 -> 320 channels at 64x64, batch 2, SD 1.5's first level), each as
- float32: F.linear / F.conv2d on the float weight (what the FP model runs),
- fake: the quantized layer's simulated forward (fake-quantized input, dequantized cached weight),
- int8: ``integer_forward``, activation quantization and the zero-point terms included,
  with asymmetric (pcr's default, 8-bit: zero-point correction) and symmetric weights;
then whole UNet forwards, batch 2, W8A8 with pcr's default config, random weights, activation ranges
from one float forward: the toy UNet (pcr.toy.model's config, 32x32) and the SD 1.5 UNet (its real
config, ``--latent`` side, 32 by default: the integer layers' share grows with the latent area).
Each time is the median of ``--repeats`` calls after one warm-up call (which also prepares the int8
weights). No download.

    PCR_TORCH_THREADS=1 .venv/bin/python benchmarks/integer_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from collections import Counter

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from pcr.calibrate.weights import calibrate_weights, round_to_nearest, weight_range
from pcr.pipelines.checkpoints import UNET_CONFIGS
from pcr.pipelines.steps import StepTracker
from pcr.quant import QuantConfig, quant_layers, quant_mode, quantize_unet
from pcr.quant.integer import integer_forward, integer_kernels
from pcr.quant.layers import QuantConv2d, QuantLinear
from pcr.toy.model import toy_unet_config


def median_ms(fn, repeats: int) -> float:
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
def layer_rows(repeats: int) -> list[tuple]:
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
            rows.append((f"{name}, {'sym' if symmetric else 'asym'} W", float_ms, fake_ms, int_ms))
    return rows


def sd15_config() -> dict:
    return {k: v for k, v in UNET_CONFIGS["sd15"].items() if not k.startswith("_")}


def quantized_unet(config: dict, latent: int, batch: int = 2):
    """A random-weight UNet quantized W8A8 (pcr's defaults), with each layer's activation range at
    every call taken from one float forward; and its forward's inputs."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    tracker = StepTracker.attach(types.SimpleNamespace(unet=unet))
    args = (torch.randn(batch, config["in_channels"], latent, latent), torch.tensor(500),
            torch.randn(batch, 77, config["cross_attention_dim"]))
    layers = quantize_unet(unet, QuantConfig(weight_bits=8, act_bits=8, num_steps=1), num_calls=1)
    calibrate_weights(layers, "minmax", progress=False)
    ranges = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a: ranges.__setitem__(m, (a[0].min(), a[0].max())))
             for layer in layers.values()]
    with tracker.at(0, 1):
        unet(*args)
    for hook in hooks:
        hook.remove()
    for layer, (lo, hi) in ranges.items():
        layer.act_quantizer.set_step(0, lo, hi, 8)
    return unet, tracker, args


@torch.no_grad()
def unet_row(name: str, config: dict, latent: int, repeats: int) -> tuple:
    unet, tracker, args = quantized_unet(config, latent)
    with tracker.at(0, 1):
        float_ms = median_ms(lambda: unet(*args), repeats)
        with quant_mode(unet, weights=True, acts=True):
            fake_ms = median_ms(lambda: unet(*args), repeats)
            with integer_kernels(unet) as counts:
                int_ms = median_ms(lambda: unet(*args), repeats)
                prepared = [layer._int_weight.codes for layer in quant_layers(unet).values()]
    calls = sum(counts.values())
    paths = ", ".join(f"{n / calls:.0%} {path}" for path, n in Counter(counts).most_common())
    float_mib = sum(layer.weight.nbytes for layer in quant_layers(unet).values()) / 2**20
    int8_mib = sum(codes.numel() for codes in prepared) / 2**20  # int8 (oneDNN's packing too): a byte each
    memory = (f"int8 weights the kernels read: {int8_mib:.1f} MiB, float32: {float_mib:.1f} MiB "
              f"({int8_mib / float_mib:.2f}x; float weights, codes and their cache still held: issue 13 packs them)")
    return (f"{name} UNet forward, batch 2, {latent}x{latent}", float_ms, fake_ms, int_ms, f"layer calls: {paths}",
            memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent", type=int, default=32, help="SD 1.5 latent side (0: skip SD 1.5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.repeats}, ms")
    print(f"{'':62s} {'float32':>9s} {'fake':>9s} {'int8':>9s} {'float/int8':>10s} {'fake/int8':>9s}")

    def show(row):
        name, float_ms, fake_ms, int_ms, *note = row
        print(f"{name:62s} {float_ms:9.1f} {fake_ms:9.1f} {int_ms:9.1f} {float_ms / int_ms:10.2f} "
              f"{fake_ms / int_ms:9.2f}", flush=True)
        for line in note:
            print(f"    {line}")

    for row in layer_rows(args.repeats):
        show(row)
    show(unet_row("toy", toy_unet_config(), 32, args.repeats))
    if args.latent:
        show(unet_row("SD 1.5", sd15_config(), args.latent, max(1, args.repeats // 2)))


if __name__ == "__main__":
    main()
