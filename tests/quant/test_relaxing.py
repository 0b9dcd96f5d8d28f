"""Relaxing (pcr.quant.relaxing): the calls an interval relaxes under the reference's rounding and pcr's
centre rule, what they cost, how tables name them; and QuantConfig's old name relax_ratio."""

import pytest

from pcr.quant.config import ConfigError, QuantConfig
from pcr.quant.relaxing import RelaxSpec


@pytest.mark.parametrize("interval, num_calls, reference, centre", [
    ((0.0, 0.2), 20, range(0, 5), range(0, 4)),  # both ends count in the reference: five calls
    ((0.8, 1.0), 20, range(16, 20), range(16, 20)),  # int(20 * 1.0) = 20 is no call
    ((0.8, 1.0), 51, range(40, 51), range(41, 51)),  # SD 1.x: PNDM's 50 steps are 51 calls
    ((0.0, 0.2), 50, range(0, 11), range(0, 10)),
    ((0.4, 0.6), 10, range(4, 7), range(4, 6)),
    ((0.0, 0.0), 10, range(0, 1), range(0, 0)),
], ids=["first-20pc-of-20", "last-20pc-of-20", "pndm-51", "first-20pc-of-50", "middle", "empty"])
def test_an_interval_relaxes_the_calls_of_its_rounding(interval, num_calls, reference, centre):
    assert RelaxSpec(interval).calls(num_calls) == tuple(reference)
    assert RelaxSpec(interval, rounding="centre").calls(num_calls) == tuple(centre)


def test_the_reference_rule_is_the_tsa18_pcr_quantizers():
    """SdSeparateQuantizer: relax_t = list(range(int(num_steps*lo), int(num_steps*hi)+1)), float products
    and all (int(10 * 0.7) is 7; int(100 * 0.29) is 28)."""
    for n, (lo, hi) in [(10, (0.7, 1.0)), (100, (0.29, 0.5)), (51, (0.8, 1)), (25, (0.1, 0.3))]:
        expected = [t for t in range(int(n * lo), int(n * hi) + 1) if t < n]
        assert list(RelaxSpec((lo, hi)).calls(n)) == expected


def test_bits_average_bits_and_table_knobs():
    last = RelaxSpec.at("last", 0.2, bits=10)
    assert last.interval == (0.8, 1.0) and last.where == "last" and last.label == "relax last 20%"
    assert last.bits_per_call(8, 10) == [8] * 8 + [10, 10]
    assert last.average_bits(8, 10) == pytest.approx(8.4)
    assert last.knobs(6, 10) == {"relax_where": "last", "relax_share": 0.2, "relax_bits": 10}
    first = RelaxSpec.at("first", 0.2)
    assert first.knobs(6, 10)["relax_share"] == 0.3 and first.average_bits(6, 10) == pytest.approx(7.2)
    assert RelaxSpec().knobs(6, 10) == {"relax_where": "none", "relax_share": 0.0, "relax_bits": 6}
    auto = RelaxSpec(auto_bits=6.8)
    assert auto.where == "auto" and auto.knobs(6, 10)["relax_share"] == pytest.approx(0.2)
    assert auto.calls(10) == () and auto.average_bits(6, 10) == 6.8
    steps = RelaxSpec(steps=(4, 0, 4), bits=12)
    assert steps.bits_per_call(8, 5) == [12, 8, 8, 8, 12] and steps.label == "relax calls 0, 4"
    assert RelaxSpec((0.4, 0.6)).where == "middle" and RelaxSpec((0.4, 0.6)).label == "relax 40%-60%"


def test_a_spec_round_trips_through_quant_config_keys():
    for spec in [RelaxSpec((0.8, 1.0), bits=12), RelaxSpec(steps=(1, 2)), RelaxSpec(auto_bits=7.0),
                 RelaxSpec((0.0, 0.2), rounding="centre")]:
        assert RelaxSpec.from_keys(spec.to_keys()) == spec
        assert QuantConfig(act_bits=6, **spec.to_keys()).relax == spec
    assert RelaxSpec().to_keys() == {}


def test_bad_specs_name_the_key():
    with pytest.raises(ConfigError, match="at most one of relax_interval, relax_steps"):
        RelaxSpec((0.0, 0.2), steps=(1,))
    with pytest.raises(ConfigError, match="relax_interval must be"):
        RelaxSpec((0.5, 0.2))
    with pytest.raises(ConfigError, match="relax_rounding must be one of"):
        RelaxSpec((0.0, 0.2), rounding="floor")
    with pytest.raises(ConfigError, match=r"relax_steps \[5\] are outside the 5 UNet calls"):
        RelaxSpec(steps=(5,)).calls(5)


def test_quant_config_relaxes_what_its_spec_says():
    config = QuantConfig(num_steps=20, act_bits=8, relax_interval=(0.0, 0.2))
    assert config.relaxed_steps() == (0, 1, 2, 3, 4) and config.relax.rounding == "reference"
    assert config.act_bits_per_step(20) == [10] * 5 + [8] * 15
    assert config.replace(relax_rounding="centre").relaxed_steps() == (0, 1, 2, 3)
    assert QuantConfig(num_steps=50, relax_interval=(0.8, 1.0)).relaxed_steps(51) == tuple(range(40, 51))


def test_the_old_name_relax_ratio_still_works_with_the_rounding_it_had():
    old = QuantConfig(num_steps=20, relax_ratio=(0.0, 0.2))
    assert old.relax_interval == (0.0, 0.2) and old.relax_ratio == (0.0, 0.2)
    assert old.relax_rounding == "centre" and old.relaxed_steps() == (0, 1, 2, 3)  # as pcr relaxed before
    assert QuantConfig(relax_ratio=(0.0, 0.2), relax_rounding="reference").relaxed_steps(20) == tuple(range(5))
    loaded = QuantConfig.from_dict({"method": "qdiff", "relax_ratio": [0.8, 1.0], "relax_steps": None})
    assert loaded.relax_interval == (0.8, 1.0) and "relax_ratio" not in loaded.to_dict()
    assert QuantConfig.from_dict(loaded.to_dict()) == loaded
    assert QuantConfig(relax_ratio=None) == QuantConfig() and QuantConfig().relax_ratio is None
    assert old.replace(relax_ratio=None).relax_interval is None and old.replace(method="naive") != old
    assert old.replace(method="naive").relax_interval == (0.0, 0.2)
    with pytest.raises(ConfigError, match="relax_ratio is the old name of relax_interval; give one"):
        QuantConfig(relax_ratio=(0.0, 0.2), relax_interval=(0.8, 1.0))
