import numpy as np
import pytest

from pcr.toy import world


def test_draw_is_a_pure_function_of_scene_and_seed():
    scene = world.ToyScene((world.ToyObject("circle", "red", "large", "left"),), "white")
    assert np.array_equal(world.draw(scene, 3), world.draw(scene, 3))
    assert not np.array_equal(world.draw(scene, 3), world.draw(scene, 4))  # the seed jitters placement


@pytest.mark.parametrize("position", list(world.POSITIONS))
@pytest.mark.parametrize("shape", world.SHAPES)
def test_drawn_object_has_its_colour_position_and_background(shape, position):
    scene = world.ToyScene((world.ToyObject(shape, "blue", "large", position),), "gray")
    img = world.draw(scene, seed=0).astype(float)
    assert np.array_equal(img[0, 0], world.BACKGROUNDS["gray"])  # corners are background
    covered = np.abs(img - world.BACKGROUNDS["gray"]).sum(-1) > 1
    ys, xs = np.nonzero(covered)
    cx, cy = np.array(world.POSITIONS[position]) * img.shape[0]
    assert abs(xs.mean() + 0.5 - cx) < 3 and abs(ys.mean() + 0.5 - cy) < 4
    solid = np.abs(img - world.COLOURS["blue"]).sum(-1) < 1
    assert solid.sum() > 20  # the object's inside is exactly its colour


def test_sizes_differ_and_shapes_differ():
    def area(shape, size):
        scene = world.ToyScene((world.ToyObject(shape, "red", size, "center"),), "black")
        return (world.draw(scene, 0).sum(-1) > 0).sum()

    for shape in world.SHAPES:
        assert area(shape, "large") > 2 * area(shape, "small")
    assert len({area(shape, "large") for shape in world.SHAPES}) == 3


def test_captions_name_every_attribute():
    scene = world.ToyScene((world.ToyObject("triangle", "orange", "small", "top"),
                            world.ToyObject("square", "green", "small", "bottom")), "white")
    for family in world.FAMILIES:
        for template in range(world.N_TEMPLATES):
            text = world.caption(scene, family, template)
            for word in ("triangle", "orange", "square", "green", "small", "white"):
                assert word in text, (family, template, text)
    assert "an orange" in world.caption(scene, "plain", 1)


def test_splits_are_deterministic_distinct_and_disjoint():
    calib = world.toy_prompts("calib", 300, seed=0)
    assert [p.text for p in calib] == [p.text for p in world.toy_prompts("calib", 300, seed=0)]
    assert len({p.text for p in calib}) == 300
    eval_in = world.toy_prompts("eval_in", 150, seed=0)
    eval_out = world.toy_prompts("eval_out", 150, seed=0)
    # calib and eval share no prompt and not even a scene: a quarter of scenes is held out
    assert not {p.scene for p in calib} & {p.scene for p in eval_in + eval_out}
    assert {p.family for p in calib} == {p.family for p in eval_in} == {"plain"}
    assert {p.family for p in eval_out} == {"styled"}
    assert any(len(p.scene.objects) == 2 for p in calib) and any(len(p.scene.objects) == 1 for p in calib)
    assert [p.text for p in world.toy_prompts("calib", 300, seed=1)] != [p.text for p in calib]


def test_bad_split_and_too_many_prompts_are_clear_errors():
    with pytest.raises(ValueError, match="unknown toy prompt split"):
        world.toy_prompts("validation", 3)
    with pytest.raises(ValueError, match="fewer than"):
        world.toy_prompts("eval_in", 100_000, p_two=0.0)


def test_random_batch_is_in_model_range_and_seeded():
    imgs, captions, scenes = world.random_batch(np.random.default_rng(0), 8)
    assert imgs.shape == (8, 3, 32, 32) and imgs.dtype == np.float32
    assert imgs.min() >= -1 and imgs.max() <= 1
    again, captions2, _ = world.random_batch(np.random.default_rng(0), 8)
    assert np.array_equal(imgs, again) and captions == captions2
