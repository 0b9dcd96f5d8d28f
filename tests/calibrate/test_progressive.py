"""One-pass progressive calibration equals the reference's re-run form; methods differ where they should."""

import pytest
import torch

from pcr.calibrate.progressive import calibrate_activations, calibrate_rerun, observed_steps
from pcr.calibrate.weights import calibrate_weights
from pcr.quant import QuantConfig, quant_mode, quantize_unet, unquantize_unet
from pcr.quant.config import ConfigError

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle", "a cat on a mat", "sunset"]
SEEDS = [0, 1, 2, 3, 4]
STEPS = 4


def config(**changes):
    base = QuantConfig(weight_bits=4, act_bits=4, num_steps=STEPS, guidance_scale=5.0, batch_size=2)
    return base.replace(**changes)


@pytest.fixture
def layers(pipe):
    layers = quantize_unet(pipe.unet, config(), num_calls=STEPS)
    calibrate_weights(layers, "minmax", progress=False)
    yield layers
    unquantize_unet(pipe.unet)


def act_params(layers):
    return {name: (layer.act_quantizer.scale.clone(), layer.act_quantizer.zero_point.clone())
            for name, layer in layers.items()}


OBSERVATIONS = [(w, a) for w in ("fp", "quantized") for a in ("fp", "first_pass", "sequential")]


@pytest.mark.parametrize("method", ["progressive", "perstep"])
@pytest.mark.parametrize(("weights", "acts"), OBSERVATIONS)
def test_one_pass_equals_the_rerun_form(pipe, layers, method, weights, acts):
    """Every observation, on either trajectory: the one-pass form gives the re-run form's parameters
    (sequential: fixing each layer as its input passes vs one UNet call per layer)."""
    steps, prompts, seeds = STEPS, PROMPTS, SEEDS
    if acts == "sequential":  # the definition costs one UNet call per layer: fewer calls, one pipeline
        if "XL" in type(pipe).__name__:
            pytest.skip("sequential observation's definition is checked on tiny-sd only (one call per layer)")
        steps, prompts, seeds = 2, PROMPTS[:3], SEEDS[:3]  # two batches of the fixture's batch size
    cfg = config(method=method, observe_weights=weights, observe_acts=acts, relax_steps=(1,), num_steps=steps)
    batches = -(-len(prompts) // cfg.batch_size)
    act_bits = cfg.act_bits_per_step(steps)
    for layer in layers.values():
        layer.act_quantizer.bits = [4] * steps  # the fixture's slots are for STEPS calls
        layer.act_quantizer.scale, layer.act_quantizer.zero_point = torch.ones(steps), torch.zeros(steps, dtype=int)
        layer.act_quantizer.range = torch.zeros(steps, 2)
    info = calibrate_activations(pipe, layers, prompts, seeds, cfg, act_bits, progress=False)
    one_pass = act_params(layers)
    observed = steps - 1 if acts == "first_pass" else steps  # the reference never recalibrates the last call
    per_pass = (1 if acts == "sequential" else batches) * observed + batches * (observed - 1)
    first_pass = batches * (2 * steps - 1) if acts == "first_pass" else 0  # observe each, advance all but the last
    assert info["act_unet_calls"] == per_pass + first_pass
    calibrate_rerun(pipe, layers, prompts, seeds, cfg, act_bits, progress=False)
    for name, (scale, zero_point) in act_params(layers).items():
        torch.testing.assert_close(one_pass[name][0], scale, rtol=1e-6, atol=0, msg=name)
        assert torch.equal(one_pass[name][1], zero_point), name


def test_merged_call_feeds_observers_batch_by_batch(pipe, layers):
    """Sequential observation's one merged UNet call per step feeds each observer one batch at a time:
    with activations unquantized, its EMA ranges are the per-batch calls' (up to float sums)."""
    from pcr.calibrate.observation import _merged_call, new_observers, observe_call
    from pcr.calibrate.progressive import prepare_batches

    cfg = config(method="perstep", observe_weights="quantized", observe_acts="fp", observer="ema", ema_momentum=0.5)
    batches = prepare_batches(pipe, PROMPTS, SEEDS, cfg)
    separate = new_observers(layers, cfg)
    observe_call(pipe.unet, layers, batches, 0, separate, cfg, 4)
    merged = new_observers(layers, cfg)
    rows = [len(b.latents) * 2 for b in batches]
    for name, layer in layers.items():
        layer.act_quantizer.observer = lambda x, _s, o=merged[name]: [o.update(p) for p in x.split(rows)]
    with quant_mode(pipe.unet, weights=True, acts=False):
        _merged_call(pipe.unet, batches, 0)
    for name in layers:
        torch.testing.assert_close(separate[name].lo, merged[name].lo, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(separate[name].hi, merged[name].hi, rtol=1e-4, atol=1e-6)
    for layer in layers.values():
        layer.act_quantizer.observer = None


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_rerun_form_counts_and_recalibrated_last_call(pipe, layers, observer):
    cfg = config(method="progressive", observer=observer, recalibrate_last=True)
    act_bits = cfg.act_bits_per_step(STEPS)
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, cfg, act_bits, progress=False)
    one_pass = act_params(layers)
    rerun = calibrate_rerun(pipe, layers, PROMPTS, SEEDS, cfg, act_bits, progress=False)
    assert rerun["act_unet_calls"] == 2 * sum(i + 1 for i in range(STEPS)) * 3  # first pass + progressive pass
    for name, (scale, _) in act_params(layers).items():
        torch.testing.assert_close(one_pass[name][0], scale, rtol=1e-6, atol=0, msg=name)


def test_reference_progressive_keeps_the_first_pass_for_the_last_call(pipe, layers):
    """The reference's baseline (perstep: FP model, FP trajectory) is progressive's first pass: its
    last call is never recalibrated, every other call is."""
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="perstep"), [4] * STEPS, progress=False)
    perstep = act_params(layers)
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="progressive"), [4] * STEPS, progress=False)
    progressive = act_params(layers)
    assert all(torch.equal(perstep[n][0][-1], progressive[n][0][-1]) for n in layers)
    for step in range(STEPS - 1):  # weights and upstream activations quantized while observing: all differ
        assert any(not torch.equal(perstep[n][0][step], progressive[n][0][step]) for n in layers), step


