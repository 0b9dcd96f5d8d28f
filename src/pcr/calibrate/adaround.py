"""AdaRound weight rounding, optimised block by block (BRECQ), as Q-Diffusion does for diffusion UNets.

Units are the UNet's ResNet blocks and transformer blocks; each quantized layer outside them is a
unit of its own. Units are taken in the order the UNet runs them. For each unit, its inputs come
from the model whose earlier units are already quantized, its targets from the full-precision
model, both at (prompt, step) points drawn from the FP sampling trajectory of the calibration
prompts. Each weight learns whether it rounds up or down (a rectified sigmoid h(V), pushed to 0 or
1 by an annealed regulariser) to minimise the unit's output error.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pcr.calibrate.progressive import prepare_batches
from pcr.calibrate.weights import weight_range
from pcr.pipelines.steps import get_step_tracker
from pcr.quant.config import QuantConfig
from pcr.quant.layers import QuantLayerMixin
from pcr.quant.model import quant_mode
from pcr.quant.quantizer import affine_params, qrange

__all__ = ["reconstruct_weights", "collect_unet_inputs", "reconstruction_units"]

UNIT_CLASSES = ("ResnetBlock2D", "BasicTransformerBlock")
ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid
ROUND_WEIGHT, WARMUP, BETA = 0.01, 0.2, (20.0, 2.0)  # AdaRound's regulariser and its annealing
BATCH = 32  # (prompt, step) points per optimisation step


class _Stop(Exception):
    """Raised after the unit of interest ran, to skip the rest of the UNet."""


def _rows(obj, rows: torch.Tensor):
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() > 0 else obj
    if isinstance(obj, dict):
        return {k: _rows(v, rows) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rows(v, rows) for v in obj)
    return obj


def _cat(items: list):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(items) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: _cat([item[k] for item in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([item[i] for item in items]) for i in range(len(first)))
    return first


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


@torch.no_grad()
def collect_unet_inputs(pipe, prompts: list[str], seeds: list[int], config: QuantConfig) -> list[tuple]:
    """UNet inputs (sample, timesteps, kwargs) at ``config.weight_samples`` (prompt, UNet call) points of
    the FP trajectory, drawn uniformly with the config's seed, in calls of up to BATCH points (on the CPU)."""
    batches = prepare_batches(pipe, prompts, seeds, config)
    num_calls = batches[0].num_calls
    total = len(prompts) * num_calls
    picked = np.random.default_rng(config.seed).choice(total, min(config.weight_samples, total), replace=False)
    picked = set(picked.tolist())  # point id = prompt index * num_calls + call
    points, offset = [], 0
    with quant_mode(pipe.unet, weights=False, acts=False):
        for batch in batches:
            size = batch.latents.shape[0]
            for step in range(num_calls):
                local = [j for j in range(size) if (offset + j) * num_calls + step in picked]
                if local:
                    model_in, t, kwargs = batch.unet_inputs(step)
                    rows = torch.tensor(local + ([j + size for j in local] if batch.guided else []))
                    timesteps = t.expand(len(rows)) if t.dim() == 0 else t[rows]
                    points.append(_to((model_in[rows], timesteps, _rows(kwargs, rows)), "cpu"))
                batch.advance(step, batch.model_output(pipe.unet, step))
            offset += size
    return [_cat(points[i:i + BATCH]) for i in range(0, len(points), BATCH)]


def _call_unet(unet: nn.Module, call: tuple) -> None:
    """One stored call. Its points come from several steps; with activation quantization off no
    layer reads the step, so the tracker is simply told step 0."""
    sample, t, kwargs = _to(call, unet.device)
    with get_step_tracker(unet).at(0):
        unet(sample, t, **kwargs)


def reconstruction_units(unet: nn.Module, layers: dict[str, QuantLayerMixin],
                         example: tuple) -> list[tuple[str, nn.Module]]:
    """(name, module) of every unit in the order the UNet calls them."""
    blocks = {n: m for n, m in unet.named_modules() if type(m).__name__ in UNIT_CLASSES}
    units = dict(blocks)
    for name, layer in layers.items():
        if not any(name.startswith(block + ".") for block in blocks):
            units[name] = layer
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
             for n, m in units.items()]
    try:
        with quant_mode(unet, weights=False, acts=False), torch.no_grad():
            _call_unet(unet, example)
    finally:
        for h in hooks:
            h.remove()
    return [(n, units[n]) for n in order]


@torch.no_grad()
def _unit_io(unet: nn.Module, unit: nn.Module, calls: list[tuple], want: str) -> list:
    """The unit's (args, kwargs) or output for each stored UNet call, stopping the UNet after it."""
    seen = []

    def pre(mod, args, kwargs):
        if want == "inputs":
            seen.append(_to((args, kwargs), "cpu"))
            raise _Stop

    def post(mod, args, output):
        seen.append(_to(output, "cpu"))
        raise _Stop

    handle = (unit.register_forward_pre_hook(pre, with_kwargs=True) if want == "inputs"
              else unit.register_forward_hook(post))
    try:
        for call in calls:
            try:
                _call_unet(unet, call)
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


