"""The experiment: methods compared across sampling regimes, bit settings and relaxing, as the
``experiment:`` config section describes them.

Every method runs without and (given ``relax``) with relaxing, at every bit setting, in every regime,
on every prompt set of the section; each regime has its own FP reference and FP floor. Deltas are
taken against the baseline method of the same regime, relaxed against relaxed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pcr.plan.paths import figure, metrics_file
from pcr.plan.settings import FLOOR, FP_BITS, ConfigProblem, Regime, check_bits, make_regime
from pcr.quant.relaxing import RelaxSpec

if TYPE_CHECKING:
    from pcr.plan.plan import Plan

__all__ = ["Experiment", "ExperimentRun"]

KEY = "experiment"


@dataclass(frozen=True)
class ExperimentRun:
    """One metrics file of the experiment."""

    variant: str
    setting: str  # bits, "@<regime>" outside the default regime
    prompt_set: str
    regime: Regime
    method: str  # the experiment.methods entry it runs ("fp" for the FP floor)
    relaxed: bool
    baseline: str  # the variant its deltas are taken against: the baseline method, same regime and relaxing

    def columns(self) -> dict:
        """What the experiment's tables add to pcr.report.metrics_table's columns."""
        return {**self.regime.columns(), "base_variant": self.method, "relax": self.relaxed}


def expand_regimes(entries: list[dict], key: str = f"{KEY}.regimes") -> list[Regime]:
    """Each entry's lists crossed (steps x guidance x scheduler); the first of equal regimes is kept. A
    value that cannot be sampled is a ConfigProblem naming its entry, e.g. experiment.regimes[0].guidance."""
    def listed(value):
        return value if isinstance(value, list) else [value]

    out = []
    for i, entry in enumerate(entries):
        for steps, guidance, scheduler in itertools.product(listed(entry.get("steps")), listed(entry.get("guidance")),
                                                            listed(entry.get("scheduler"))):
            regime = make_regime(f"{key}[{i}]", steps, guidance, scheduler)
            regime = Regime(regime.steps, float(regime.guidance), regime.scheduler)
            if regime not in out:
                out.append(regime)
    return out


class Experiment:
    """The runs of the experiment section, their variants registered with ``plan``."""

    def __init__(self, plan: Plan, section: dict):
        self.plan = plan
        self.regimes = expand_regimes(section["regimes"])
        self.bits = list(check_bits(f"{KEY}.bits", section["bits"]))
        self.methods = list(section["methods"])
        self.prompt_sets = list(section["prompt_sets"])
        self._check_prompt_sets(section["images"])
        self.relax = self._relax_spec(section.get("relax"))
        self.variants = self._variants()  # (method, relaxed) -> variant
        self.baseline = section.get("baseline") or ("perstep" if "perstep" in self.methods else self.methods[0])
        if self.baseline not in self.methods:
            raise ConfigProblem(f"{KEY}.baseline", f"{self.baseline!r} is not one of experiment.methods "
                                                   f"({', '.join(self.methods)})")
        self.act_ranges = tuple(section.get("act_ranges") or ())
        for method in self.act_ranges:
            if method not in self.methods:
                raise ConfigProblem(f"{KEY}.act_ranges", f"{method!r} is not one of experiment.methods "
                                                         f"({', '.join(self.methods)})")

    def _check_prompt_sets(self, images: int) -> None:
        for name in self.prompt_sets:
            if name not in self.plan.eval_sets:
                raise ConfigProblem(f"{KEY}.prompt_sets", f"{name!r} is not one of prompts.evaluation "
                                                          f"({', '.join(self.plan.eval_sets)})")
            n = self.plan.config["prompts"]["evaluation"][name]["n"]
            if n < images:
                raise ConfigProblem(f"{KEY}.images", f"{images} images per set, but prompts.evaluation.{name}.n "
                                                     f"is {n} (one image per prompt); raise it to {images}")

    def _relax_spec(self, keys: dict | None) -> RelaxSpec | None:
        if not keys:
            return None
        try:
            spec = RelaxSpec.from_keys(keys)
        except ValueError as err:
            key = f"{KEY}.relax.{err.key}" if getattr(err, "key", None) else f"{KEY}.relax"
            raise ConfigProblem(key, str(err)) from None
        if not spec.relaxes:
            raise ConfigProblem(f"{KEY}.relax", "relaxes no call; give relax_interval, relax_steps or "
                                                "relax_auto_bits (or leave relax out)")
        return spec

    def _variants(self) -> dict[tuple[str, bool], str]:
        out = {}
        for method in self.methods:
            base = self.plan.base_variant(f"{KEY}.methods", method)
            out[method, False] = base.name
            if self.relax is None:
                continue
            if base.relax.relaxes:
                raise ConfigProblem(f"{KEY}.methods", f"{method!r} relaxes already; list its unrelaxed variant "
                                                      "(the experiment adds experiment.relax to each method)")
            out[method, True] = self.plan.add_variant(
                f"{method}+relax", f"{base.label} + {self.relax.label}", {**base.quant, **self.relax.to_keys()},
                key=f"{KEY}.relax", base=method)
        return out

    @property
    def relax_options(self) -> list[bool]:
        return [False, True] if self.relax is not None else [False]

    def regime(self, name: str) -> Regime:
        for regime in self.regimes:
            if regime.name == name:
                return regime
        raise ValueError(f"no experiment regime {name!r}; the regimes are {[r.name for r in self.regimes]}")

    def runs(self, regime: Regime | None = None) -> list[ExperimentRun]:
        """Every metrics file of one regime (None: of all), in table order: per regime its FP floor, then
        bits by method by relaxing."""
        out = []
        for r in [regime] if regime is not None else self.regimes:
            baseline = {relaxed: self.variants[self.baseline, relaxed] for relaxed in self.relax_options}
            for pset in self.prompt_sets:
                out.append(ExperimentRun(FLOOR, self.plan.setting(FP_BITS, r), pset, r, "fp", False, baseline[False]))
            for bits in self.bits:
                for method in self.methods:
                    for relaxed in self.relax_options:
                        for pset in self.prompt_sets:
                            out.append(ExperimentRun(self.variants[method, relaxed], self.plan.setting(bits, r),
                                                     pset, r, method, relaxed, baseline[relaxed]))
        return out

    def act_range_variants(self) -> tuple[str, str]:
        """The unrelaxed variants of experiment.act_ranges: (FP-trajectory one, quantized-trajectory one)."""
        fp_trajectory, quantized_trajectory = self.act_ranges
        return self.variants[fp_trajectory, False], self.variants[quantized_trajectory, False]

    def act_range_settings(self, regime: Regime | None = None) -> list[str]:
        """The settings whose per-step ranges are compared (experiment.act_ranges), of one regime or all."""
        if not self.act_ranges:
            return []
        return [self.plan.setting(b, r) for r in ([regime] if regime else self.regimes) for b in self.bits]

    # -- files ----------------------------------------------------------------------------------------
    def metrics_files(self, regime: Regime | None = None) -> list[str]:
        return [metrics_file(r.variant, r.setting, r.prompt_set) for r in self.runs(regime)]

    def table_columns(self, regime: Regime | None = None) -> list[dict]:
        """Per metrics file (same order), the columns its table row gets and the variant its deltas take."""
        return [{**r.columns(), "baseline": r.baseline} for r in self.runs(regime)]

    def outputs(self, regime: Regime | None = None) -> list[str]:
        """The files of one regime's target (None: of the experiment target: every regime, and the tables
        of all of them)."""
        out = []
        for r in [regime] if regime is not None else self.regimes:
            out += [f"results/tables/experiment/{r.name}.csv", f"results/tables/experiment/{r.name}_deltas.csv"]
            out += [f for relaxed in self.relax_options for f in figure(self.figure_stem(r, relaxed))]
            for setting in self.act_range_settings(r):
                out += [f"results/tables/experiment/act_ranges_{setting}.csv",
                        *figure(f"results/figures/experiment/act_ranges_{setting}")]
        if regime is None:
            out += ["results/tables/experiment.csv", "results/tables/experiment_deltas.csv"]
        return out

    @staticmethod
    def figure_stem(regime: Regime, relaxed: bool) -> str:
        return f"results/figures/experiment/{regime.name}_{'relaxed' if relaxed else 'unrelaxed'}"
