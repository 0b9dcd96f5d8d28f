"""What one run of the experiment is made of: a variant (a method's QuantConfig keys), a bit setting,
and the sampling regime it calibrates and samples in.

**Settings name the bits and the regime together.** A run's ``setting`` is its bit setting, "W4A6",
sampled in the config's ``sampling`` block (the default regime); in another regime it carries the
regime's name, "W4A6@s20_g7p5_euler". So a variant means the same QuantConfig keys in every regime,
paths keep their shape (results/calib/<variant>/<setting>.safetensors), and the FP reference and the
FP floor of a regime are the variants ``fp`` and ``fp-reseeded`` at setting "W32A32@<regime>".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pcr.quant.config import ConfigError
from pcr.quant.relaxing import RelaxSpec

__all__ = ["FLOOR", "FP", "FP_BITS", "RESEED", "SCHEDULER_CALLS", "ConfigProblem", "Regime", "Variant", "check_bits",
           "make_regime", "parse_bits", "sampling_regime"]

FP, FLOOR, FP_BITS = "fp", "fp-reseeded", "W32A32"  # FP reference images; FP from other seeds (noise floor)
RESEED = 100_000  # the floor's image i has seed  seed + RESEED + i
# UNet calls (a, b) = a * steps + b each scheduler of pcr.pipelines.schedulers makes (tests check them
# against diffusers; the planner loads no scheduler): PNDM without its warm-up N + 1, Heun 2N - 1, the rest N.
SCHEDULER_CALLS = {"ddim": (1, 0), "euler": (1, 0), "euler_a": (1, 0), "dpm": (1, 0), "pndm": (1, 1), "lms": (1, 0),
                   "heun": (2, -1), "unipc": (1, 0)}


class ConfigProblem(ValueError):
    """A config value the schema cannot check (a name that refers to another key, a count that must
    fit another); the message starts with the key's path, e.g. "config key ablations.relax_share.variant"."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key {key}: {message}")
        self.key = key


def parse_bits(bits: str) -> tuple[int, int]:
    """(weight bits, activation bits) of "W<w>A<a>"."""
    match = re.fullmatch(r"W(\d+)A(\d+)", bits) if isinstance(bits, str) else None
    if match is None:
        raise ValueError(f"a bit setting is W<weight bits>A<activation bits>, e.g. W4A8; got {bits!r}")
    return int(match[1]), int(match[2])


def check_bits(key: str, value) -> list[str]:
    """The bit settings of config key ``key`` (one or a list), each W<w>A<a> with bits in 2..16."""
    for bits in value if isinstance(value, list) else [value]:
        try:
            weight, act = parse_bits(bits)
        except ValueError:
            weight = act = 0
        if not (2 <= weight <= 16 and 2 <= act <= 16):
            raise ConfigProblem(key, f"{bits!r} is not a bit setting: W<weight bits>A<activation bits>, each in "
                                     "2..16, e.g. W4A8")
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Regime:
    """How a model is sampled, in calibration and generation: steps, guidance and scheduler
    (None: the checkpoint's own; else a short name of pcr.pipelines.schedulers.SCHEDULERS)."""

    steps: int
    guidance: float
    scheduler: str | None = None

    def __post_init__(self):
        """A regime that cannot be sampled is refused here, naming the field (the plan adds its key path)."""
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1 (num_inference_steps), got {self.steps!r}", "steps")
        guidance = self.guidance
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not guidance > 0:
            raise ConfigError(f"guidance must be a number > 0 (classifier-free guidance scale; 1 or less samples "
                              f"without it), got {guidance!r}", "guidance")
        if self.scheduler is not None and self.scheduler not in SCHEDULER_CALLS:
            raise ConfigError(f"scheduler must be one of {[*SCHEDULER_CALLS, None]} (None: the checkpoint's own), "
                              f"got {self.scheduler!r}", "scheduler")

    def unet_calls(self, model: str) -> int:
        """The most UNet calls a run of this regime makes with ``model`` (a workflow model spec). The
        checkpoint's own scheduler: DDIM for the toy and tiny-sd models, Euler for SDXL; an sd: checkpoint
        may ship PNDM (SD 1.x), so it may make steps + 1."""
        if self.scheduler is not None:
            a, b = SCHEDULER_CALLS[self.scheduler]
            return a * self.steps + b
        return self.steps + 1 if model.startswith("sd:") else self.steps

    def describe(self, model: str) -> str:
        """How a message names its sampling: steps, scheduler, and the UNet calls they make."""
        scheduler = self.scheduler or "the checkpoint's own scheduler"
        most = "at most " if self.scheduler is None and model.startswith("sd:") else ""
        return f"{self.steps} steps of {scheduler}, {most}{self.unet_calls(model)} UNet calls"

    @property
    def name(self) -> str:
        """e.g. s20_g7p5_euler: letters, digits and _ only, so targets and paths can carry it."""
        guidance = f"{float(self.guidance):g}".replace(".", "p")
        return f"s{self.steps}_g{guidance}_{self.scheduler or 'own'}"

    def columns(self) -> dict:
        """The regime as table columns."""
        return {"regime": self.name, "steps": self.steps, "guidance": float(self.guidance),
                "scheduler": self.scheduler or "own"}


def make_regime(key: str, steps, guidance, scheduler=None) -> Regime:
    """Regime(steps, guidance, scheduler) of config block ``key``; a bad value names its key path."""
    try:
        return Regime(steps, guidance, scheduler)
    except ConfigError as err:
        raise ConfigProblem(f"{key}.{err.key}", str(err)) from None


def sampling_regime(sampling: dict, key: str = "sampling") -> Regime:
    """The default regime, from the sampling block; its other keys are checked too (the schema checks
    them in the workflow, and a plan made without it must not take them on trust)."""
    for name in ("batch_size", "shards"):
        value = sampling.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigProblem(f"{key}.{name}", f"{name} must be a whole number >= 1, got {value!r}")
    for name in ("height", "width"):
        value = sampling.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 8):
            raise ConfigProblem(f"{key}.{name}", f"{name} must be a whole number of pixels >= 8, or null for the "
                                                 f"model's default, got {value!r}")
    return make_regime(key, sampling.get("steps"), sampling.get("guidance"), sampling.get("scheduler"))


@dataclass
class Variant:
    """One method configuration: its label and the QuantConfig keys that make it (bits and the sampling
    regime are added per run), how many calibration prompts it reads, and the config key it came from."""

    name: str
    label: str
    quant: dict
    calib_size: int
    key: str  # config key path it was made from, for errors (e.g. "ablations.relax_share")
    base: str = ""  # the quant.variants entry it was derived from
    sources: dict = field(default_factory=dict)  # QuantConfig key -> the config key path that set it
    relax: RelaxSpec = field(init=False)

    def __post_init__(self):
        self.relax = RelaxSpec.from_keys(self.quant)

    @property
    def method(self) -> str:
        return self.quant["method"]

    def source(self, key: str | None) -> str:
        """The config key path that set QuantConfig key ``key`` (the variant's own key when unknown)."""
        return self.sources.get(key, self.key) if key else self.key

    def unrelaxed_keys(self) -> dict:
        """Its QuantConfig keys without any relaxing (the reference point of a relaxing sweep)."""
        return {k: v for k, v in self.quant.items() if not k.startswith("relax_")}
