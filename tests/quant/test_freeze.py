"""The integer backend (pcr.quantize(..., backend="integer")) and packed 4-bit weights (issue 13).

A frozen model keeps only integer weights (4-bit codes two per byte), releases the float ones, runs
the int8 kernels on the calls they cover and dequantizes from the codes on relaxed calls; its images
match the simulated model's; a params file packs 4-bit codes two per byte and loads them back.
"""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pcr
from pcr.calibrate import calibrate
from pcr.pipelines import get_step_tracker, load_pipeline
from pcr.quant import QuantConfig, load_params, quant_layers, quant_mode, save_params, unquantize_unet
from pcr.quant.freeze import is_frozen, weight_bytes
from pcr.quant.integer import INTEGER, integer_forward, prepare_weight, use_integer_kernels
from pcr.quant.integrity import tensor_checksums
from pcr.quant.packing import pack_codes, unpack_centred, unpack_codes
from pcr.quant.params import collect_params
from pcr.quant.quantizer import qrange

PROMPTS = ["a red circle on the left", "two blue squares"]
RELAXED = "float: 10-bit activations do not fit int8 (relaxed call)"


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 3), (6, 8)], ids=["odd", "conv", "even"])
def test_codes_pack_two_per_byte_and_unpack(bits, symmetric, shape):
    qmin, qmax = qrange(bits, symmetric)
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(qmin, qmax + 1, shape, generator=generator).to(torch.int8 if symmetric else torch.uint8)
    packed = pack_codes(codes, bits, symmetric)
    inner = codes[0].numel()
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], (inner + 1) // 2)
    assert torch.equal(unpack_codes(packed, shape, bits, symmetric), codes)
    zero_point = torch.randint(qmin, qmax + 1, (shape[0],), generator=generator) * (not symmetric)
    centred = unpack_centred(packed, inner, (qmin - zero_point).to(torch.int8).reshape(-1, 1))
    assert torch.equal(centred.int(), codes.reshape(shape[0], -1).int() - zero_point.reshape(-1, 1).int())


def test_eight_bit_codes_do_not_pack():
    with pytest.raises(ValueError, match="at most 4 bits"):
        pack_codes(torch.zeros(2, 2, dtype=torch.uint8), 8, False)


@pytest.fixture(scope="module")
def calibrated():
    """tiny-sd calibrated at W8A8 and W4A8, 3 steps, the last call relaxed to 10 bits."""
    pipe = load_pipeline("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for bits in (8, 4):
        config = QuantConfig(weight_bits=bits, act_bits=8, num_steps=3, guidance_scale=5.0, batch_size=2,
                             relax_steps=(2,))
        out[bits] = calibrate(pipe, PROMPTS, config, progress=False)
    return pipe, out


def _sample(pipe) -> np.ndarray:
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, num_inference_steps=3, guidance_scale=5.0, generator=generators, output_type="np").images


def _fresh():
    pipe = load_pipeline("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("bits", [8, 4])
def test_the_integer_backend_samples_the_simulated_images(calibrated, bits, tmp_path):
    """Same images as the simulated model, up to float rounding: measured PSNR 46 dB (W8A8) and 53 dB
    (W4A8) between the two on tiny-sd's noise-like images (the simulated path against itself under
    one-ulp noise per layer differs as much; tests/quant/test_integer.py)."""
    fp, params = calibrated[0], calibrated[1][bits]
    try:
        pcr.quantize(fp, params)
        simulated = _sample(fp)
    finally:
        unquantize_unet(fp.unet)
    pipe = _fresh()
    float_bytes = weight_bytes(pipe.unet)
    save_params(tmp_path / "p.safetensors", params)
    pcr.quantize(pipe, tmp_path / "p.safetensors", backend="integer")
    images = _sample(pipe)
    psnr = 10 * np.log10(1 / np.mean((images - simulated) ** 2))
    print(f"W{bits}A8: integer vs simulated images {psnr:.1f} dB")
    assert psnr > 40
    layers = quant_layers(pipe.unet)
    assert pipe.unet.pcr_kernel_paths == {INTEGER: 2 * len(layers), RELAXED: len(layers)}
    for layer in layers.values():  # nothing but the integer weight keeps the float weight or codes alive
        assert is_frozen(layer) and layer.weight is None and layer.weight_quantizer.codes.numel() == 0
        assert layer.__dict__["_int_weight"].source == ()
    ratio = weight_bytes(pipe.unet) / float_bytes  # what stays float: biases, norms, conv_in/out, embeddings
    assert ratio < (0.3 if bits == 8 else 0.17), ratio
    assert pipe.unet.pcr_calibration["backend"] == "integer"


def test_a_frozen_layer_falls_back_on_the_weight_the_simulation_uses(calibrated):
    """A relaxed call dequantizes the frozen codes (packed at 4 bits) to exactly the simulated weight."""
    pipe, params = calibrated[0], calibrated[1][4]
    try:
        pcr.quantize(pipe, params)
        layers = quant_layers(pipe.unet)
        expected = {name: layer.effective_weight().clone() for name, layer in layers.items()}
        for name, layer in layers.items():
            weight = prepare_weight(layer, pack=True)
            assert weight.packed is not None and weight.codes is None
            assert torch.equal(weight.dequantized(torch.float32), expected[name]), name
    finally:
        unquantize_unet(pipe.unet)


@pytest.mark.parametrize("pack", [False, True], ids=["int8", "packed"])
@torch.no_grad()
def test_packed_weights_give_the_same_integer_sums(calibrated, pack):
    """4-bit codes unpacked per call feed the kernels the same integers as unpacked int8 codes."""
    pipe, params = calibrated[0], calibrated[1][4]
    try:
        pcr.quantize(pipe, params)
        tracker = get_step_tracker(pipe.unet)  # layers called directly: set the call a UNet call would
        tracker.step, tracker.num_calls = params.act_bits.index(8), params.num_calls
        for layer in list(quant_layers(pipe.unet).values())[::9]:
            linear = isinstance(layer, torch.nn.Linear)
            shape = (2, layer.in_features) if linear else (2, layer.in_channels, 8, 8)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            plain = integer_forward(layer, x)
            frozen = prepare_weight(layer, pack=pack)
            frozen.frozen = True
            layer.__dict__["_int_weight"] = frozen
            assert layer.kernel_path == INTEGER and (frozen.packed is not None) == pack
            torch.testing.assert_close(integer_forward(layer, x), plain, rtol=0, atol=0)
            layer.__dict__.pop("_int_weight")
    finally:
        unquantize_unet(pipe.unet)


def test_a_frozen_model_refuses_to_go_back(calibrated):
    pipe = _fresh()
    pcr.quantize(pipe, calibrated[1][8], backend="integer")
    with pytest.raises(RuntimeError, match="integer backend.*load the pipeline again"):
        unquantize_unet(pipe.unet)
    with pytest.raises(RuntimeError, match="integer backend.*save the parameters"):
        collect_params(pipe.unet, calibrated[1][8].config, [8] * 3, [0] * 3, "DDIM", "tiny-sd")
    with quant_mode(pipe.unet, weights=False, acts=False), pytest.raises(RuntimeError, match="released its float"):
        _sample(pipe)
    with pytest.raises(RuntimeError, match="integer backend.*cannot be switched"):
        use_integer_kernels(pipe.unet, enabled=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        pcr.quantize(_fresh(), calibrated[1][8], backend="int4")


def test_params_files_pack_4_bit_codes(calibrated, tmp_path):
    """4-bit codes take half a byte each in the file (rows padded to whole bytes), 8-bit ones a byte;
    both load back to the same codes and digest."""
    for bits, saved in calibrated[1].items():
        path = tmp_path / f"w{bits}.safetensors"
        save_params(path, saved)
        with safe_open(str(path), framework="pt") as f:
            stored = {name: f.get_tensor(f"{name}.weight_codes") for name in saved.layers}
        for name, tensors in saved.layers.items():
            codes = tensors["weight_codes"]
            expected = codes.numel() if bits == 8 else codes.shape[0] * ((codes[0].numel() + 1) // 2)
            assert stored[name].nbytes == expected, name
        loaded = load_params(path)
        assert loaded.digest() == saved.digest()
        for name, tensors in saved.layers.items():
            assert torch.equal(loaded.layers[name]["weight_codes"], tensors["weight_codes"]), name


def test_params_files_of_the_first_format_still_load(calibrated, tmp_path):
    """A pcr.quant.params/1 file (4-bit codes one per byte) loads to the same parameters."""
    params = calibrated[1][4]
    tensors = params.tensors()
    header = {**params.header(), "format": "pcr.quant.params/1", "tensor_sha256": tensor_checksums(tensors)}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"pcr": json.dumps(header)})
    loaded = load_params(tmp_path / "old.safetensors")
    assert loaded.digest() == params.digest()
