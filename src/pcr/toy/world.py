"""The toy world: procedurally drawn scenes of coloured shapes and the captions that describe them.

Every image is a pure function of its scene and a seed, and every prompt keeps the scene it was
written from, so an image can be checked against its prompt attribute by attribute.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "POSITIONS", "BACKGROUNDS", "FAMILIES", "SPLITS",
    "ToyObject", "ToyScene", "ToyPrompt", "random_scene", "caption", "draw", "draw_batch",
    "random_batch", "toy_prompts",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (40, 75, 225),
    "yellow": (235, 205, 30),
    "purple": (145, 55, 200),
    "orange": (245, 130, 25),
}
SIZES = {"small": 0.24, "large": 0.42}  # object extent as a fraction of the image side
POSITIONS = {  # object centre (x, y) as fractions of the image side
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
# Two objects always sit on opposite sides, so neither hides the other.
PAIRS = (("left", "right"), ("top", "bottom"))

_WHERE = {
    "plain": {"left": "on the left", "right": "on the right", "top": "at the top",
              "bottom": "at the bottom", "center": "in the middle"},
    "styled": {"left": "towards the left edge", "right": "towards the right edge",
               "top": "near the upper edge", "bottom": "near the lower edge", "center": "right in the centre"},
}
# Phrasing families: `plain` is what calibration and in-domain evaluation use; `styled` is another
# style of writing the same scenes, kept for the generalization split (`eval_out`). A caption is an
# object phrase per object, joined, inside a scene phrase that names the background.
_OBJECT_PHRASES = {
    "plain": ("a {size} {colour} {shape} {where}", "{an} {colour} {shape}, {size}, {where}"),
    "styled": ("one {colour} {shape} of {size} size {where}", "a {shape} coloured {colour} ({size}) {where}"),
}
_SCENE_PHRASES = {
    "plain": ("{objects} on a {background} background", "{background} background with {objects}"),
    "styled": ("picture of {objects}, the backdrop is {background}", "there is {objects} over plain {background}"),
}
_JOIN = {"plain": " and ", "styled": ", plus "}
N_TEMPLATES = 4  # object phrase x scene phrase
FAMILIES = tuple(_OBJECT_PHRASES)
SPLITS = ("train", "calib", "eval_in", "eval_out")


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class ToyScene:
    objects: tuple[ToyObject, ...]
    background: str

    def key(self) -> str:
        objs = ";".join(f"{o.shape},{o.colour},{o.size},{o.position}" for o in self.objects)
        return f"{objs}|{self.background}"

    def with_attribute(self, attribute: str, value: str, index: int = 0) -> ToyScene:
        """The same scene with one attribute changed (object `index`, or the background)."""
        if attribute == "background":
            return replace(self, background=value)
        objects = list(self.objects)
        objects[index] = replace(objects[index], **{attribute: value})
        return replace(self, objects=tuple(objects))


@dataclass(frozen=True)
class ToyPrompt:
    text: str
    scene: ToyScene
    family: str


def random_scene(rng: np.random.Generator, p_two: float = 0.25) -> ToyScene:
    two = rng.random() < p_two
    positions = PAIRS[rng.integers(len(PAIRS))] if two else (tuple(POSITIONS)[rng.integers(len(POSITIONS))],)
    objects = tuple(
        ToyObject(
            shape=SHAPES[rng.integers(len(SHAPES))],
            colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
            # two large objects would touch; a pair is drawn small
            size="small" if two else tuple(SIZES)[rng.integers(len(SIZES))],
            position=pos,
        )
        for pos in positions
    )
    return ToyScene(objects, tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])


def caption(scene: ToyScene, family: str = "plain", template: int = 0) -> str:
    """Describe `scene` with phrasing `template` (0..N_TEMPLATES-1) of a phrasing family."""
    if family not in _OBJECT_PHRASES:
        raise ValueError(f"unknown phrasing family {family!r}; expected one of {FAMILIES}")
    object_phrase = _OBJECT_PHRASES[family][template % 2]
    scene_phrase = _SCENE_PHRASES[family][(template // 2) % 2]
    objects = _JOIN[family].join(
        object_phrase.format(size=o.size, colour=o.colour, shape=o.shape, where=_WHERE[family][o.position],
                             an="an" if o.colour[0] in "aeiou" else "a")
        for o in scene.objects
    )
    return scene_phrase.format(objects=objects, background=scene.background)


def _masks(obj: ToyObject, res: int, jitter: np.ndarray) -> np.ndarray:
    """Coverage of one object on a res x res grid, anti-aliased by 4x supersampling."""
    ss = 4
    coords = (np.arange(res * ss) + 0.5) / (res * ss)
    x, y = np.meshgrid(coords, coords)
    cx, cy = POSITIONS[obj.position]
    cx, cy = cx + jitter[0], cy + jitter[1]
    half = SIZES[obj.size] / 2 * (1 + jitter[2])
    dx, dy = x - cx, y - cy
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= half**2
    elif obj.shape == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= half * 0.85
    elif obj.shape == "triangle":  # pointing up: apex at the top, flat base at the bottom
        top, base = cy - half, cy + half * 0.8
        width = half * (y - top) / (base - top)
        inside = (y >= top) & (y <= base) & (np.abs(dx) <= width)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    return inside.reshape(res, ss, res, ss).mean(axis=(1, 3))


def draw(scene: ToyScene, seed: int, res: int = 32) -> np.ndarray:
    """Render `scene` as a (res, res, 3) uint8 image; `seed` jitters placement and size a little."""
    rng = np.random.default_rng(seed)
    img = np.empty((res, res, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        jitter = rng.uniform([-0.04, -0.04, -0.1], [0.04, 0.04, 0.1])
        alpha = _masks(obj, res, jitter)[..., None]
        img = img * (1 - alpha) + np.asarray(COLOURS[obj.colour], np.float32) * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def draw_batch(scenes: list[ToyScene], seeds: list[int], res: int = 32) -> np.ndarray:
    """(B, 3, res, res) float32 images in [-1, 1], the range diffusion models work in."""
    imgs = np.stack([draw(s, seed, res) for s, seed in zip(scenes, seeds)])
    return imgs.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def random_batch(rng: np.random.Generator, batch_size: int, res: int = 32, p_two: float = 0.25):
    """A training batch: images in [-1, 1], captions from every phrasing family, and the scenes."""
    scenes = [random_scene(rng, p_two) for _ in range(batch_size)]
    captions = []
    for scene in scenes:
        family = FAMILIES[rng.integers(len(FAMILIES))]
        captions.append(caption(scene, family, int(rng.integers(N_TEMPLATES))))
    seeds = rng.integers(0, 2**31 - 1, size=batch_size).tolist()
    return draw_batch(scenes, seeds, res), captions, scenes


def _held_out(scene: ToyScene) -> bool:
    """A fixed quarter of all scenes is reserved for evaluation, so calib and eval never share a prompt."""
    return hashlib.sha256(scene.key().encode()).digest()[0] % 4 == 0


def toy_prompts(split: str, n: int, seed: int = 0, p_two: float = 0.25) -> list[ToyPrompt]:
    """`n` distinct prompts of a named split, deterministic in `seed`.

    calib: plain phrasing, scenes outside the held-out quarter. eval_in: plain phrasing, held-out
    scenes (same distribution, disjoint prompts). eval_out: the styled phrasing family, held-out
    scenes. train: any scene and family (what the toy models learn from).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown toy prompt split {split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    prompts: dict[str, ToyPrompt] = {}
    stale = 0  # draws since the last new prompt: the space of prompts is finite
    while len(prompts) < n:
        stale += 1
        if stale > 20_000:
            raise ValueError(f"the toy split {split!r} has fewer than {n} distinct prompts "
                             f"(found {len(prompts)}); ask for fewer")
        scene = random_scene(rng, p_two)
        if split != "train" and _held_out(scene) != (split != "calib"):
            continue
        family = "styled" if split == "eval_out" else "plain"
        if split == "train":
            family = FAMILIES[rng.integers(len(FAMILIES))]
        text = caption(scene, family, int(rng.integers(N_TEMPLATES)))
        if text not in prompts:
            prompts[text] = ToyPrompt(text, scene, family)
            stale = 0
    return list(prompts.values())
