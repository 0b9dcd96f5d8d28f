"""Calibrated quantization parameters: read from a quantized UNet, saved, loaded, applied to a pipeline.

One safetensors file holds every layer's weight codes (two per byte at 4 bits or fewer), scales and
zero points and its per-step activation parameters, never a float weight; its JSON header holds the
QuantConfig, the model, the scheduler, the step count and UNet calls and the resolution they were
calibrated for, and fingerprints of the float weights, so putting them on another model, scheduler or
step count is a clear error rather than silently wrong images. The header also holds a sha256 of every
tensor, checked on load, and the tensors are checked for NaN, inf and weight codes outside their bit
grid when saved and loaded (pcr.quant.integrity): a damaged file is an error naming it, never NaN
(black) images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pcr.io import atomic_file
from pcr.pipelines.sampling import scheduler_timesteps
from pcr.pipelines.steps import StepTracker
from pcr.quant.config import BACKENDS, QuantConfig
from pcr.quant.freeze import freeze_integer
from pcr.quant.integrity import (
    RECALIBRATE,
    ParamsFileError,
    check_params,
    check_weights,
    tensor_checksums,
    verify_checksums,
)
from pcr.quant.model import quant_layers, quantize_unet
from pcr.quant.packing import pack_codes, packable, unpack_codes
from pcr.quant.select import quantizable_layers

__all__ = ["QuantParams", "ParamsMismatchError", "act_range_rows", "apply_params", "apply_weights",
           "calibration_summary", "collect_params", "fingerprint", "load_params", "params_digest", "quantize",
           "save_params", "trajectory_ranges"]

FORMAT = "pcr.quant.params/2"  # /2: weight codes of <= 4 bits packed two per byte (pcr.quant.packing)
READABLE = ("pcr.quant.params/1", FORMAT)
TENSORS = ("weight_scale", "weight_zero_point", "weight_codes", "act_scale", "act_zero_point", "act_range",
           "fingerprint")


class ParamsMismatchError(ValueError):
    """Parameters loaded onto a model, scheduler or step count they were not calibrated for."""


@dataclass
class QuantParams:
    """Everything needed to quantize a pipeline again without calibrating."""

    config: QuantConfig
    act_bits: list[int]  # activation bits per UNet call of a sampling run, relaxed calls included
    timesteps: list[int]  # the scheduler's timestep of each call they were calibrated on, in sampling order
    scheduler: str  # scheduler class name
    model: str  # pipeline spec or class, for provenance
    layers: dict[str, dict[str, torch.Tensor]]  # layer name -> TENSORS
    info: dict = field(default_factory=dict)  # calibration report: timings, sensitivities, ...
    resolution: list[int] | None = None  # (height, width) in pixels the calibration sampled at

    @property
    def num_steps(self) -> int:
        """num_inference_steps they were calibrated for."""
        return self.config.num_steps

    @property
    def num_calls(self) -> int:
        """UNet calls per sampling run (one activation-parameter slot each)."""
        return len(self.act_bits)

    @property
    def avg_act_bits(self) -> float:
        return sum(self.act_bits) / len(self.act_bits)

    @property
    def step_dependent(self) -> bool:
        """False when every step has the same activation parameters (shared methods, no relaxing)."""
        return self.config.per_step or len(set(self.act_bits)) > 1

    def header(self) -> dict:
        return {"format": FORMAT, "config": self.config.to_dict(), "act_bits": self.act_bits,
                "timesteps": self.timesteps, "scheduler": self.scheduler, "model": self.model, "info": self.info,
                "num_inference_steps": self.num_steps, "num_unet_calls": self.num_calls,
                "resolution": self.resolution}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by its name in the file: '<layer>.<kind>'."""
        return {f"{name}.{key}": t for name, layer in self.layers.items() for key, t in layer.items()}

    def check(self, source: str | os.PathLike | None = None) -> None:
        """Refuse NaN or inf, missing tensors, and weight codes outside the bit grid (``source``: the file)."""
        check_params(self.layers, self.config.weight_bits, self.config.weight_symmetric, TENSORS, source)

    def digest(self) -> str:
        """params_digest(self)."""
        return params_digest(self)


