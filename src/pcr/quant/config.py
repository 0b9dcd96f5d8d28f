"""One serializable description of a quantization: bits, granularity, kept layers, relaxing, and how
it is calibrated. Saved with every set of parameters and hashed into every result's provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import InitVar, dataclass

from pcr.quant.relaxing import ROUNDINGS, RelaxSpec

__all__ = ["ACT_METHODS", "ADAROUND_KEYS", "BACKENDS", "OBSERVE_ACTS", "OBSERVE_WEIGHTS", "OBSERVERS", "WEIGHT_KEYS",
           "WEIGHT_METHODS", "QuantConfig", "ConfigError"]

# Activation calibration methods: parameters per step?, the trajectory observed, default observer, steps
# observed, and the default observation (what the observed model quantizes; see observe_* below).
# perstep and progressive default to the reference code's (tsa18/PCR) semantics: per-step ranges of the
# FP model on the FP trajectory, then a progressive pass that observes with weights quantized and every
# upstream activation fake-quantized with the first pass's parameters, never recalibrating the last call.
ACT_METHODS = {
    "naive": dict(per_step=False, trajectory="fp", observer="minmax", steps="all", weights="quantized", acts="fp"),
    "qdiff": dict(per_step=False, trajectory="fp", observer="mse", steps="uniform", weights="quantized", acts="fp"),
    "ptq4dm": dict(per_step=False, trajectory="fp", observer="mse", steps="skewed_normal", weights="quantized",
                   acts="fp"),
    "perstep": dict(per_step=True, trajectory="fp", observer="ema", steps="all", weights="fp", acts="fp"),
    "progressive": dict(per_step=True, trajectory="quantized", observer="ema", steps="all", weights="quantized",
                        acts="first_pass"),
}
OBSERVERS = ("minmax", "ema", "percentile", "mse")
# What the observed model quantizes while a layer's input is observed: its weights (fp | quantized), and
# the activations upstream of the layer in the same UNet call: fp (not quantized), first_pass (quantized
# with the call's parameters from a first pass of per-step ranges observed on the FP model and trajectory:
# the reference's progressive pass), or sequential (layers fixed in call order, each observed with every
# upstream layer quantized with its final parameters of that call).
OBSERVE_WEIGHTS = ("fp", "quantized")
OBSERVE_ACTS = ("fp", "first_pass", "sequential")
WEIGHT_METHODS = ("minmax", "mse", "adaround")
BACKENDS = ("simulated", "integer")  # pcr.quantize(..., backend=): fake quantization in float, or int8 kernels
GRANULARITIES = ("channel", "tensor")
# What a weight calibration depends on: configs that agree on these share one (the workflow's
# shared weight step; calibrate(..., weights=) checks them). AdaRound also reads sampled data.
WEIGHT_KEYS = ("weight_bits", "weight_granularity", "weight_symmetric", "keep_fp", "weight_method")
ADAROUND_KEYS = ("weight_iters", "weight_samples", "num_steps", "guidance_scale", "seed", "height", "width")


class ConfigError(ValueError):
    """A quantization config key is missing, unknown or out of range; the message names it, and ``key``
    is the key (so the workflow's plan can name its path in the config file)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


_OLD_NAME_UNSET = object()  # relax_ratio not given (None given means "no interval")


@dataclass(frozen=True)
class QuantConfig:
    """What is quantized and how it is calibrated.

    ``num_steps`` is num_inference_steps, as a user passes it to the pipeline. Per-step parameters
    are kept per UNet call, and the scheduler decides how many calls N steps make (PNDM N + 1, Heun
    2N - 1, most others N; ``pcr.pipelines.sampling.count_unet_calls``), so what depends on the
    count takes ``num_calls``. Calls are counted in sampling order: call 0 sees pure noise (x_T),
    the last one is near x_0; ``relax_steps`` are call indices and ``relax_interval`` an interval of
    the run as shares of its calls, turned into calls by ``relax_rounding`` (pcr.quant.relaxing; the
    reference code's rule by default). The paper relaxes the last 20% for SD (``relax_interval=(0.8,
    1.0)``) and the first 20% for SDXL (``(0.0, 0.2)``). ``height``/``width`` are the calibration
    images' size in pixels (None: the pipeline's default); the profile's sampling size belongs there.

    ``relax_ratio`` is the old name of ``relax_interval``, kept so code and saved parameters that use
    it still work: given, it sets ``relax_interval`` and, unless ``relax_rounding`` is given too, the
    rounding it always had (``centre``), so an old file's config still names the calls it relaxed.
    ``config.relax_ratio`` reads ``relax_interval``.

    Every key is checked when a config is made (ConfigError, its ``key`` the key at fault); what depends
    on the scheduler's call count is checked by ``check_calls`` (the workflow's plan does, per regime).
    """

    weight_bits: int = 8
    act_bits: int = 8
    weight_granularity: str = "channel"  # one (scale, zero point) per output channel, or per tensor
    weight_symmetric: bool = False
    act_symmetric: bool = False
    keep_fp: tuple[str, ...] = ("conv_in", "conv_out")  # fnmatch patterns on UNet module names
    method: str = "progressive"  # activation calibration, a key of ACT_METHODS
    observer: str | None = None  # None: the method's default
    ema_momentum: float = 0.99  # ema observer: new = m * old + (1 - m) * batch (the reference: 0.99)
    observe_weights: str | None = None  # fp | quantized; None: the method's default (ACT_METHODS)
    observe_acts: str | None = None  # fp | first_pass | sequential; None: the method's default
    recalibrate_last: bool | None = None  # with a first pass: observe the last call again (None: the
    # reference's choice, no: its re-run loop stops one call short); without one it is always observed
    percentile: float = 99.99  # percentile observer: the range is [100 - p, p] percentiles
    uniform_steps: int = 10  # qdiff: how many steps, evenly spaced, are observed
    ptq4dm_draws: int = 64  # ptq4dm: how many steps are drawn from its skewed normal
    ptq4dm_mean: float = 0.4  # ptq4dm: mean of the normal over timesteps, as a fraction of T (0 = x_0)
    weight_method: str = "minmax"  # minmax | mse | adaround (AdaRound/BRECQ block reconstruction)
    weight_iters: int = 500  # adaround: optimisation steps per block
    weight_samples: int = 128  # adaround: (prompt, step) inputs drawn from the FP trajectory
    relax_interval: tuple[float, float] | None = None  # relax the calls of this [lo, hi] share of the run
    relax_rounding: str | None = None  # reference | centre (pcr.quant.relaxing); None: reference
    relax_steps: tuple[int, ...] | None = None  # or relax these step indices
    relax_auto_bits: float | None = None  # or pick steps by measured sensitivity, this average bit budget
    relax_bits: int = 10
    num_steps: int = 20  # num_inference_steps
    guidance_scale: float = 7.5
    height: int | None = None  # calibration resolution in pixels; None: the pipeline's default
    width: int | None = None
    seed: int = 0
    batch_size: int = 8
    relax_ratio: InitVar[tuple[float, float] | None] = _OLD_NAME_UNSET  # the old name of relax_interval

    def __post_init__(self, relax_ratio=_OLD_NAME_UNSET):
        if relax_ratio is not _OLD_NAME_UNSET:
            self._take_old_relax_name(relax_ratio)
        for key in ("weight_bits", "act_bits", "relax_bits"):
            _number(key, getattr(self, key), 2, 16, integer=True)
        _choice("weight_granularity", self.weight_granularity, GRANULARITIES)
        _choice("method", self.method, tuple(ACT_METHODS))
        if self.observer is not None:
            _choice("observer", self.observer, OBSERVERS)
        _choice("weight_method", self.weight_method, WEIGHT_METHODS)
        self._check_observation()
        self._check_values()
        if self.relax_rounding is not None:
            _choice("relax_rounding", self.relax_rounding, ROUNDINGS)
        self._check_relax()

    def _check_values(self) -> None:
        """Types and ranges of the keys that are plain values."""
        for key in ("num_steps", "batch_size", "uniform_steps", "ptq4dm_draws", "weight_iters", "weight_samples"):
            _number(key, getattr(self, key), 1, None, integer=True)
        _number("seed", self.seed, 0, None, integer=True)
        _number("ema_momentum", self.ema_momentum, 0.0, 1.0, hi_open=True)
        _number("percentile", self.percentile, 50.0, 100.0, lo_open=True)
        _number("ptq4dm_mean", self.ptq4dm_mean, 0.0, 1.0)
        _number("guidance_scale", self.guidance_scale, 0.0, None, lo_open=True,
                why=" (classifier-free guidance; 1 or less samples without it)")
        for key in ("weight_symmetric", "act_symmetric"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}", key)
        keep = self.keep_fp
        if not isinstance(keep, (list, tuple)) or not all(isinstance(p, str) for p in keep):
            raise ConfigError(f"keep_fp must be a list of fnmatch patterns on UNet module names (e.g. [conv_in]), "
                              f"got {keep!r}", "keep_fp")
        object.__setattr__(self, "keep_fp", tuple(keep))
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 8):
                raise ConfigError(f"{key} must be a whole number of pixels >= 8 or None, got {value!r}", key)

    def _check_relax(self) -> None:
        """The relax_* keys (RelaxSpec checks each) and what they must be beside act_bits."""
        spec = self.relax
        for key in ("relax_interval", "relax_steps"):  # as the spec holds them: tuples
            object.__setattr__(self, key, getattr(spec, key.removeprefix("relax_")))
        if spec.relaxes and self.relax_bits < self.act_bits:
            raise ConfigError(f"relax_bits={self.relax_bits} is below act_bits={self.act_bits}: relaxing would "
                              f"lower the relaxed calls' bits; raise relax_bits to at least {self.act_bits} or drop "
                              "the relax_* keys", "relax_bits")
        if self.relax_auto_bits is None:
            return
        if self.relax_bits <= self.act_bits:
            raise ConfigError(f"relax_auto_bits needs relax_bits above act_bits={self.act_bits} (got relax_bits="
                              f"{self.relax_bits}): it spends a budget on calls at relax_bits; raise relax_bits",
                              "relax_bits")
        if not self.act_bits <= self.relax_auto_bits <= self.relax_bits:
            raise ConfigError(f"relax_auto_bits must lie in [act_bits={self.act_bits}, relax_bits={self.relax_bits}] "
                              f"(an average of activation bits over the calls), got {self.relax_auto_bits}",
                              "relax_auto_bits")

    def _take_old_relax_name(self, interval) -> None:
        """``relax_ratio`` given: it is relax_interval with the rounding it had (see the class docstring)."""
        if interval is not None:
            try:
                interval = RelaxSpec(interval=interval).interval
            except ConfigError as err:
                raise ConfigError(f"relax_ratio (the old name of relax_interval): {err}", "relax_ratio") from None
        if interval == self.relax_interval:  # nothing new (dataclasses.replace passes config.relax_ratio)
            return
        if interval is not None and self.relax_interval is not None:
            raise ConfigError(f"relax_ratio is the old name of relax_interval; give one, got relax_ratio="
                              f"{list(interval)} and relax_interval={list(self.relax_interval)}", "relax_ratio")
        object.__setattr__(self, "relax_interval", interval if interval is not None else self.relax_interval)
        if interval is not None and self.relax_rounding is None:
            object.__setattr__(self, "relax_rounding", "centre")

    def _check_observation(self) -> None:
        if self.observe_weights is not None:
            _choice("observe_weights", self.observe_weights, OBSERVE_WEIGHTS)
        if self.observe_acts is not None:
            _choice("observe_acts", self.observe_acts, OBSERVE_ACTS)
            if not self.per_step and self.observe_acts != "fp":
                raise ConfigError(f"observe_acts={self.observe_acts!r} needs per-step parameters (method perstep or "
                                  f"progressive); {self.method} observes with activations unquantized (fp)",
                                  "observe_acts")
        if self.recalibrate_last is not None and not isinstance(self.recalibrate_last, bool):
            raise ConfigError(f"recalibrate_last must be true, false or null, got {self.recalibrate_last!r}",
                              "recalibrate_last")
        if self.recalibrate_last is False and self.act_observation != "first_pass":
            raise ConfigError("recalibrate_last=false keeps the last call's first-pass parameters, so it needs "
                              f"observe_acts='first_pass' (got {self.act_observation!r})", "recalibrate_last")

    # -- what the method implies ------------------------------------------------------------------
    @property
    def per_step(self) -> bool:
        """One set of activation parameters per sampling step (perstep, progressive) or one shared."""
        return ACT_METHODS[self.method]["per_step"]

    @property
    def act_observer(self) -> str:
        return self.observer or ACT_METHODS[self.method]["observer"]

    @property
    def weight_observation(self) -> str:
        """Whether activations are observed with the weights quantized or FP (``observe_weights``)."""
        return self.observe_weights or ACT_METHODS[self.method]["weights"]

    @property
    def act_observation(self) -> str:
        """How the activations upstream of an observed layer are quantized (``observe_acts``)."""
        return self.observe_acts or ACT_METHODS[self.method]["acts"]

    @property
    def observes_last(self) -> bool:
        """Whether the per-step pass observes the last UNet call (else it keeps its first-pass parameters)."""
        if self.act_observation != "first_pass":
            return True
        return bool(self.recalibrate_last)

    @property
    def relax(self) -> RelaxSpec:
        """The relaxing these keys ask for: the one place relaxed calls and their bits are computed."""
        return RelaxSpec(self.relax_interval, self.relax_steps, self.relax_auto_bits, self.relax_bits,
                         self.relax_rounding or "reference")

    def act_bits_per_step(self, num_calls: int | None = None, relaxed: tuple[int, ...] | None = None) -> list[int]:
        """Activation bits of each of ``num_calls`` UNet calls (None: num_steps, a scheduler that makes
        one call per step). ``relaxed`` overrides the configured calls (auto relaxing)."""
        num_calls = self.num_steps if num_calls is None else num_calls
        return self.relax.bits_per_call(self.act_bits, num_calls, relaxed, self.num_steps)

    def check_calls(self, num_calls: int) -> None:
        """Refuse relaxing that a run of ``num_calls`` UNet calls cannot do: calls it does not make, an
        interval that relaxes none (the scheduler decides the count: see the class docstring)."""
        self.relax.check_calls(num_calls, self.num_steps)

    def relaxed_steps(self, num_calls: int | None = None) -> tuple[int, ...]:
        """The relaxed UNet calls of a run of ``num_calls`` (None: num_steps), given by relax_interval or
        relax_steps (auto relaxing decides at calibration)."""
        num_calls = self.num_steps if num_calls is None else num_calls
        return self.relax.calls(num_calls, self.num_steps)

    # -- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> QuantConfig:
        """Build from a plain dict (YAML, a JSON header); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)} | {"relax_ratio"}  # the old name, in saved files
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown quantization config key(s) {unknown}; known keys: {sorted(known)}",
                              unknown[0])
        values = dict(values)
        for key in ("keep_fp", "relax_interval", "relax_ratio", "relax_steps"):
            if isinstance(values.get(key), list):  # anything else: the constructor names what is wrong
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes) -> QuantConfig:
        if "relax_ratio" in changes:  # the old name: as in the constructor, with its rounding
            interval = changes.pop("relax_ratio")
            changes["relax_interval"] = None if interval is None else tuple(interval)
            if interval is not None:
                changes.setdefault("relax_rounding", "centre")
        return dataclasses.replace(self, **{"relax_ratio": _OLD_NAME_UNSET, **changes})

    def digest(self) -> str:
        """12 hex digits identifying this config, for result names and provenance."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ``config.relax_ratio`` reads the interval (the InitVar above only takes the old name at construction)
QuantConfig.relax_ratio = property(lambda self: self.relax_interval, doc="The old name of relax_interval.")


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}", key)


def _number(key: str, value, lo: float, hi: float | None, *, integer: bool = False, lo_open: bool = False,
            hi_open: bool = False, why: str = "") -> None:
    """Refuse a value that is not a number (bools are not) in the range, naming the range."""
    kind = "an integer" if integer else "a number"
    if hi is None:
        where = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        where = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        raise ConfigError(f"{key} must be {kind} {where}{why}, got {value!r}", key)
