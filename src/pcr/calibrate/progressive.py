"""Progressive calibration (PCR) in one pass, and the baselines on the same loop.

PCR calibrates step i on the trajectory the *quantized* model produced for steps < i. The reference
code re-runs the quantized pipeline from x_T for every i (about N^2/2 UNet calls per prompt). Here
all prompt batches move through the steps together, and at each step i (one UNet call of the
scheduler: PNDM's N steps are N + 1 calls, Heun's 2N - 1; see pcr.pipelines.sampling):

1. observe: every batch's UNet call at step i, weights quantized, activations not, feeds the
   observers of step i;
2. fix: step i's activation parameters are set from those observers (per-step methods);
3. advance: every batch takes step i, with the trajectory's model: the quantized one (progressive,
   step i's parameters now final) or the full-precision one (every other method).

That is 2N UNet calls per prompt and gives exactly the re-run form's parameters (a test checks it).
Shared-parameter methods (naive, qdiff, ptq4dm) observe the steps they choose into one set of
observers and fix one range for all steps at the end. Only activations are held for one step at a
time as observer state, never stored.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from pcr.calibrate.observers import make_observer
from pcr.pipelines.sampling import DenoisingBatch, prepare_batch
from pcr.quant.config import ACT_METHODS, QuantConfig
from pcr.quant.layers import QuantLayerMixin
from pcr.quant.model import quant_mode

__all__ = ["observed_steps", "prepare_batches", "calibrate_activations", "calibrate_progressive_rerun"]


def observed_steps(config: QuantConfig, timesteps: list[int], num_train_timesteps: int) -> dict[int, int]:
    """{step: weight} of the steps whose activations a method observes.

    all: every step once. uniform (Q-Diffusion): ``uniform_steps`` steps evenly spaced over the
    trajectory. skewed_normal (PTQ4DM): ``ptq4dm_draws`` timesteps drawn from a normal with mean
    ``ptq4dm_mean * T`` and standard deviation T / 2, clipped to [0, T), each mapped to the nearest
    sampled timestep; a step drawn k times weighs k.
    """
    n = len(timesteps)
    rule = ACT_METHODS[config.method]["steps"]
    if rule == "all":
        return {i: 1 for i in range(n)}
    if rule == "uniform":
        picks = np.unique(np.linspace(0, n - 1, min(config.uniform_steps, n)).round().astype(int))
        return {int(i): 1 for i in picks}
    rng = np.random.default_rng(config.seed)
    draws = rng.normal(config.ptq4dm_mean * num_train_timesteps, num_train_timesteps / 2, config.ptq4dm_draws)
    draws = np.clip(draws, 0, num_train_timesteps - 1)
    nearest = np.abs(np.asarray(timesteps, dtype=float)[None, :] - draws[:, None]).argmin(1)
    steps, counts = np.unique(nearest, return_counts=True)
    return {int(s): int(c) for s, c in zip(steps, counts)}


def prepare_batches(pipe, prompts: list[str], seeds: list[int], config: QuantConfig) -> list[DenoisingBatch]:
    """The calibration prompts in batches of ``config.batch_size``, at the configured steps and resolution."""
    size = config.batch_size
    return [prepare_batch(pipe, prompts[i:i + size], seeds[i:i + size], config.num_steps, config.guidance_scale,
                          config.height, config.width)
            for i in range(0, len(prompts), size)]


def _new_observers(layers: dict[str, QuantLayerMixin], config: QuantConfig) -> dict:
    return {name: make_observer(config.act_observer, config.ema_momentum, config.percentile) for name in layers}


def _observe_step(unet, layers: dict[str, QuantLayerMixin], batches: list[DenoisingBatch], step: int,
                  observers: dict, weight: float) -> None:
    """Every batch's UNet call at ``step``, weights quantized and activations not, feeds ``observers``."""
    for name, layer in layers.items():
        layer.act_quantizer.observer = lambda x, _step, o=observers[name]: o.update(x, weight)
    try:
        with quant_mode(unet, weights=True, acts=False):
            for batch in batches:
                batch.model_output(unet, step)
    finally:
        for layer in layers.values():
            layer.act_quantizer.observer = None


