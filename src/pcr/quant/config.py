"""One serializable description of a quantization: bits, granularity, kept layers, relaxing, and how
it is calibrated. Saved with every set of parameters and hashed into every result's provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["ACT_METHODS", "ADAROUND_KEYS", "OBSERVERS", "WEIGHT_KEYS", "WEIGHT_METHODS", "QuantConfig", "ConfigError"]

# Activation calibration methods: (parameters per step?, trajectory, default observer, steps observed).
ACT_METHODS = {
    "naive": dict(per_step=False, trajectory="fp", observer="minmax", steps="all"),
    "qdiff": dict(per_step=False, trajectory="fp", observer="mse", steps="uniform"),
    "ptq4dm": dict(per_step=False, trajectory="fp", observer="mse", steps="skewed_normal"),
    "perstep": dict(per_step=True, trajectory="fp", observer="ema", steps="all"),
    "progressive": dict(per_step=True, trajectory="quantized", observer="ema", steps="all"),
}
OBSERVERS = ("minmax", "ema", "percentile", "mse")
WEIGHT_METHODS = ("minmax", "mse", "adaround")
GRANULARITIES = ("channel", "tensor")
# What a weight calibration depends on: configs that agree on these share one (the workflow's
# shared weight step; calibrate(..., weights=) checks them). AdaRound also reads sampled data.
WEIGHT_KEYS = ("weight_bits", "weight_granularity", "weight_symmetric", "keep_fp", "weight_method")
ADAROUND_KEYS = ("weight_iters", "weight_samples", "num_steps", "guidance_scale", "seed", "height", "width")


class ConfigError(ValueError):
    """A quantization config key is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class QuantConfig:
    """What is quantized and how it is calibrated.

    ``num_steps`` is num_inference_steps, as a user passes it to the pipeline. Per-step parameters
    are kept per UNet call, and the scheduler decides how many calls N steps make (PNDM N + 1, Heun
    2N - 1, most others N; ``pcr.pipelines.sampling.count_unet_calls``), so what depends on the
    count takes ``num_calls``. Calls are counted in sampling order: call 0 sees pure noise (x_T),
    the last one is near x_0; ``relax_steps`` are call indices and ``relax_ratio`` a share of the
    calls. The paper relaxes the last 20% for SD (``relax_ratio=(0.8, 1.0)``) and the first 20% for
    SDXL (``(0.0, 0.2)``). ``height``/``width`` are the calibration images' size in pixels (None: the
    pipeline's default); the profile's sampling size belongs there.
    """

    weight_bits: int = 8
    act_bits: int = 8
    weight_granularity: str = "channel"  # one (scale, zero point) per output channel, or per tensor
    weight_symmetric: bool = False
    act_symmetric: bool = False
    keep_fp: tuple[str, ...] = ("conv_in", "conv_out")  # fnmatch patterns on UNet module names
    method: str = "progressive"  # activation calibration, a key of ACT_METHODS
    observer: str | None = None  # None: the method's default
    ema_momentum: float = 0.9  # ema observer: new = m * old + (1 - m) * batch
    percentile: float = 99.99  # percentile observer: the range is [100 - p, p] percentiles
    uniform_steps: int = 10  # qdiff: how many steps, evenly spaced, are observed
    ptq4dm_draws: int = 64  # ptq4dm: how many steps are drawn from its skewed normal
    ptq4dm_mean: float = 0.4  # ptq4dm: mean of the normal over timesteps, as a fraction of T (0 = x_0)
    weight_method: str = "minmax"  # minmax | mse | adaround (AdaRound/BRECQ block reconstruction)
    weight_iters: int = 500  # adaround: optimisation steps per block
    weight_samples: int = 128  # adaround: (prompt, step) inputs drawn from the FP trajectory
    relax_ratio: tuple[float, float] | None = None  # relax steps with (i + 0.5) / N in [lo, hi]
    relax_steps: tuple[int, ...] | None = None  # or relax these step indices
    relax_auto_bits: float | None = None  # or pick steps by measured sensitivity, this average bit budget
    relax_bits: int = 10
    num_steps: int = 20  # num_inference_steps
    guidance_scale: float = 7.5
    height: int | None = None  # calibration resolution in pixels; None: the pipeline's default
    width: int | None = None
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        for key in ("weight_bits", "act_bits", "relax_bits"):
            bits = getattr(self, key)
            if not isinstance(bits, int) or not 2 <= bits <= 16:
                raise ConfigError(f"{key} must be an integer in [2, 16], got {bits!r}")
        _choice("weight_granularity", self.weight_granularity, GRANULARITIES)
        _choice("method", self.method, tuple(ACT_METHODS))
        if self.observer is not None:
            _choice("observer", self.observer, OBSERVERS)
        _choice("weight_method", self.weight_method, WEIGHT_METHODS)
        for key in ("num_steps", "batch_size", "uniform_steps", "ptq4dm_draws", "weight_iters", "weight_samples"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        given = [k for k in ("relax_ratio", "relax_steps", "relax_auto_bits") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give at most one of relax_ratio, relax_steps, relax_auto_bits; got {given}")
        if self.relax_ratio is not None:
            lo, hi = self.relax_ratio
            if not 0.0 <= lo <= hi <= 1.0:
                raise ConfigError(f"relax_ratio must be [lo, hi] with 0 <= lo <= hi <= 1, got {list(self.relax_ratio)}")
        if self.relax_steps is not None:
            bad = [s for s in self.relax_steps if not isinstance(s, int) or s < 0]
            if bad:
                raise ConfigError(f"relax_steps must be UNet-call indices >= 0, got {bad}")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 8):
                raise ConfigError(f"{key} must be a whole number of pixels >= 8 or None, got {value!r}")
        if self.relax_auto_bits is not None and not self.act_bits <= self.relax_auto_bits <= self.relax_bits:
            raise ConfigError(f"relax_auto_bits must lie in [act_bits={self.act_bits}, relax_bits={self.relax_bits}], "
                              f"got {self.relax_auto_bits}")

    # -- what the method implies ------------------------------------------------------------------
    @property
    def per_step(self) -> bool:
        """One set of activation parameters per sampling step (perstep, progressive) or one shared."""
        return ACT_METHODS[self.method]["per_step"]

    @property
    def act_observer(self) -> str:
        return self.observer or ACT_METHODS[self.method]["observer"]

    def act_bits_per_step(self, num_calls: int | None = None, relaxed: tuple[int, ...] | None = None) -> list[int]:
        """Activation bits of each of ``num_calls`` UNet calls (None: num_steps, a scheduler that makes
        one call per step). ``relaxed`` overrides the configured calls (auto relaxing)."""
        num_calls = self.num_steps if num_calls is None else num_calls
        relaxed = self.relaxed_steps(num_calls) if relaxed is None else relaxed
        return [self.relax_bits if i in relaxed else self.act_bits for i in range(num_calls)]

    def relaxed_steps(self, num_calls: int | None = None) -> tuple[int, ...]:
        """The relaxed UNet calls of a run of ``num_calls`` (None: num_steps), given by relax_ratio (call i
        when (i + 0.5) / num_calls lies in the interval) or relax_steps (auto relaxing decides at calibration)."""
        num_calls = self.num_steps if num_calls is None else num_calls
        if self.relax_steps is not None:
            bad = sorted(s for s in set(self.relax_steps) if s >= num_calls)
            if bad:
                raise ConfigError(f"relax_steps {bad} are outside the {num_calls} UNet calls of num_steps="
                                  f"{self.num_steps} (calls 0..{num_calls - 1})")
            return tuple(sorted(set(self.relax_steps)))
        if self.relax_ratio is not None:
            lo, hi = self.relax_ratio
            return tuple(i for i in range(num_calls) if lo <= (i + 0.5) / num_calls <= hi)
        return ()

    # -- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> QuantConfig:
        """Build from a plain dict (YAML, a JSON header); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown quantization config key(s) {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        for key in ("keep_fp", "relax_ratio", "relax_steps"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """12 hex digits identifying this config, for result names and provenance."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