def params_digest(params: QuantParams) -> str:
    """sha256 (hex) of what images quantized with ``params`` depend on: every tensor, the config, the act
    bits, timesteps, scheduler and resolution, but not ``info`` (timings, measured gains) nor the model's
    name, so an identical recalibration keeps the digest and the image folders made with it stay valid."""
    header = {k: v for k, v in params.header().items() if k not in ("info", "model")}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(json.dumps(tensor_checksums(params.tensors()), sort_keys=True).encode())
    return digest.hexdigest()


def fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """(mean, root mean square) of a float weight in float64: tells models apart, survives fp16 casts."""
    w = weight.detach().double()
    return torch.stack([w.mean(), w.pow(2).mean().sqrt()]).cpu()


def collect_params(unet: torch.nn.Module, config: QuantConfig, act_bits: list[int], timesteps: list[int],
                   scheduler: str, model: str, info: dict | None = None,
                   resolution: list[int] | None = None) -> QuantParams:
    """Read the calibrated parameters out of a quantized UNet."""
    layers = {}
    for name, layer in quant_layers(unet).items():
        wq, aq = layer.weight_quantizer, layer.act_quantizer
        if not wq.ready:
            raise RuntimeError(f"Layer {name} has no calibrated weights.")
        if layer.weight is None:
            raise RuntimeError(f"Layer {name} runs on the integer backend and released its float weight and "
                               "codes; save the parameters it was quantized with instead.")
        layers[name] = {
            "weight_scale": wq.scale, "weight_zero_point": wq.zero_point, "weight_codes": wq.codes,
            "act_scale": aq.scale.float(), "act_zero_point": aq.zero_point, "act_range": aq.range.float(),
            "fingerprint": fingerprint(layer.weight),
        }
        layers[name] = {k: v.detach().cpu().contiguous() for k, v in layers[name].items()}
    return QuantParams(config, list(act_bits), [int(t) for t in timesteps], scheduler, model, layers, info or {},
                       None if resolution is None else [int(v) for v in resolution])


def act_range_rows(params: QuantParams) -> list[dict]:
    """The calibrated activation range of every layer at every step, as rows (layer, step, lo, hi)."""
    return [{"layer": name, "step": step, "lo": lo, "hi": hi}
            for name, tensors in params.layers.items()
            for step, (lo, hi) in enumerate(tensors["act_range"].tolist())]


def trajectory_ranges(fp_trajectory: QuantParams, quantized_trajectory: QuantParams) -> list[dict]:
    """Rows (layer, step, trajectory, lo, hi) of a calibration on the FP trajectory (per-step) and one on
    the quantized trajectory (progressive): the table pcr.report.range_drift and its figure read."""
    return [{**row, "trajectory": label}
            for label, params in (("FP", fp_trajectory), ("quantized", quantized_trajectory))
            for row in act_range_rows(params)]


def apply_weights(layers: dict, params: QuantParams) -> None:
    """Set the saved weight codes of each quantized layer."""
    for name, layer in layers.items():
        tensors = params.layers[name]
        layer.set_weight(tensors["weight_scale"], tensors["weight_zero_point"], tensors["weight_codes"])


def apply_params(unet: torch.nn.Module, params: QuantParams) -> None:
    """Write parameters into the quantized layers of ``unet`` (made by quantize_unet with the same config)."""
    layers = quant_layers(unet)
    apply_weights(layers, params)
    for name, layer in layers.items():
        tensors = params.layers[name]
        aq = layer.act_quantizer
        device = aq.scale.device
        aq.scale = tensors["act_scale"].to(device)
        aq.zero_point = tensors["act_zero_point"].to(device)
        aq.range = tensors["act_range"].to(device)
        aq.bits = list(params.act_bits)
        aq.step_dependent = params.step_dependent
        aq.num_steps = params.num_steps