class _SoftRounding:
    """A layer's weight as (floor + h(V)) codes; V starts where h(V) equals the rounding remainder."""

    def __init__(self, layer: QuantLayerMixin, range_method: str):
        wq = layer.weight_quantizer
        self.layer, self.bits, self.symmetric = layer, wq.bits, wq.symmetric
        self.scale, self.zero_point = affine_params(*weight_range(layer, range_method), wq.bits, wq.symmetric)
        shape = [-1] + [1] * (layer.weight.dim() - 1) if wq.axis is not None else []
        self.s = self.scale.reshape(shape).to(layer.weight.device)
        self.z = self.zero_point.reshape(shape).to(layer.weight.device).float()
        scaled = layer.weight.detach().float() / self.s
        self.floor = scaled.floor()
        rest = (scaled - self.floor).clamp(0.01, 0.99)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def weight(self, hard: bool = False) -> torch.Tensor:
        """Soft-rounded while optimised; hard (round up where V >= 0) as it will be stored."""
        qmin, qmax = qrange(self.bits, self.symmetric)
        up = (self.v >= 0).float() if hard else self.h()
        codes = torch.clamp(self.floor + up + self.z, qmin, qmax)
        return ((codes - self.z) * self.s).to(self.layer.weight.dtype)

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def finish(self) -> None:
        qmin, qmax = qrange(self.bits, self.symmetric)
        codes = torch.clamp(self.floor + (self.v >= 0).float() + self.z, qmin, qmax)
        self.layer.set_weight(self.scale, self.zero_point, codes.detach())


@torch.no_grad()
def _unit_error(unit: nn.Module, roundings: list[_SoftRounding], inputs: list, targets: list, device) -> float:
    """Mean squared output error of the unit over all points, with hard-rounded weights."""
    for r in roundings:
        r.layer.weight_override = lambda r=r: r.weight(hard=True)
    try:
        total, rows = 0.0, 0
        for (args, kwargs), target in zip(inputs, targets):
            out = unit(*_to(args, device), **_to(kwargs, device))
            total += (out - target.to(device)).pow(2).sum(1).mean().item() * len(target)
            rows += len(target)
    finally:
        for r in roundings:
            r.layer.weight_override = None
    return total / rows


def _optimise(unit: nn.Module, roundings: list[_SoftRounding], inputs: list, targets: list, iters: int,
              rng: np.random.Generator, device) -> float:
    args_all, kwargs_all = _cat([a for a, _ in inputs]), _cat([k for _, k in inputs])
    target_all = _cat(targets)
    rows = len(target_all)
    optimiser = torch.optim.Adam([r.v for r in roundings], lr=1e-3)
    for r in roundings:
        r.layer.weight_override = r.weight
    loss = torch.zeros(())
    try:
        for it in range(iters):
            pick = torch.from_numpy(rng.choice(rows, min(BATCH, rows), replace=False))
            out = unit(*_to(_rows(args_all, pick), device), **_to(_rows(kwargs_all, pick), device))
            loss = (out - _to(target_all[pick], device)).pow(2).sum(1).mean()
            progress = (it / iters - WARMUP) / (1 - WARMUP)
            if progress > 0:
                beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - progress)
                loss = loss + ROUND_WEIGHT * sum(r.regulariser(beta) for r in roundings)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    finally:
        for r in roundings:
            r.layer.weight_override = None
    return loss.item()


def reconstruct_weights(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int],
                        config: QuantConfig, progress: bool = True) -> dict:
    """Round every quantized weight by AdaRound, optimised per unit; returns timings and final losses."""
    start = time.perf_counter()
    unet = pipe.unet
    calls = collect_unet_inputs(pipe, prompts, seeds, config)
    units = reconstruction_units(unet, layers, calls[0])
    owner = {id(layer): unit_name for unit_name, unit in units for layer in unit.modules()
             if isinstance(layer, QuantLayerMixin)}
    rng = np.random.default_rng(config.seed)
    frozen = [p for p in unet.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = {}
    try:
        for unit_name, unit in tqdm(units, desc="weights (adaround)", disable=not progress):
            unit_layers = [layer for layer in layers.values() if owner.get(id(layer)) == unit_name]
            with quant_mode(unet, weights=False, acts=False):
                targets = _unit_io(unet, unit, calls, "outputs")
            for layer in layers.values():  # inputs from the model with the finished units quantized
                layer.quant_weights = layer.weight_quantizer.ready
            inputs = _unit_io(unet, unit, calls, "inputs")
            roundings = [_SoftRounding(layer, "mse") for layer in unit_layers]
            nearest = _unit_error(unit, roundings, inputs, targets, unet.device)  # V starts at nearest rounding
            with torch.enable_grad():
                _optimise(unit, roundings, inputs, targets, config.weight_iters, rng, unet.device)
            losses[unit_name] = [nearest, _unit_error(unit, roundings, inputs, targets, unet.device)]
            for r in roundings:
                r.finish()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for layer in layers.values():
            layer.quant_weights = False
    return {"adaround_seconds": time.perf_counter() - start, "adaround_units": len(units),
            "adaround_rows": sum(len(c[0]) for c in calls), "adaround_unit_error": losses}