def _fix(layers: dict[str, QuantLayerMixin], observers: dict, step: int, bits: int, symmetric: bool) -> None:
    for name, layer in layers.items():
        lo, hi = observers[name].range(bits, symmetric)
        layer.act_quantizer.set_step(step, lo, hi, bits)


@torch.no_grad()
def calibrate_activations(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int],
                          config: QuantConfig, act_bits: list[int], progress: bool = True) -> dict:
    """Set every layer's activation parameters for every step by ``config.method``; returns timings.

    The layers' weights must be calibrated already: activations are observed with weights quantized.
    """
    unet, method = pipe.unet, ACT_METHODS[config.method]
    batches = prepare_batches(pipe, prompts, seeds, config)
    timesteps = [int(t) for t in batches[0].scheduler.timesteps]
    weights = observed_steps(config, timesteps, pipe.scheduler.config.num_train_timesteps)
    quantized_trajectory = method["trajectory"] == "quantized"

    if len(act_bits) != len(timesteps):
        raise ValueError(f"act_bits has {len(act_bits)} entries, but num_steps={config.num_steps} makes "
                         f"{len(timesteps)} UNet calls with {type(pipe.scheduler).__name__}")
    shared = None if config.per_step else _new_observers(layers, config)
    start, calls = time.perf_counter(), 0
    for step in tqdm(range(len(timesteps)), desc=f"activations ({config.method})", disable=not progress):
        if step in weights:
            observers = shared if shared is not None else _new_observers(layers, config)
            _observe_step(unet, layers, batches, step, observers, weights[step])
            calls += len(batches)
            if shared is None:
                _fix(layers, observers, step, act_bits[step], config.act_symmetric)
        elif shared is None:
            raise AssertionError(f"per-step method {config.method} skipped step {step}")
        with quant_mode(unet, weights=quantized_trajectory, acts=quantized_trajectory):
            for batch in batches:
                batch.advance(step, batch.model_output(unet, step))
        calls += len(batches)
    if shared is not None:  # one range for all steps; relaxed steps put more levels in it
        for bits in sorted(set(act_bits)):
            ranges = {name: shared[name].range(bits, config.act_symmetric) for name in layers}
            for step in (s for s, b in enumerate(act_bits) if b == bits):
                for name, layer in layers.items():
                    layer.act_quantizer.set_step(step, *ranges[name], bits)
    return {"act_seconds": time.perf_counter() - start, "act_unet_calls": calls, "observed_steps": weights,
            "timesteps": timesteps, "resolution": list(batches[0].size)}


@torch.no_grad()
def calibrate_progressive_rerun(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int],
                                config: QuantConfig, act_bits: list[int], progress: bool = True) -> dict:
    """The reference code's form of progressive calibration, kept to check the one-pass form against
    and to time it: for every step i, sample again from x_T with the quantized model (steps < i
    final), observe step i with its activations unquantized, fix step i. About N^2 / 2 UNet calls."""
    unet, start, calls = pipe.unet, time.perf_counter(), 0
    for i in tqdm(range(len(act_bits)), desc="activations (progressive, re-run form)", disable=not progress):
        batches = prepare_batches(pipe, prompts, seeds, config)
        with quant_mode(unet, weights=True, acts=True):
            for step in range(i):
                for batch in batches:
                    batch.advance(step, batch.model_output(unet, step))
        observers = _new_observers(layers, config)
        _observe_step(unet, layers, batches, i, observers, 1)
        _fix(layers, observers, i, act_bits[i], config.act_symmetric)
        calls += (i + 1) * len(batches)
    return {"act_seconds": time.perf_counter() - start, "act_unet_calls": calls}
