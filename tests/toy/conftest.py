import pytest

from pcr.toy.clip import train_toy_clip
from pcr.toy.model import train_toy_model

# Tiny sizes: the point is that the code paths run and connect, not that the models learn.
TINY_RES = 16


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "clip"
    train_toy_clip(folder, steps=3, batch_size=8, res=TINY_RES, width=32, layers=1, progress=False)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_clip_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "model"
    train_toy_model(tiny_clip_dir, folder, steps=2, batch_size=4, res=TINY_RES, progress=False)
    return folder
