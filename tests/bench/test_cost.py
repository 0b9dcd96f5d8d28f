import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from pcr.bench.cost import MB, cost_report, layer_macs, unet_example_inputs
from pcr.pipelines import load_pipeline, tiny_sd, tiny_sdxl
from pcr.quant.config import QuantConfig
from pcr.toy.model import toy_unet_config


class Net(nn.Module):
    """Small enough to count by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 216 weights
        self.fc = nn.Linear(8, 4)  # 32 weights + 4 biases

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


NET_INPUTS = {"x": torch.zeros(1, 3, 4, 4)}


def test_hand_counted_macs_bitops_and_packed_size():
    net = Net()
    assert layer_macs(net, NET_INPUTS) == {"conv": 4 * 4 * 8 * 3 * 9, "fc": 4 * 8}  # 3456 and 32
    config = QuantConfig(weight_bits=4, act_bits=8, keep_fp=("fc",), num_steps=4)
    report = cost_report(net, config, example_inputs=NET_INPUTS)
    assert report["bitops_fp"] == 3488 * 32 * 32
    assert report["bitops"] == 3456 * 4 * 8 + 32 * 32 * 32  # fc kept in FP
    assert report["bitops_ratio"] == pytest.approx((3456 * 32 + 32 * 1024) / (3488 * 1024))
    # conv: 216 weights x 4 bits + 8 channels x (32-bit scale + 32-bit zero point); fc: 36 params x 16 bits
    assert report["weight_mb_packed"] * MB * 8 == 216 * 4 + 8 * 64 + 36 * 16
    assert report["weight_mb_fp32"] * MB == 252 * 4 and report["weight_mb_fp16"] * MB == 252 * 2
    per_tensor = cost_report(net, config.replace(weight_granularity="tensor", weight_symmetric=True),
                             example_inputs=NET_INPUTS)
    assert per_tensor["weight_mb_packed"] * MB * 8 == 216 * 4 + 32 + 36 * 16  # one scale, no zero point


def test_w8a8_with_nothing_kept_fp_is_64_over_1024_of_fp():
    unet = tiny_sd().unet
    report = cost_report(unet, QuantConfig(weight_bits=8, act_bits=8, keep_fp=()))
    assert report["bitops_ratio"] == 64 / 1024
    assert report["avg_act_bits"] == 8 and report["macs"] == report["macs_quantized"] > 0
    assert report["n_layers_not_called"] == 0


def test_kept_layers_cost_fp_and_relaxed_steps_raise_the_average():
    unet = tiny_sd().unet
    macs = layer_macs(unet, unet_example_inputs(unet))
    assert macs["conv_in"] == macs["conv_out"] == 16 * 16 * 32 * 4 * 9  # 16x16 latent, 4 <-> 32 channels
    assert macs["time_embedding.linear_1"] == 128 * 32
    default = cost_report(unet, QuantConfig())  # conv_in, conv_out kept in FP
    total, fp = default["macs"], macs["conv_in"] + macs["conv_out"]
    assert default["bitops_ratio"] == pytest.approx(((total - fp) * 64 + fp * 1024) / (total * 1024))
    relaxed = QuantConfig(keep_fp=(), num_steps=10, relax_steps=(8, 9), relax_bits=10)
    report = cost_report(unet, relaxed)
    assert report["avg_act_bits"] == pytest.approx(8.4)
    assert report["bitops_ratio"] == pytest.approx(8 * 8.4 / 1024)
    assert cost_report(unet, relaxed, act_bits=[16] * 10)["bitops_ratio"] == pytest.approx(8 * 16 / 1024)


def test_w4_packs_quantized_weights_to_an_eighth_of_fp32():
    unet = tiny_sd().unet
    report = cost_report(unet, QuantConfig(weight_bits=4, keep_fp=()))
    nq, n = report["n_quantized_params"], report["n_params"]
    channels = sum(m.weight.shape[0] for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert report["weight_mb_packed"] * MB * 8 == nq * 4 + channels * 64 + (n - nq) * 16
    assert report["weight_mb_stored"] == report["weight_mb_fp32"]  # the tiny UNet is float32
    assert 1 / 8 < report["weight_mb_packed"] / report["weight_mb_fp32"] < 1 / 6


@pytest.mark.parametrize("build", [lambda: tiny_sdxl().unet,
                                   lambda: UNet2DConditionModel(**toy_unet_config(res=16, cross_attention_dim=32))],
                         ids=["sdxl-text-time", "toy-text"])
def test_example_inputs_reach_every_layer(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build().eval()
    report = cost_report(unet, QuantConfig(keep_fp=()))
    assert report["n_layers_not_called"] == 0 and report["bitops_ratio"] == 64 / 1024


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="act_bits must be a non-empty list"):
        cost_report(Net(), QuantConfig(keep_fp=()), act_bits=[], example_inputs=NET_INPUTS)
    with pytest.raises(ValueError, match=r"keep_fp pattern\(s\) \['convv'\] match no"):
        cost_report(Net(), QuantConfig(keep_fp=("convv",)), example_inputs=NET_INPUTS)


def test_a_pipelines_unet_is_counted_outside_any_sampling_run():
    """load_pipeline attaches a StepTracker, which refuses UNet calls outside a run unless told the step."""
    pipe = load_pipeline("tiny-sd")
    report = cost_report(pipe.unet, QuantConfig())
    assert report["n_layers_not_called"] == 0 and 0 < report["bitops_ratio"] < 1
