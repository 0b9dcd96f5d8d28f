import numpy as np
import pytest
import torch

from pcr.toy import world
from pcr.toy.evaluate import min_object_share, object_present


@pytest.mark.parametrize("res", [16, 32, 64])
def test_every_drawn_scene_shows_an_object_and_an_empty_frame_none(res):
    images, _, scenes = world.random_batch(np.random.default_rng(res), 500, res, 0.25)
    assert object_present(torch.from_numpy(images)).all()
    empty = world.draw_batch([world.ToyScene((), b) for b in world.BACKGROUNDS], [0, 1, 2], res)
    assert not object_present(torch.from_numpy(empty)).any()
    assert 0.005 < min_object_share(res) < 0.02  # half a small triangle: about 1% of the frame


def test_a_faint_smudge_or_a_few_coloured_pixels_are_not_an_object():
    frame = torch.full((2, 3, 32, 32), -1.0)  # black
    frame[0, :, 10:20, 10:20] = 0.1  # a gray square: no colour
    frame[1, 0, 5:8, 5:8] = 1.0  # 9 red pixels: under half the smallest object
    assert not object_present(frame).any()
    frame[1, 0, 5:12, 5:12] = 1.0  # 49 red pixels: an object
    assert object_present(frame).tolist() == [False, True]
