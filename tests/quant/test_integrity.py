"""Bad numbers are caught where they appear, and params files are trustworthy (issue 12).

A NaN weight stops calibration before it starts; a NaN activation stops it at the call it appears
in; parameters with NaNs, out-of-range codes or damaged bytes are neither saved nor loaded; the
params digest the image folders depend on ignores timings.
"""

import dataclasses
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pcr
from pcr.calibrate import calibrate, calibrate_weights_only
from pcr.pipelines import get_step_tracker, load_pipeline
from pcr.quant import QuantConfig, is_quantized, load_params, save_params
from pcr.quant.integrity import NonFiniteError, ParamsFileError, tensor_checksums

PROMPTS = ["a red circle on the left", "two blue squares"]
CONFIG = QuantConfig(weight_bits=4, act_bits=6, num_steps=2, guidance_scale=5.0, batch_size=2)
BAD_WEIGHT = "down_blocks.0.resnets.0.conv1.weight"


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def params(pipe):
    return calibrate(pipe, PROMPTS, CONFIG, model="tiny-sd", progress=False)


def _copy(params):
    """params with their own tensors, to spoil one."""
    layers = {name: {k: t.clone() for k, t in tensors.items()} for name, tensors in params.layers.items()}
    return dataclasses.replace(params, layers=layers, info=dict(params.info))


def _rewrite(path, out, change=None, checksums=True):
    """Write ``path``'s tensors (``change``d) to ``out`` as another writer would: header kept, with
    checksums of the new tensors or none (a file written before they were stored)."""
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["pcr"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if change:
        change(tensors)
    header.pop("tensor_sha256", None)
    if checksums:
        header["tensor_sha256"] = tensor_checksums(tensors)
    save_file(tensors, str(out), metadata={"pcr": json.dumps(header)})
    return out


@pytest.fixture
def nan_weight(pipe):
    weight = pipe.unet.get_parameter(BAD_WEIGHT)
    with torch.no_grad():
        old = weight[0, 0, 0, 0].item()
        weight[0, 0, 0, 0] = float("nan")
    yield
    with torch.no_grad():
        weight[0, 0, 0, 0] = old


# -- 1. non-finite numbers ---------------------------------------------------------------------------------------
def test_a_nan_weight_stops_calibration_before_it_starts(pipe, nan_weight):
    message = rf"unet\.{BAD_WEIGHT} has 1 NaN.*checkpoint is corrupt"
    with pytest.raises(NonFiniteError, match=message):
        calibrate(pipe, PROMPTS, CONFIG, progress=False)
    assert not is_quantized(pipe.unet)
    with pytest.raises(NonFiniteError, match=message):
        calibrate_weights_only(pipe, [], CONFIG, progress=False)


def test_a_nan_weight_is_refused_by_quantize(pipe, params, nan_weight):
    with pytest.raises(NonFiniteError, match=rf"unet\.{BAD_WEIGHT} has 1 NaN"):
        pcr.quantize(pipe, params)
    assert not is_quantized(pipe.unet)


@pytest.mark.parametrize("method", ["progressive", "qdiff"])
def test_nan_activations_stop_calibration_at_the_call_they_appear_in(pipe, method):
    """A NaN from the second UNet call on (a module's output, the weights finite) is named with its call."""
    def poison(module, args, output):
        if get_step_tracker(pipe.unet).step == 1:
            output = output.clone()
            output.view(-1)[0] = float("nan")
        return output

    hook = pipe.unet.conv_in.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError, match=r"non-finite activation range.*UNet call 1 .*of 2.*unet\."):
            calibrate(pipe, PROMPTS, CONFIG.replace(method=method, uniform_steps=2), progress=False)
    finally:
        hook.remove()
    assert not is_quantized(pipe.unet)


def test_non_finite_parameters_are_neither_saved_nor_loaded(pipe, params, tmp_path):
    name = next(iter(params.layers))
    bad = _copy(params)
    bad.layers[name]["act_range"][1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"{name}\.act_range has 1 NaN"):
        save_params(tmp_path / "bad.safetensors", bad)
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(NonFiniteError, match=rf"{name}\.act_range"):
        pcr.quantize(pipe, bad)
    assert not is_quantized(pipe.unet)
    save_params(tmp_path / "good.safetensors", params)

    def spoil(tensors):
        tensors[f"{name}.act_scale"][0] = float("inf")

    for checksums in (True, False):  # a writer that checked nothing, with or without checksums
        path = _rewrite(tmp_path / "good.safetensors", tmp_path / f"bad{checksums}.safetensors", spoil, checksums)
        with warnings.catch_warnings(), pytest.raises(NonFiniteError, match=rf"{name}\.act_scale has 1 inf.*{path}"):
            warnings.simplefilter("ignore")
            load_params(path)
        with warnings.catch_warnings(), pytest.raises(NonFiniteError, match=rf"{name}\.act_scale"):
            warnings.simplefilter("ignore")
            pcr.quantize(pipe, path)


# -- 2. checksums and code ranges -----------------------------------------------------------------------------------
def test_damaged_tensor_bytes_fail_to_load(params, tmp_path):
    path = tmp_path / "p.safetensors"
    save_params(path, params)
    with safe_open(str(path), framework="pt") as f:
        assert set(json.loads(f.metadata()["pcr"])["tensor_sha256"]) == set(f.keys())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ParamsFileError, match=rf"(?i){path}.*damaged.*recalibrate"):
        load_params(path)


def test_weight_codes_outside_the_bit_range_are_refused(params, tmp_path):
    name = next(iter(params.layers))
    save_params(tmp_path / "good.safetensors", params)

    # 4-bit codes are packed two per byte in the file, where every byte is valid: a zero point can still
    # leave the grid, and a packed tensor of the wrong size does not unpack
    def spoil(tensors):
        tensors[f"{name}.weight_zero_point"].view(-1)[0] = 200  # 4-bit codes are 0..15

    path = _rewrite(tmp_path / "good.safetensors", tmp_path / "codes.safetensors", spoil)
    with pytest.raises(ParamsFileError, match=rf"{name}\.weight_zero_point.*outside.*4-bit.*{path}"):
        load_params(path)

    def cut(tensors):
        tensors[f"{name}.weight_codes"] = tensors[f"{name}.weight_codes"][:, 1:].contiguous()

    path = _rewrite(tmp_path / "good.safetensors", tmp_path / "cut.safetensors", cut)
    with pytest.raises(ParamsFileError, match=rf"{path}.*packed weight codes of {name} do not unpack"):
        load_params(path)
    bad = _copy(params)
    bad.layers[name]["weight_codes"].view(-1)[0] = 200
    with pytest.raises(ParamsFileError, match=rf"{name}\.weight_codes"):
        save_params(tmp_path / "bad.safetensors", bad)


def test_files_without_checksums_still_load_with_a_warning(params, tmp_path):
    save_params(tmp_path / "new.safetensors", params)
    old = _rewrite(tmp_path / "new.safetensors", tmp_path / "old.safetensors", checksums=False)
    with pytest.warns(UserWarning, match="no checksums"):
        loaded = load_params(old)
    for name, tensors in params.layers.items():
        for key, tensor in tensors.items():
            assert torch.equal(loaded.layers[name][key], tensor)


# -- 3. a broken header ---------------------------------------------------------------------------------------------
def test_a_broken_json_header_names_the_file(params, tmp_path):
    with safe_open(str(_save(params, tmp_path / "p.safetensors")), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata={"pcr": '{"format": "pcr.quant.params/1", "config": {'})
    with pytest.raises(ParamsFileError, match=rf"(?i){path}.*header is not valid JSON.*recalibrate"):
        load_params(path)
    save_file(tensors, str(path), metadata={"pcr": '{"format": "pcr.quant.params/1"}'})
    with pytest.raises(ParamsFileError, match=rf"{path}.*header.*config"):
        load_params(path)


def _save(params, path):
    save_params(path, params)
    return path


# -- 4. a digest without timings ------------------------------------------------------------------------------------
def test_the_digest_ignores_timings_but_not_parameters(pipe, params, tmp_path):
    from pcr.quant.params import params_digest

    again = calibrate(pipe, PROMPTS, CONFIG, model="tiny-sd", progress=False)
    assert again.info["act_seconds"] != params.info["act_seconds"]
    assert params_digest(again) == params_digest(params) == params.digest()
    loaded = load_params(_save(params, tmp_path / "p.safetensors"))
    assert params_digest(loaded) == params_digest(params)
    other = _copy(params)
    next(iter(other.layers.values()))["act_scale"][0] *= 2
    assert params_digest(other) != params_digest(params)
    assert params_digest(dataclasses.replace(params, act_bits=[8, 6])) != params_digest(params)


# -- 5. a prompt string where a list belongs ------------------------------------------------------------------------
def test_a_bare_prompt_string_is_refused(pipe):
    with pytest.raises(TypeError, match=r"prompts.*list.*'a red circle'"):
        calibrate(pipe, "a red circle", CONFIG, progress=False)
    with pytest.raises(TypeError, match=r"prompts.*list"):
        calibrate_weights_only(pipe, "a red circle", CONFIG, progress=False)
    assert not is_quantized(pipe.unet)
