"""Activation relaxing, stated once: which UNet calls of a sampling run get higher-bit activations,
what that costs in average bits, and how tables name it. QuantConfig, calibration and the workflow's
plan all ask a RelaxSpec; none of them counts relaxed calls itself.

A relaxed set is one of: an **interval** [lo, hi] of the run, as shares of its N UNet calls (call 0
sees x_T, call N - 1 is near x_0); explicit **call indices**; or **auto**, calls picked at calibration
by measured sensitivity within an average-bit budget.

**Two rounding rules turn an interval into calls:**

- ``reference`` (the default: what the paper's code, tsa18/PCR quantizer.py, does): calls
  ``range(int(N * lo), int(N * hi) + 1)``, clipped to the N calls, with Python's float products. Both
  ends count: for N = 20, [0, 0.2] relaxes calls 0-4 (five) and [0.8, 1.0] calls 16-19 (four; call
  20 does not exist). SD 1.x's PNDM makes N = 51 calls for 50 steps: [0.8, 1.0] relaxes calls 40-50.
- ``centre`` (pcr's rule before it followed the reference): call i when its centre (i + 0.5) / N lies
  in [lo, hi]. [0, 0.2] at N = 20 relaxes calls 0-3; a share s relaxes about s * N calls at either end.

A table's ``relax_share`` is the share of calls actually relaxed (count / N), so rows of the two rules,
or of first and last intervals of one rule, compare at what they cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RELAX_KEYS", "ROUNDINGS", "RelaxSpec", "upgrade_keys"]

ROUNDINGS = ("reference", "centre")
# The QuantConfig keys a RelaxSpec reads and writes (relax_ratio: the old name of relax_interval).
RELAX_KEYS = ("relax_interval", "relax_steps", "relax_auto_bits", "relax_bits", "relax_rounding")


def _fail(message: str, key: str):
    from pcr.quant.config import ConfigError  # config.py imports this module, so import at use

    raise ConfigError(message, key=key)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def upgrade_keys(keys: Mapping) -> dict:
    """QuantConfig keys with the old name relax_ratio made relax_interval, with the rounding it had
    (centre) unless relax_rounding is given: what QuantConfig does with it, for dicts of keys."""
    keys = dict(keys)
    old = keys.pop("relax_ratio", None)
    if old is None:
        return keys
    problem = None
    try:
        RelaxSpec(interval=old)
    except ValueError as err:
        problem = str(err)
    if problem:
        _fail(f"relax_ratio (the old name of relax_interval): {problem}", "relax_ratio")
    if keys.get("relax_interval") is not None and list(keys["relax_interval"]) != list(old):
        _fail(f"relax_ratio is the old name of relax_interval; give one, got relax_ratio={list(old)} and "
              f"relax_interval={list(keys['relax_interval'])}", "relax_ratio")
    keys["relax_interval"] = list(old)
    if keys.get("relax_rounding") is None:
        keys["relax_rounding"] = "centre"
    return keys


@dataclass(frozen=True)
class RelaxSpec:
    """Which UNet calls run at ``bits`` activation bits; at most one of interval, steps, auto_bits."""

    interval: tuple[float, float] | None = None  # [lo, hi], shares of the run's UNet calls
    steps: tuple[int, ...] | None = None  # or these UNet-call indices
    auto_bits: float | None = None  # or calls picked at calibration, within this average bit budget
    bits: int = 10
    rounding: str = "reference"  # how an interval becomes calls (module docstring)

    def __post_init__(self):
        for name, key in (("interval", "relax_interval"), ("steps", "relax_steps")):
            value = getattr(self, name)  # lists from YAML or JSON compare and hash as tuples
            if value is not None and not isinstance(value, (list, tuple)):
                _fail(f"{key} must be a list, got {value!r}", key)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        given = [k for k, v in (("relax_interval", self.interval), ("relax_steps", self.steps),
                                ("relax_auto_bits", self.auto_bits)) if v is not None]
        if len(given) > 1:
            _fail(f"give at most one of relax_interval, relax_steps, relax_auto_bits; got {given}: keep one",
                  given[-1])
        if self.rounding not in ROUNDINGS:
            _fail(f"relax_rounding must be one of {list(ROUNDINGS)}, got {self.rounding!r}", "relax_rounding")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 16:
            _fail(f"relax_bits must be an integer in [2, 16], got {self.bits!r}", "relax_bits")
        if self.interval is not None:
            lo_hi = len(self.interval) == 2 and all(_is_number(x) for x in self.interval)
            if not lo_hi or not 0.0 <= self.interval[0] <= self.interval[1] <= 1.0:
                _fail(f"relax_interval must be [lo, hi], two numbers with 0 <= lo <= hi <= 1 (shares of the "
                      f"run's UNet calls, 0 = x_T), got {list(self.interval)}", "relax_interval")
        if self.steps is not None:
            bad = [s for s in self.steps if not isinstance(s, int) or isinstance(s, bool) or s < 0]
            if bad:
                _fail(f"relax_steps must be UNet-call indices (whole numbers >= 0), got {bad}", "relax_steps")
        if self.auto_bits is not None and not _is_number(self.auto_bits):
            _fail(f"relax_auto_bits must be a number (an average of activation bits), got {self.auto_bits!r}",
                  "relax_auto_bits")

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_keys(cls, keys: Mapping) -> RelaxSpec:
        """The relaxing a dict of QuantConfig keys asks for (relax_ratio read as QuantConfig reads it)."""
        keys = upgrade_keys(keys)
        interval = keys.get("relax_interval")
        steps = keys.get("relax_steps")
        return cls(interval=None if interval is None else tuple(interval),
                   steps=None if steps is None else tuple(steps), auto_bits=keys.get("relax_auto_bits"),
                   bits=keys.get("relax_bits", 10), rounding=keys.get("relax_rounding") or "reference")

    @classmethod
    def at(cls, where: str, share: float, bits: int = 10, rounding: str = "reference") -> RelaxSpec:
        """The interval of the first or last ``share`` of the run (the paper: last 0.2 for SD, first for SDXL)."""
        if where not in ("first", "last"):
            raise ValueError(f"where must be 'first' or 'last', got {where!r}")
        interval = (0.0, share) if where == "first" else (round(1.0 - share, 6), 1.0)
        return cls(interval=interval, bits=bits, rounding=rounding)

    def to_keys(self) -> dict:
        """The QuantConfig keys that make this relaxing (none when nothing is relaxed)."""
        if not self.relaxes:
            return {}
        out = {"relax_bits": self.bits}
        if self.interval is not None:
            out["relax_interval"] = list(self.interval)
        if self.steps is not None:
            out["relax_steps"] = list(self.steps)
        if self.auto_bits is not None:
            out["relax_auto_bits"] = self.auto_bits
        if self.rounding != "reference":
            out["relax_rounding"] = self.rounding
        return out

    # -- which calls --------------------------------------------------------------------------------
    @property
    def relaxes(self) -> bool:
        return self.interval is not None or self.steps is not None or self.auto_bits is not None

    @property
    def where(self) -> str:
        """none | first | last | middle (an interval touching neither end) | steps | auto."""
        if self.auto_bits is not None:
            return "auto"
        if self.steps is not None:
            return "steps"
        if self.interval is None:
            return "none"
        lo, hi = self.interval
        return "first" if lo == 0 else "last" if hi == 1 else "middle"

    def calls(self, num_calls: int, num_steps: int | None = None) -> tuple[int, ...]:
        """The relaxed UNet calls of a run of ``num_calls`` (auto relaxing decides at calibration: none
        here). ``num_steps`` only names the step count in an error."""
        if self.steps is not None:
            bad = sorted(s for s in set(self.steps) if s >= num_calls)
            if bad:
                of = f" of num_steps={num_steps}" if num_steps is not None else ""
                _fail(f"relax_steps {bad} are outside the {num_calls} UNet calls{of} (calls 0..{num_calls - 1}); "
                      "list calls below that, or relax an interval (relax_interval), which fits any run",
                      "relax_steps")
            return tuple(sorted(set(self.steps)))
        if self.interval is None:
            return ()
        lo, hi = self.interval
        if self.rounding == "centre":
            return tuple(i for i in range(num_calls) if lo <= (i + 0.5) / num_calls <= hi)
        return tuple(i for i in range(int(num_calls * lo), int(num_calls * hi) + 1) if i < num_calls)

    def check_calls(self, num_calls: int, num_steps: int | None = None) -> None:
        """Refuse relaxing that cannot do what it says in a run of ``num_calls``: calls the run does not
        make, or an interval that relaxes none of its calls (a "relaxed" row equal to the unrelaxed one)."""
        calls = self.calls(num_calls, num_steps)  # raises for relax_steps the run does not make
        if self.interval is not None and not calls:
            _fail(f"relax_interval {list(self.interval)} relaxes none of the {num_calls} UNet calls with "
                  f"relax_rounding {self.rounding!r}; widen it (each call is 1/{num_calls} of the run)",
                  "relax_interval")

    def bits_per_call(self, act_bits: int, num_calls: int, relaxed: tuple[int, ...] | None = None,
                      num_steps: int | None = None) -> list[int]:
        """Activation bits of each call; ``relaxed`` overrides the spec's calls (auto relaxing's pick)."""
        relaxed = self.calls(num_calls, num_steps) if relaxed is None else relaxed
        return [self.bits if i in relaxed else act_bits for i in range(num_calls)]

    # -- what it costs, and how a table names it -------------------------------------------------------
    def share(self, act_bits: int, num_calls: int) -> float:
        """Share of the calls relaxed; for auto, the share its budget allows."""
        if self.auto_bits is not None:  # QuantConfig refuses auto relaxing to bits <= act_bits
            return (self.auto_bits - act_bits) / (self.bits - act_bits) if self.bits > act_bits else 0.0
        if self.steps is not None:  # counted, not checked: the caller may not know the scheduler (check_calls does)
            return len(set(self.steps)) / num_calls
        return len(self.calls(num_calls)) / num_calls

    def average_bits(self, act_bits: int, num_calls: int) -> float:
        """Average activation bits over the calls (auto: its budget, the most it may spend)."""
        if self.auto_bits is not None:
            return float(self.auto_bits)
        return sum(self.bits_per_call(act_bits, num_calls)) / num_calls

    def knobs(self, act_bits: int, num_calls: int) -> dict:
        """The columns tables and ablation figures read: relax_where, relax_share, relax_bits."""
        if not self.relaxes:
            return {"relax_where": "none", "relax_share": 0.0, "relax_bits": act_bits}
        return {"relax_where": self.where, "relax_share": self.share(act_bits, num_calls), "relax_bits": self.bits}

    @property
    def label(self) -> str:
        """How a method's label names it: "relax last 20%", "relax auto (measured)", ..."""
        where = self.where
        if where == "none":
            return "no relaxing"
        if where == "auto":
            return "relax auto (measured)"
        if where == "steps":
            return f"relax calls {', '.join(str(s) for s in sorted(set(self.steps)))}"
        lo, hi = self.interval
        if where == "middle":
            return f"relax {lo:.0%}-{hi:.0%}"
        return f"relax {where} {(hi if where == 'first' else 1.0 - lo):.0%}"
