"""Progressive calibration (PCR) in one pass, and the baselines on the same loop.

PCR calibrates step i on the trajectory the *quantized* model produced for steps < i. The reference
code (tsa18/PCR) re-runs the quantized pipeline from x_T for every i (about N^2/2 UNet calls per
prompt). Here all prompt batches move through the steps together, and at each step i (one UNet call
of the scheduler: PNDM's N steps are N + 1 calls, Heun's 2N - 1; see pcr.pipelines.sampling):

1. observe: every batch's UNet call at step i feeds the observers of step i, under the config's
   observation (``observe_weights``, ``observe_acts``; pcr.calibrate.observation);
2. fix: step i's activation parameters are set from those observers (per-step methods);
3. advance: every batch takes step i, with the trajectory's model: the quantized one (progressive,
   step i's parameters now final) or the full-precision one (every other method).

With ``observe_acts='first_pass'`` (progressive's default, the reference's semantics) a first pass of
per-step ranges on the FP model and trajectory (the reference's non-progressive parameters) comes
before, and the last call keeps its first-pass parameters unless ``recalibrate_last``. That is 2N
UNet calls per prompt per pass and gives exactly the re-run form's parameters for every observation
(tests check each). Shared-parameter methods (naive, qdiff, ptq4dm) observe the steps they choose
into one set of observers and fix one range for all steps at the end. Only activations are held for
one step at a time as observer state, never stored.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from pcr.calibrate.observation import fix_step, new_observers, observe_call, observe_layer_by_layer
from pcr.pipelines.sampling import DenoisingBatch, prepare_batch
from pcr.quant.config import ACT_METHODS, QuantConfig
from pcr.quant.layers import QuantLayerMixin
from pcr.quant.model import quant_mode

__all__ = ["observed_steps", "prepare_batches", "calibrate_activations", "calibrate_rerun",
           "calibrate_progressive_rerun"]

# The first pass of observe_acts='first_pass': per-step ranges of the FP model on the FP trajectory.
_FIRST_PASS = dict(method="perstep", observe_weights="fp", observe_acts="fp", recalibrate_last=None)


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


def _trajectory_quantized(config: QuantConfig) -> bool:
    return ACT_METHODS[config.method]["trajectory"] == "quantized"


@torch.no_grad()
def calibrate_activations(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int],
                          config: QuantConfig, act_bits: list[int], progress: bool = True) -> dict:
    """Set every layer's activation parameters for every step by ``config.method``; returns timings.

    The layers' weights must be calibrated already (``observe_weights='quantized'`` observes with them).
    """
    batches = prepare_batches(pipe, prompts, seeds, config)
    timesteps = [int(t) for t in batches[0].scheduler.timesteps]
    if len(act_bits) != len(timesteps):
        raise ValueError(f"act_bits has {len(act_bits)} entries, but num_steps={config.num_steps} makes "
                         f"{len(timesteps)} UNet calls with {type(pipe.scheduler).__name__}")
    start = time.perf_counter()
    if not config.per_step:
        weights = observed_steps(config, timesteps, pipe.scheduler.config.num_train_timesteps)
        calls = _shared_pass(pipe.unet, layers, batches, config, act_bits, weights, progress)
        return {"act_seconds": time.perf_counter() - start, "act_unet_calls": calls, "observed_steps": weights,
                "timesteps": timesteps, "resolution": list(batches[0].size)}
    calls = 0
    if config.act_observation == "first_pass":
        calls += _per_step_pass(pipe.unet, layers, batches, config.replace(**_FIRST_PASS), act_bits,
                                range(len(timesteps)), progress, "first pass")
        batches = prepare_batches(pipe, prompts, seeds, config)
    observed = range(len(timesteps) if config.observes_last else len(timesteps) - 1)
    calls += _per_step_pass(pipe.unet, layers, batches, config, act_bits, observed, progress, config.method)
    return {"act_seconds": time.perf_counter() - start, "act_unet_calls": calls,
            "observed_steps": {i: 1 for i in observed}, "timesteps": timesteps, "resolution": list(batches[0].size)}


def _per_step_pass(unet, layers, batches: list[DenoisingBatch], config: QuantConfig, act_bits: list[int],
                   observed: range, progress: bool, desc: str) -> int:
    """Observe and fix each step in ``observed`` in turn, advancing the batches on the method's
    trajectory; the UNet calls made."""
    quantized, calls = _trajectory_quantized(config), 0
    for step in tqdm(observed, desc=f"activations ({desc})", disable=not progress):  # 0, 1, ... in order
        observers = new_observers(layers, config)
        observe_call(unet, layers, batches, step, observers, config, act_bits[step])
        calls += 1 if config.act_observation == "sequential" else len(batches)  # sequential: one merged call
        if config.act_observation != "sequential":
            fix_step(layers, observers, step, act_bits[step], config.act_symmetric)
        if step == observed[-1]:
            break  # nothing after the last observed call is needed
        with quant_mode(unet, weights=quantized, acts=quantized):
            for batch in batches:
                batch.advance(step, batch.model_output(unet, step))
        calls += len(batches)
    return calls


def _shared_pass(unet, layers, batches: list[DenoisingBatch], config: QuantConfig, act_bits: list[int],
                 weights: dict[int, int], progress: bool) -> int:
    """Observe the chosen steps on the FP trajectory into one set of observers; one range for all steps
    (relaxed steps put more levels in it)."""
    shared, calls = new_observers(layers, config), 0
    for step in tqdm(range(max(weights) + 1), desc=f"activations ({config.method})", disable=not progress):
        if step in weights:
            observe_call(unet, layers, batches, step, shared, config, act_bits[step], weights[step])
            calls += len(batches)
        if step == max(weights):
            break
        with quant_mode(unet, weights=False, acts=False):
            for batch in batches:
                batch.advance(step, batch.model_output(unet, step))
        calls += len(batches)
    for bits in sorted(set(act_bits)):
        ranges = {name: shared[name].range(bits, config.act_symmetric) for name in layers}
        for step in (s for s, b in enumerate(act_bits) if b == bits):
            for name, layer in layers.items():
                layer.act_quantizer.set_step(step, *ranges[name], bits)
    return calls


@torch.no_grad()
def calibrate_rerun(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int],
                    config: QuantConfig, act_bits: list[int], progress: bool = True) -> dict:
    """The reference code's form of per-step calibration, kept to check the one-pass form against and
    to time it: for every step i, sample again from x_T on the method's trajectory (the quantized
    model with steps < i final, or the FP model) and observe step i under the config's observation
    (sequential by its definition, one UNet call per layer), then fix it. About N^2 / 2 UNet calls
    per pass (the reference's first pass is its ordinary FP calibration, one pass)."""
    if not config.per_step:
        raise ValueError(f"the re-run form is per-step calibration; {config.method} shares one range")
    start, calls, n = time.perf_counter(), 0, len(act_bits)
    passes = [(config.replace(**_FIRST_PASS), range(n))] if config.act_observation == "first_pass" else []
    passes.append((config, range(n if config.observes_last else n - 1)))
    for cfg, observed in passes:
        quantized = _trajectory_quantized(cfg)
        for i in tqdm(observed, desc="activations (re-run form)", disable=not progress):
            batches = prepare_batches(pipe, prompts, seeds, cfg)
            with quant_mode(pipe.unet, weights=quantized, acts=quantized):
                for step in range(i):
                    for batch in batches:
                        batch.advance(step, batch.model_output(pipe.unet, step))
            if cfg.act_observation == "sequential":
                observe_layer_by_layer(pipe.unet, layers, batches, i, cfg, act_bits[i])
            else:
                observers = new_observers(layers, cfg)
                observe_call(pipe.unet, layers, batches, i, observers, cfg, act_bits[i])
                fix_step(layers, observers, i, act_bits[i], cfg.act_symmetric)
            calls += (i + 1) * len(batches)
    return {"act_seconds": time.perf_counter() - start, "act_unet_calls": calls}


calibrate_progressive_rerun = calibrate_rerun  # the old name
