import numpy as np
import pytest
from PIL import Image

from pcr.bench.generation import image_name
from pcr.toy import world
from pcr.toy.clip import train_toy_clip

# Tiny sizes. The toy CLIP gets 30 steps (~2 s): after 3, its image features barely vary between
# images, so FID would be ~1e-4 whatever the images and "FID ~ 0 for identical folders" would say nothing.
RES = 16
N_IMAGES = 12


@pytest.fixture(scope="session")
def bench_clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "clip"
    train_toy_clip(folder, steps=30, batch_size=8, res=RES, width=32, layers=1, progress=False)
    return folder


@pytest.fixture(scope="session")
def toy_set():
    """(prompts, uint8 images (N, RES, RES, 3)) of drawn toy scenes: a stand-in for the FP images."""
    prompts = world.toy_prompts("eval_in", N_IMAGES, seed=0)
    images = np.stack([world.draw(p.scene, i, RES) for i, p in enumerate(prompts)])
    return [p.text for p in prompts], images


@pytest.fixture
def save_images():
    """save(folder, images): (N, H, W, 3) uint8 images as a generation folder's 00000.png, 00001.png, ..."""

    def save(folder, images):
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / image_name(i))
        return folder

    return save
