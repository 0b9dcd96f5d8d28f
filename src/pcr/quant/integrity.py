"""Integrity checks: numbers that must be finite, and params files that must be what was saved.

One NaN in one weight spreads to most activations of a UNet call; calibrated on, it gave NaN ranges
that were saved, loaded and quantized into NaN (black) images without a word. So the numbers are
checked where they appear: the float weights before calibrating or quantizing, the observed
activation ranges at the UNet call they come from, the parameters when saved and loaded. A params
file also carries a sha256 of every tensor, so damaged bytes fail to load instead of giving other
images. Every check is one vectorised pass per tensor and one device sync per batch of tensors.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from pcr.quant.quantizer import qrange

__all__ = ["NonFiniteError", "ParamsFileError", "check_act_ranges", "check_params", "check_weights",
           "find_nonfinite", "tensor_checksums", "verify_checksums"]

RECALIBRATE = ("Recalibrate: delete the file and run the calibration again (pcr.calibrate.calibrate and "
               "pcr.quant.save_params, or the workflow's calibration rule).")


class NonFiniteError(ValueError):
    """NaN or infinite numbers where finite ones belong; the message names the tensor, layer or call."""


class ParamsFileError(ValueError):
    """Quantization parameters that cannot be trusted: damaged bytes, a broken header, impossible codes."""


def _counts(t: torch.Tensor) -> str:
    """'1 NaN', '2 inf' or '1 NaN and 2 inf' of a tensor known to hold some."""
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return " and ".join(part for part in (f"{nan} NaN" * bool(nan), f"{inf} inf" * bool(inf)) if part)


def _stack_on_one_device(values: list[torch.Tensor]) -> torch.Tensor:
    device = values[0].device
    return torch.stack([v.to(device) for v in values])


def find_nonfinite(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: '1 NaN'} of the floating-point tensors holding NaN or inf.

    A tensor's sum is NaN or inf whenever one of its numbers is, and summing is one fast pass (70x
    faster than torch.isfinite on the CPU); only tensors whose sum is not finite (NaN, inf, or an
    overflow of finite numbers) are checked number by number. One device sync in all."""
    floats = {name: t.detach() for name, t in tensors.items() if t.is_floating_point()}
    if not floats:
        return {}
    sums = _stack_on_one_device([t.sum().float() for t in floats.values()])
    if bool(torch.isfinite(sums).all()):
        return {}
    suspects = [name for name, ok in zip(floats, torch.isfinite(sums).tolist()) if not ok]
    return {name: _counts(floats[name]) for name in suspects if not bool(torch.isfinite(floats[name]).all())}


def _listing(bad: dict[str, str], limit: int = 3) -> str:
    shown = ", ".join(f"{name} has {what}" for name, what in list(bad.items())[:limit])
    return shown + (f" (and {len(bad) - limit} more tensors)" if len(bad) > limit else "")


def check_weights(unet: torch.nn.Module, prefix: str = "unet") -> None:
    """Refuse a UNet with NaN or inf parameters before anything is calibrated or quantized with it."""
    bad = find_nonfinite({f"{prefix}.{name}": p for name, p in unet.named_parameters()})
    if bad:
        raise NonFiniteError(
            f"{_listing(bad)}; the checkpoint is corrupt (or was damaged when loaded or converted). One NaN "
            "spreads to most activations, so calibrating on it gives NaN ranges and NaN (black) images. "
            "Load the model from an intact copy (download or convert it again).")


