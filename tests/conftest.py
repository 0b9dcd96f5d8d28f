import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(items):
    """Modules with slow tests (the DAG and the paper profiles, minutes each) first, each in its own order:
    on several workers (make test runs one per core) the short tests then fill in around them at the end,
    instead of one worker finishing a long test alone."""
    slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: one thread is fastest, and two spin-wait on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def pcr_cache(tmp_path_factory):
    """Keep the tokenizer cache (and anything else pcr caches) out of the home folder."""
    old = os.environ.get("PCR_CACHE")
    os.environ["PCR_CACHE"] = str(tmp_path_factory.mktemp("pcr_cache"))
    yield
    if old is None:
        os.environ.pop("PCR_CACHE", None)
    else:
        os.environ["PCR_CACHE"] = old


SHARED_PIPELINES = ("pipe", "any_pipe")  # fixture names of pipelines that may be module-scoped


@pytest.fixture(autouse=True)
def shared_pipeline_left_unquantized(request):
    """A test that quantizes a module's shared pipeline must restore it however it ends (in a finally or
    a fixture's teardown); otherwise the next test would silently run a quantized model. Fails the
    test that leaked, after restoring the pipeline."""
    pipes = {name: request.getfixturevalue(name) for name in SHARED_PIPELINES if name in request.fixturenames}
    yield
    if not pipes:
        return
    from pcr.quant import is_quantized, unquantize_unet

    for name, pipe in pipes.items():
        if getattr(pipe, "unet", None) is not None and is_quantized(pipe.unet):
            unquantize_unet(pipe.unet)
            pytest.fail(f"{request.node.name} left its shared `{name}` quantized: restore it in a finally")


# Tiny toy models, shared by the toy, calibration and benchmark tests: the point is that the code
# paths run and connect, not that the models learn.
TINY_RES = 16


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from pcr.toy.clip import train_toy_clip

    folder = tmp_path_factory.mktemp("toy") / "clip"
    train_toy_clip(folder, steps=3, batch_size=8, res=TINY_RES, width=32, layers=1, progress=False)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_clip_dir, tmp_path_factory):
    from pcr.toy.model import train_toy_model

    folder = tmp_path_factory.mktemp("toy") / "model"
    train_toy_model(tiny_clip_dir, folder, steps=2, batch_size=4, res=TINY_RES, progress=False)
    return folder


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl", "toy"])
def any_pipe(request, tiny_model_dir):
    """Each pipeline family pcr samples: tiny random SD and SDXL, and the tiny toy model."""
    from pcr.pipelines import load_pipeline

    pipe = load_pipeline(f"toy:{tiny_model_dir}" if request.param == "toy" else request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe
