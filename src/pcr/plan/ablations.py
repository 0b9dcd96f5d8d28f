"""The ablations: each a builder that turns its ``ablations.<name>`` config block into the (variant,
bits) runs it measures, registering the variants it needs with the plan.

**Adding an ablation is one entry in ABLATIONS** (and its block in the config schema): the workflow
makes the ``ablation_<name>`` target, its table and its figure from the registry. A variant with the
same settings as one already planned is that one, computed once (Plan.add_variant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pcr.plan.settings import ConfigProblem, parse_bits
from pcr.quant.relaxing import RelaxSpec

if TYPE_CHECKING:
    from pcr.plan.plan import Plan

__all__ = ["ABLATIONS", "Ablation"]


@dataclass
class Ablation:
    """What an ablation measures: (variant, bits) runs, and (FP-trajectory variant, quantized-trajectory
    variant, bits) whose per-step activation ranges it draws."""

    runs: list[tuple[str, str]]
    act_ranges: list[tuple[str, str, str]] = field(default_factory=list)


def _unrelaxed(plan: Plan, key: str, name: str, bits: str) -> tuple[str, str]:
    """The base variant without relaxing: the x = 0 point of a relaxing sweep."""
    base = plan.base_variant(f"{key}.variant", name)
    return plan.add_variant(f"{name}-norelax", f"{base.label}, no relaxing", base.unrelaxed_keys(), key=key,
                            base=name), bits


def progressive(plan: Plan, key: str, a: dict) -> Ablation:
    """Per-step parameters on the FP trajectory vs progressive ones on the quantized trajectory, over bits."""
    fp_trajectory, quantized_trajectory = (plan.base_variant(f"{key}.variants", v).name for v in a["variants"])
    runs = [(v, b) for b in a["bits"] for v in (fp_trajectory, quantized_trajectory)]
    return Ablation(runs, [(fp_trajectory, quantized_trajectory, a["bits"][-1])])


def relax_share(plan: Plan, key: str, a: dict) -> Ablation:
    """Share of relaxed calls, at the start (near x_T) and at the end (near x_0) of sampling."""
    base = plan.base_variant(f"{key}.variant", a["variant"])
    relax_bits = {"relax_bits": a["relax_bits"]} if "relax_bits" in a else {}
    runs = [_unrelaxed(plan, key, a["variant"], a["bits"])]
    for where in a["where"]:
        for share in a["shares"]:
            spec = RelaxSpec.at(where, share)
            quant = {**base.unrelaxed_keys(), **relax_bits, "relax_interval": list(spec.interval)}
            runs.append((plan.add_variant(f"{a['variant']}-relax-{where}-{share}", spec.label, quant, key=key,
                                          base=a["variant"]), a["bits"]))
    return Ablation(runs)


def relax_bits(plan: Plan, key: str, a: dict) -> Ablation:
    """Activation bits of the relaxed calls."""
    base = plan.base_variant(f"{key}.variant", a["variant"])
    if not base.relax.relaxes:
        raise ConfigProblem(f"{key}.variant", f"{a['variant']!r} relaxes no step; name a variant with "
                                              "relax_interval, relax_steps or relax_auto_bits")
    runs = [_unrelaxed(plan, key, a["variant"], a["bits"])]
    runs += [(plan.add_variant(f"{a['variant']}-rbits-{b}", f"relaxed to {b} bits", {**base.quant, "relax_bits": b},
                               key=key, base=a["variant"]), a["bits"]) for b in a["relax_bits"]]
    return Ablation(runs)


def calib_size(plan: Plan, key: str, a: dict) -> Ablation:
    """Number of calibration prompts (a prefix of the calibration set)."""
    base = plan.base_variant(f"{key}.variant", a["variant"])
    for n in a["sizes"]:
        if n > plan.calib_n:
            raise ConfigProblem(f"{key}.sizes", f"{n} is more than the {plan.calib_n} calibration prompts "
                                                "(prompts.calibration.n); raise that or lower the size")
    return Ablation([(plan.add_variant(f"{a['variant']}-calib-{n}", f"{n} prompts", base.quant, n, key=key,
                                       base=a["variant"]), a["bits"]) for n in a["sizes"]])


def relax_auto(plan: Plan, key: str, a: dict) -> Ablation:
    """Calls picked by measured sensitivity vs fixed first and last intervals, all at the same average bits,
    at each bit setting: the fixed intervals count calls by their centre here, so each relaxes share x N
    calls (under the reference's rounding a first interval relaxes one call more: an uneven comparison)."""
    base = plan.base_variant(f"{key}.variant", a["variant"])
    relax_bits, share = a.get("relax_bits", 10), a["share"]
    fixed = {where: RelaxSpec.at(where, share, relax_bits, rounding="centre") for where in ("first", "last")}
    runs = []
    for bits in a["bits"] if isinstance(a["bits"], list) else [a["bits"]]:
        runs.append(_unrelaxed(plan, key, a["variant"], bits))
        for where, spec in fixed.items():
            runs.append((plan.add_variant(f"{a['variant']}-relax-{where}-{share}-even", spec.label,
                                          {**base.unrelaxed_keys(), **spec.to_keys()}, key=key, base=a["variant"]),
                         bits))
        # the planner does not load the scheduler: a run of more calls than steps (PNDM) relaxes the same share
        act = parse_bits(bits)[1]
        budget = fixed["last"].average_bits(act, plan.default_regime.steps)
        quant = {**base.unrelaxed_keys(), "relax_bits": relax_bits, "relax_auto_bits": round(budget, 6)}
        runs.append((plan.add_variant(f"{a['variant']}-relax-auto-{share}-A{act}", "relax auto (measured)", quant,
                                      key=key, base=a["variant"]), bits))
    return Ablation(runs)


# name -> builder(plan, "ablations.<name>", its config block): the ablation_<name> targets, in this order
ABLATIONS = {
    "progressive": progressive,
    "relax_share": relax_share,
    "relax_bits": relax_bits,
    "calib_size": calib_size,
    "relax_auto": relax_auto,
}