def check_act_ranges(ranges: dict[str, torch.Tensor], call: int, num_calls: int, timestep=None) -> None:
    """Refuse the (lo, hi) activation ranges observed at one UNet call if any is not finite, naming the
    layers (in the order given) and the call."""
    if not ranges:
        return
    values = _stack_on_one_device([r.reshape(2).float() for r in ranges.values()])
    finite = torch.isfinite(values).all(1)
    if bool(finite.all()):
        return
    names = [name for name, ok in zip(ranges, finite.tolist()) if not ok]
    lo, hi = ranges[names[0]].reshape(2).tolist()
    at = f"UNet call {call} of {num_calls}" + ("" if timestep is None else f" (timestep {int(timestep)})")
    raise NonFiniteError(
        f"Calibration observed a non-finite activation range at {at} in {len(names)} of {len(ranges)} layers: "
        f"unet.{names[0]} ({lo}, {hi}), then {['unet.' + n for n in names[1:3]]}. The model's activations "
        "are NaN or overflow on the calibration prompts, and these ranges would give NaN (black) images. "
        "Calibrate in float32 (float16 overflows above 65504), and check the model's weights, text encoder "
        "and guidance scale.")


def tensor_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: sha256 hex} of each tensor's dtype, shape and bytes, as saved in a params file's header."""
    out = {}
    for name, t in sorted(tensors.items()):
        digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        out[name] = digest.hexdigest()
    return out


def verify_checksums(path: str | Path, tensors: dict[str, torch.Tensor], expected: dict[str, str] | None) -> None:
    """Refuse a file whose tensors are not the ones saved; files saved before checksums load with a warning."""
    if expected is None:
        warnings.warn(f"{path} has no checksums of its tensors (saved before pcr stored them), so damaged bytes "
                      "in it cannot be detected. Save it again with pcr.quant.save_params(path, load_params(path)) "
                      "or recalibrate.", UserWarning, stacklevel=3)
        return
    actual = tensor_checksums(tensors)
    wrong = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
    if wrong:
        raise ParamsFileError(
            f"{path} is damaged: {len(wrong)} of its {len(expected)} tensors (e.g. {wrong[:3]}) are not the bytes "
            f"saved with it (their sha256 differs or they are missing). {RECALIBRATE}")


def check_params(layers: dict[str, dict[str, torch.Tensor]], weight_bits: int, weight_symmetric: bool,
                 keys: tuple[str, ...], source: str | Path | None = None) -> None:
    """Refuse parameters with missing tensors, NaN or inf, weight codes or zero points outside the
    ``weight_bits`` grid, or scales that are not positive; ``source`` (a file) is named in the error."""
    where = "" if source is None else f" in {source}"
    missing = [f"{name}.{key}" for name, tensors in layers.items() for key in keys if key not in tensors]
    if missing:
        raise ParamsFileError(f"The parameters{where} lack {len(missing)} tensors, e.g. {missing[:3]}. {RECALIBRATE}")
    bad = find_nonfinite({f"{name}.{key}": t for name, tensors in layers.items() for key, t in tensors.items()})
    if bad:
        raise NonFiniteError(f"{_listing(bad)}{where}: quantized with them every image comes out NaN (black). "
                             f"{RECALIBRATE}")
    qmin, qmax = qrange(weight_bits, weight_symmetric)
    checked = {f"{name}.{key}": tensors[key] for name, tensors in layers.items()
               for key in ("weight_codes", "weight_zero_point")}
    if not checked:
        return
    extremes = _stack_on_one_device([torch.stack([v.int() for v in torch.aminmax(t)]) for t in checked.values()])
    outside = [name for name, (lo, hi) in zip(checked, extremes.tolist()) if lo < qmin or hi > qmax]
    if outside:
        lo, hi = extremes[list(checked).index(outside[0])].tolist()
        raise ParamsFileError(
            f"{outside[0]} holds values in [{lo}, {hi}], outside the {weight_bits}-bit grid [{qmin}, {qmax}] "
            f"({len(outside)} such tensors){where}: damaged, or written by a broken writer. {RECALIBRATE}")
    scales = {f"{name}.{key}": tensors[key] for name, tensors in layers.items()
              for key in ("weight_scale", "act_scale")}
    positive = _stack_on_one_device([(t > 0).all() for t in scales.values()])
    if not bool(positive.all()):
        name = list(scales)[positive.tolist().index(False)]
        raise ParamsFileError(f"{name}{where} has scales that are not positive. {RECALIBRATE}")