def save_params(path: str | os.PathLike, params: QuantParams) -> None:
    """Write ``params`` to one safetensors file (atomically), the JSON header in its metadata with a
    sha256 of every tensor; parameters with NaN, inf or impossible codes are refused, not written."""
    params.check()
    tensors = params.tensors()
    header = params.header()
    bits, symmetric = params.config.weight_bits, params.config.weight_symmetric
    if packable(bits):  # two codes per byte; the header keeps each layer's weight shape to unpack them
        header["packed_weight_shapes"] = {name: list(t["weight_codes"].shape) for name, t in params.layers.items()}
        for name, layer in params.layers.items():
            tensors[f"{name}.weight_codes"] = pack_codes(layer["weight_codes"], bits, symmetric)
    header["tensor_sha256"] = tensor_checksums(tensors)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"pcr": json.dumps(header)})


def load_params(path: str | os.PathLike) -> QuantParams:
    """Read parameters written by save_params; a missing, foreign or damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No quantization parameters at {path}; calibrate first (pcr.calibrate.calibrate "
                                "and pcr.quant.save_params, or the workflow's calibration rule).")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a safetensors file ({err}).") from None
    header = _read_header(path, metadata)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, kind = key.rpartition(".")
        layers.setdefault(name, {})[kind] = tensor
    try:
        params = QuantParams(QuantConfig.from_dict(header["config"]), header["act_bits"], header["timesteps"],
                             header["scheduler"], header["model"], layers, header.get("info", {}),
                             header.get("resolution"))
    except (KeyError, TypeError, ValueError) as err:
        raise ParamsFileError(f"{path}: its pcr header is incomplete or invalid ({type(err).__name__}: {err}); the "
                              f"file is damaged or was edited. {RECALIBRATE}") from None
    verify_checksums(path, tensors, header.get("tensor_sha256"))
    _unpack_weight_codes(path, params, header.get("packed_weight_shapes"))
    params.check(path)
    return params


def _unpack_weight_codes(path: Path, params: QuantParams, shapes: dict | None) -> None:
    """Weight codes a file holds packed two per byte, back to one code per element."""
    if shapes is None:
        return
    bits, symmetric = params.config.weight_bits, params.config.weight_symmetric
    for name, layer in params.layers.items():
        try:
            layer["weight_codes"] = unpack_codes(layer["weight_codes"], tuple(shapes[name]), bits, symmetric)
        except (KeyError, TypeError, ValueError) as err:
            raise ParamsFileError(f"{path}: the packed weight codes of {name} do not unpack ({err}); the file is "
                                  f"damaged or was edited. {RECALIBRATE}") from None


def _read_header(path: Path, metadata: dict) -> dict:
    """The file's pcr header; broken JSON or a foreign format is an error naming the file."""
    try:
        header = json.loads(metadata.get("pcr", "{}"))
    except json.JSONDecodeError as err:
        raise ParamsFileError(f"{path}: its pcr header is not valid JSON ({err}); the file is damaged or was "
                              f"edited. {RECALIBRATE}") from None
    if not isinstance(header, dict) or header.get("format") not in READABLE:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{path} holds no pcr quantization parameters (format {found!r}, expected one of "
                         f"{READABLE}).")
    return header


def calibration_summary(params: QuantParams) -> dict:
    """What a quantized model's images depend on, for their provenance."""
    return {"quant_config_hash": params.config.digest(), "scheduler": params.scheduler,
            "num_inference_steps": params.num_steps, "num_unet_calls": params.num_calls,
            "resolution": params.resolution, "avg_act_bits": params.avg_act_bits}


