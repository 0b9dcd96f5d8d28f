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

from pcr.quant.relaxing import RelaxSpec

__all__ = ["FLOOR", "FP", "FP_BITS", "RESEED", "ConfigProblem", "Regime", "Variant", "parse_bits"]

FP, FLOOR, FP_BITS = "fp", "fp-reseeded", "W32A32"  # FP reference images; FP from other seeds (noise floor)
RESEED = 100_000  # the floor's image i has seed  seed + RESEED + i


class ConfigProblem(ValueError):
    """A config value the schema cannot check (a name that refers to another key, a count that must
    fit another); the message starts with the key's path, e.g. "config key ablations.relax_share.variant"."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key {key}: {message}")
        self.key = key


def parse_bits(bits: str) -> tuple[int, int]:
    """(weight bits, activation bits) of "W<w>A<a>"."""
    match = re.fullmatch(r"W(\d+)A(\d+)", bits)
    if match is None:
        raise ValueError(f"a bit setting is W<weight bits>A<activation bits>, e.g. W4A8; got {bits!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Regime:
    """How a model is sampled, in calibration and generation: steps, guidance and scheduler
    (None: the checkpoint's own; else a short name of pcr.pipelines.schedulers.SCHEDULERS)."""

    steps: int
    guidance: float
    scheduler: str | None = None

    @property
    def name(self) -> str:
        """e.g. s20_g7p5_euler: letters, digits and _ only, so targets and paths can carry it."""
        guidance = f"{float(self.guidance):g}".replace(".", "p")
        return f"s{self.steps}_g{guidance}_{self.scheduler or 'own'}"

    def columns(self) -> dict:
        """The regime as table columns."""
        return {"regime": self.name, "steps": self.steps, "guidance": float(self.guidance),
                "scheduler": self.scheduler or "own"}


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
    relax: RelaxSpec = field(init=False)

    def __post_init__(self):
        self.relax = RelaxSpec.from_keys(self.quant)

    @property
    def method(self) -> str:
        return self.quant["method"]

    def unrelaxed_keys(self) -> dict:
        """Its QuantConfig keys without any relaxing (the reference point of a relaxing sweep)."""
        return {k: v for k, v in self.quant.items() if not k.startswith("relax_")}