def test_trajectory_alone_differs_only_after_the_first_step(pipe, layers):
    """pcr's own ablation (the same observation on both trajectories): step 0 sees x_T in both."""
    same = dict(observe_weights="quantized", observe_acts="fp")
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="perstep", **same), [4] * STEPS, progress=False)
    perstep = act_params(layers)
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="progressive", **same), [4] * STEPS,
                          progress=False)
    progressive = act_params(layers)
    assert all(torch.equal(perstep[n][0][0], progressive[n][0][0]) for n in layers)
    assert any(not torch.equal(perstep[n][0][1:], progressive[n][0][1:]) for n in layers)


def test_sequential_observation_sees_upstream_error(pipe, layers):
    """Sequential observation differs from first-pass observation after the first layer of the call."""
    kw = dict(method="perstep", observe_weights="quantized")
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(**kw, observe_acts="sequential"), [4] * STEPS,
                          progress=False)
    sequential = act_params(layers)
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(**kw, observe_acts="fp"), [4] * STEPS, progress=False)
    unquantized = act_params(layers)
    differ = [n for n in layers if not torch.allclose(sequential[n][0][0], unquantized[n][0][0], rtol=1e-5)]
    assert 0 < len(differ) < len(layers)


def test_observation_keys_are_checked():
    with pytest.raises(ConfigError, match="observe_acts"):
        config(method="naive", observe_acts="first_pass")
    with pytest.raises(ConfigError, match="observe_weights"):
        config(observe_weights="int8")
    with pytest.raises(ConfigError, match="recalibrate_last"):
        config(method="progressive", observe_acts="fp", recalibrate_last=False)
    assert config(method="progressive").act_observation == "first_pass"
    assert config(method="perstep").weight_observation == "fp"
    assert not config(method="progressive").observes_last


def test_shared_methods_give_one_range_for_all_steps(pipe, layers):
    cfg = config(method="naive", relax_steps=(3,))
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, cfg, cfg.act_bits_per_step(STEPS), progress=False)
    for layer in layers.values():
        ranges = layer.act_quantizer.range
        assert torch.equal(ranges[0], ranges[1]) and torch.equal(ranges[0], ranges[3])
        assert layer.act_quantizer.bits == [4, 4, 4, 10]
        assert layer.act_quantizer.scale[3] < layer.act_quantizer.scale[0]  # more levels in the same range


def test_observed_steps_per_method():
    timesteps = [999, 749, 499, 249, 0][:STEPS]
    assert observed_steps(config(method="naive"), timesteps, 1000) == {i: 1 for i in range(STEPS)}
    assert observed_steps(config(method="qdiff", uniform_steps=2), timesteps, 1000) == {0: 1, 3: 1}
    many = [int(t) for t in torch.linspace(999, 0, 50)]
    drawn = observed_steps(config(method="ptq4dm", ptq4dm_draws=2000, num_steps=50), many, 1000)
    assert sum(drawn.values()) == 2000
    late = sum(c for s, c in drawn.items() if s >= 25)
    assert late > 0.55 * 2000  # skewed toward x_0 (uniform draws would give 0.5; t < T/2 is the second half)
    assert drawn == observed_steps(config(method="ptq4dm", ptq4dm_draws=2000, num_steps=50), many, 1000)