def check_compatible(pipe, params: QuantParams) -> None:
    """Refuse parameters calibrated for another model or scheduler, naming what differs."""
    expected = quantizable_layers(pipe.unet, params.config.keep_fp)
    missing, extra = sorted(set(params.layers) - set(expected)), sorted(set(expected) - set(params.layers))
    if missing or extra:
        raise ParamsMismatchError(
            f"The parameters do not fit this UNet (calibrated for {params.model}): layers {missing[:3]} are not in "
            f"it and its layers {extra[:3]} have no parameters. Calibrate this model.")
    wrong = []
    for name, layer in expected.items():
        saved = params.layers[name]
        if tuple(saved["weight_codes"].shape) != tuple(layer.weight.shape):
            wrong.append(f"{name} (shape {tuple(layer.weight.shape)} vs {tuple(saved['weight_codes'].shape)})")
            continue
        mean, rms = fingerprint(layer.weight)
        saved_mean, saved_rms = saved["fingerprint"]
        if abs(rms - saved_rms) > 1e-2 * saved_rms or abs(mean - saved_mean) > 1e-2 * saved_rms + 1e-12:
            wrong.append(f"{name} (other weights)")
    if wrong:
        raise ParamsMismatchError(
            f"The parameters were calibrated for another model ({params.model}); {len(wrong)} layers differ, "
            f"e.g. {wrong[:3]}. Calibrate this model, or load the model they were made for.")
    if params.step_dependent:
        _check_timesteps(pipe.scheduler, params)


def _check_timesteps(scheduler, params: QuantParams) -> None:
    """Per-step parameters belong to the scheduler's timesteps at their step count: another scheduler
    (or the same one configured otherwise) makes other calls at other timesteps."""
    name = type(scheduler).__name__
    timesteps = scheduler_timesteps(scheduler, params.num_steps)
    if name != params.scheduler or (params.timesteps and timesteps != params.timesteps):
        raise ParamsMismatchError(
            f"The per-step parameters were calibrated with {params.scheduler} at num_inference_steps="
            f"{params.num_steps} ({params.num_calls} UNet calls at timesteps {params.timesteps[:4]}...), but this "
            f"pipeline's {name} makes {len(timesteps)} calls at timesteps {timesteps[:4]}... for that step count. "
            "Use the scheduler (and scheduler config) they were calibrated with, or recalibrate.")


def quantize(pipe, params: QuantParams | str | os.PathLike, cache_weights: bool = True, backend: str = "simulated"):
    """Make ``pipe``'s UNet quantized with calibrated ``params`` (or a file of them), weights and activations.

    ``backend="simulated"`` fake-quantizes in float (reversible with ``unquantize_unet``). Its
    ``cache_weights`` keeps a dequantized copy of every weight beside the float weights and the codes
    (fast; about 2.25x the UNet's weight memory); False dequantizes per UNet call (about 1.25x): SDXL in
    float32 on a 24 GB machine needs it. ``backend="integer"`` runs int8 kernels with the calibrated
    activation parameters of each call and keeps only integer weights (``pcr.quant.freeze``): the
    float weights are released, so the pipeline cannot be unquantized; move it to its device first.
    ``pipe.unet.pcr_kernel_paths`` then counts the layer calls per kernel path (relaxed calls fall back).

    Per-step parameters are then only valid for runs of ``params.num_steps`` inference steps (their
    ``params.num_calls`` UNet calls); another step count stops the first UNet call with an error
    naming both. ``pipe.unet.pcr_calibration`` records what they were calibrated on (the
    generation provenance reads it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(params, QuantParams):
        params = load_params(params)  # checked there, naming the file
    else:
        params.check()
    if params.info.get("weights_only"):
        raise ValueError("These parameters hold calibrated weights only (the shared weight step); calibrate the "
                         "activations with pcr.calibrate.calibrate(..., weights=params) and quantize with that.")
    check_weights(pipe.unet)  # a NaN weight passes the fingerprint comparison (NaN compares False)
    check_compatible(pipe, params)
    StepTracker.attach(pipe)
    quantize_unet(pipe.unet, params.config, params.num_calls, cache_weights=cache_weights and backend == "simulated")
    apply_params(pipe.unet, params)
    pipe.unet.pcr_calibration = calibration_summary(params)
    for layer in quant_layers(pipe.unet).values():
        layer.quant_weights, layer.act_quantizer.enabled = True, True
    if backend == "integer":
        pipe.unet.pcr_calibration["backend"] = backend
        pipe.unet.pcr_kernel_paths = freeze_integer(pipe.unet)
    return pipe
