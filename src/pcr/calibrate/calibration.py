"""``calibrate(pipe, prompts, config) -> QuantParams``: weights, then activations, then relaxing.

The pipeline is left as it came: its UNet is quantized for the calibration and unquantized after,
with its float weights untouched. ``pcr.quantize(pipe, params)`` makes it (or any copy of the
model) quantized afterwards.
"""

from __future__ import annotations

import time

from pcr.bench.prompts import prompt_list
from pcr.calibrate.progressive import calibrate_activations
from pcr.calibrate.relax import pick_relaxed_steps, set_step_bits, step_gains
from pcr.calibrate.weights import calibrate_weights
from pcr.pipelines.sampling import count_unet_calls
from pcr.pipelines.steps import StepTracker
from pcr.quant.config import ACT_METHODS, ADAROUND_KEYS, WEIGHT_KEYS, QuantConfig
from pcr.quant.integrity import check_weights
from pcr.quant.model import quantize_unet, unquantize_unet
from pcr.quant.params import QuantParams, apply_weights, collect_params

__all__ = ["calibrate", "calibrate_weights_only"]


def _model_name(pipe) -> str:
    return getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None) or type(pipe).__name__


def calibrate(pipe, prompts: list[str], config: QuantConfig | dict, model: str | None = None,
              weights: QuantParams | None = None, progress: bool = True, cache_weights: bool = False) -> QuantParams:
    """Calibrate weight and activation quantization of ``pipe``'s UNet on ``prompts``.

    Prompt i is sampled with seed ``config.seed + i`` through ``config.num_steps`` inference steps
    (every UNet call the pipeline's scheduler makes for them) at ``config.height`` x ``config.width``.
    ``model`` names the pipeline in the saved parameters (a pcr spec such as "toy:results/toy/model");
    by default the pipeline's own path. ``weights``: parameters of an earlier calibration with the
    same weight settings, whose weight codes are reused (weight calibration is shared by all
    activation methods; AdaRound is costly). ``cache_weights`` keeps a dequantized copy of every
    weight instead of dequantizing per UNet call: faster where weights dominate a call (small
    latents on a CPU), at about 2x the FP model's memory instead of 1.25x (benchmarks/sd_scale.py).
    """
    config = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(config)
    prompts = prompt_list(prompts, "calibrate")
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("calibrate needs a non-empty list of prompt strings.")
    seeds, num_calls = _start(pipe, prompts, config)
    act_bits = config.act_bits_per_step(num_calls)  # checks relax_steps against the calls
    # no cached weight copy by default: calibration holds the float weights (FP trajectories) and the
    # codes, and a third copy made it peak at 2.0x FP sampling's memory at SD 1.5 scale (1.26x without)
    layers = quantize_unet(pipe.unet, config, num_calls, cache_weights=cache_weights)
    info: dict = {"prompts": len(prompts), "dtype": str(pipe.unet.dtype).removeprefix("torch.")}
    try:
        if weights is not None:
            _reuse_weights(layers, weights, config)
            info["weights_from"] = weights.config.digest()
        else:
            info.update(_calibrate_weights(pipe, layers, prompts, seeds, config, progress))

        info.update(calibrate_activations(pipe, layers, prompts, seeds, config, act_bits, progress))
        if config.relax_auto_bits is not None:
            act_bits = _relax_auto(pipe, layers, prompts, seeds, config, info, progress)
        timesteps, resolution = info.pop("timesteps"), info.pop("resolution")
        info["observed_steps"] = {str(k): v for k, v in info["observed_steps"].items()}
        params = collect_params(pipe.unet, config, act_bits, timesteps, type(pipe.scheduler).__name__,
                                model or _model_name(pipe), info, resolution)
        params.check()  # what save_params would refuse is refused here, before the caller uses it
        return params
    finally:
        unquantize_unet(pipe.unet)


def calibrate_weights_only(pipe, prompts: list[str], config: QuantConfig | dict, model: str | None = None,
                           progress: bool = True) -> QuantParams:
    """The weight step of ``calibrate`` alone, saved once and reused (``calibrate(..., weights=)``) by
    every activation method with the same weight settings. Its activation parameters are unset, so
    ``pcr.quantize`` refuses it. ``prompts`` feed AdaRound; min-max and MSE weights do not read them."""
    config = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(config)
    prompts = prompt_list(prompts, "calibrate_weights_only")
    seeds, num_calls = _start(pipe, prompts, config)
    layers = quantize_unet(pipe.unet, config, num_calls, cache_weights=False)
    try:
        info = {"weights_only": True, "prompts": len(prompts),
                **_calibrate_weights(pipe, layers, prompts, seeds, config, progress)}
        return collect_params(pipe.unet, config, config.act_bits_per_step(num_calls), [],
                              type(pipe.scheduler).__name__, model or _model_name(pipe), info)
    finally:
        unquantize_unet(pipe.unet)


def _start(pipe, prompts: list[str], config: QuantConfig) -> tuple[list[int], int]:
    """(seed of each prompt, UNet calls per sampling run), with the pipeline's StepTracker attached and
    its UNet's weights checked (a NaN weight makes most activation ranges NaN)."""
    check_weights(pipe.unet)
    StepTracker.attach(pipe)
    return [config.seed + i for i in range(len(prompts))], count_unet_calls(pipe.scheduler, config.num_steps)


def _calibrate_weights(pipe, layers, prompts, seeds, config: QuantConfig, progress: bool) -> dict:
    start = time.perf_counter()
    info = {}
    if config.weight_method == "adaround":
        from pcr.calibrate.adaround import reconstruct_weights

        if not prompts:
            raise ValueError("AdaRound weight calibration needs calibration prompts.")
        info.update(reconstruct_weights(pipe, layers, prompts, seeds, config, progress))
    else:
        calibrate_weights(layers, config.weight_method, progress)
    info["weight_seconds"] = time.perf_counter() - start
    return info


def _relax_auto(pipe, layers, prompts, seeds, config: QuantConfig, info: dict, progress: bool) -> list[int]:
    """Measure step sensitivity on every calibration prompt, relax the best steps; per-step calibration
    is redone where the observed model quantizes activations (a relaxed step changes the quantized
    trajectory after it, or the upstream activations inside it)."""
    start = time.perf_counter()
    sensitivity = step_gains(pipe, layers, prompts, seeds, config, progress)
    relaxed = pick_relaxed_steps(sensitivity["gains"], config)
    act_bits = config.act_bits_per_step(len(sensitivity["gains"]), relaxed)
    quantized_inside = ACT_METHODS[config.method]["trajectory"] == "quantized" or config.act_observation != "fp"
    if quantized_inside:  # relaxed steps change what later steps (or layers) observe: calibrate again
        calibrate_activations(pipe, layers, prompts, seeds, config, act_bits, progress)
    else:
        for step in relaxed:
            set_step_bits(layers, step, config.relax_bits)
    info["relax_auto"] = {**sensitivity, "relaxed_steps": list(relaxed), "seconds": time.perf_counter() - start}
    return act_bits


def _reuse_weights(layers, weights: QuantParams, config: QuantConfig) -> None:
    keys = WEIGHT_KEYS + (ADAROUND_KEYS if config.weight_method == "adaround" else ())
    differ = [k for k in keys if getattr(weights.config, k) != getattr(config, k)]
    if differ:
        raise ValueError(f"The given weights were calibrated with other weight settings ({differ} differ); "
                         "calibrate the weights for this config instead.")
    weights.check()  # NaN scales or impossible codes would be carried into every activation method
    apply_weights(layers, weights)
