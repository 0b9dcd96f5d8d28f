"""Activation relaxing: the paper's intervals, and auto relaxing by measured step sensitivity."""

import pytest

from pcr.calibrate import calibrate
from pcr.calibrate.relax import pick_relaxed_steps
from pcr.quant import QuantConfig
from pcr.quant.config import ConfigError

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle"]


def test_paper_intervals():
    """The reference code's rounding: calls int(N * lo) .. int(N * hi) of the N calls."""
    sd = QuantConfig(num_steps=50, relax_interval=(0.8, 1.0))
    sdxl = QuantConfig(num_steps=50, relax_interval=(0.0, 0.2))
    assert sdxl.relaxed_steps(50) == tuple(range(11))  # Euler: one UNet call per step; int(50 * 0.2) = 10 included
    assert sd.relaxed_steps(50) == tuple(range(40, 50))
    assert sum(sd.act_bits_per_step(50)) / 50 == pytest.approx(8.4)
    # PNDM makes 51 calls for 50 steps: calls int(40.8) = 40 .. 50
    assert sd.relaxed_steps(51) == tuple(range(40, 51))
    # pcr's centre rounding: calls whose centre (i + 0.5) / N lies in the interval
    assert sdxl.replace(relax_rounding="centre").relaxed_steps(50) == tuple(range(10))
    assert QuantConfig(num_steps=5, relax_steps=(4, 0, 4)).act_bits_per_step(5) == [10, 8, 8, 8, 10]


def test_bad_relax_settings_name_the_key():
    with pytest.raises(ConfigError, match="relax_steps"):
        QuantConfig(num_steps=5, relax_steps=(-1,))
    with pytest.raises(ConfigError, match=r"relax_steps \[6\] are outside the 6 UNet calls of num_steps=5"):
        QuantConfig(num_steps=5, relax_steps=(5, 6)).relaxed_steps(6)
    with pytest.raises(ConfigError, match="at most one of"):
        QuantConfig(relax_steps=(1,), relax_interval=(0.0, 0.2))
    with pytest.raises(ConfigError, match="relax_auto_bits"):
        QuantConfig(act_bits=8, relax_bits=10, relax_auto_bits=11.0)


def test_pick_respects_the_budget_and_skips_useless_steps():
    config = QuantConfig(num_steps=10, act_bits=8, relax_bits=10, relax_auto_bits=8.6)  # 3 steps fit
    gains = [0.1, -0.2, 0.5, 0.0, 0.3, 0.2, 0.05, 0.0, 0.0, 0.0]
    assert pick_relaxed_steps(gains, config) == (2, 4, 5)
    assert pick_relaxed_steps([-1.0] * 10, config) == ()
    assert pick_relaxed_steps(gains, config.replace(relax_auto_bits=8.0)) == ()


@pytest.mark.parametrize("method", ["progressive", "naive"])
def test_auto_relaxing_measures_every_step_and_stays_within_budget(pipe, method):
    config = QuantConfig(method=method, weight_bits=8, act_bits=4, num_steps=4, guidance_scale=5.0, batch_size=2,
                         relax_bits=10, relax_auto_bits=5.5)
    params = calibrate(pipe, PROMPTS, config, progress=False)
    auto = params.info["relax_auto"]
    assert len(auto["gains"]) == 4 and auto["base_mse"] > 0
    assert auto["unit"] == "dB" and auto["prompts"] == len(PROMPTS)  # every calibration prompt, not one batch
    assert len(auto["gains_se"]) == 4 and all(se >= 0 for se in auto["gains_se"])
    assert params.avg_act_bits <= 5.5
    relaxed = [s for s, b in enumerate(params.act_bits) if b == 10]
    # the budget lets exactly one call up ((3 * 4 + 10) / 4 = 5.5), and at 4 bits some call gains from it
    assert relaxed == auto["relaxed_steps"] and len(relaxed) == 1
    assert all(auto["gains"][s] > 0 for s in relaxed)
    assert all(auto["gains"][s] >= auto["gains"][o] for s in relaxed for o in range(4) if o not in relaxed)
