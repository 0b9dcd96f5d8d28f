"""How well the toy world's models work: the toy CLIP's zero-shot accuracy per attribute on drawn
images, and how often the toy text-to-image model's samples show their prompt's attributes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pcr.toy import world
from pcr.toy.clip import attribute_accuracy

__all__ = [
    "CHANCE", "clip_zero_shot", "prompt_following", "sample_images", "image_grid", "evaluate_toy_models",
    "sample_grid", "object_present",
]

CHANCE = {name: 1 / len(values) for name, values in {**world.ATTRIBUTES, "background": world.BACKGROUNDS}.items()}
# Every background is gray-scale and every object colour saturated: a pixel whose channels spread more
# than this (in [0, 1]) belongs to an object. The least saturated colour (green) spreads 0.53.
CHROMA = 0.25


def _chromatic_share(images: torch.Tensor) -> torch.Tensor:
    """(N,) share of each [-1, 1] image's pixels that are coloured (an object's, not the background's)."""
    x = (images.float() + 1) / 2
    return ((x.amax(1) - x.amin(1)) > CHROMA).float().mean((1, 2))


def min_object_share(res: int) -> float:
    """Half the coloured share of the smallest object drawn as small as the world's jitter allows: an image
    with less shows no object (an empty frame)."""
    smallest = world.ToyScene((world.ToyObject("triangle", "green", "small", "center"),), "black")
    share = _chromatic_share(torch.from_numpy(world.draw_batch([smallest], [0], res)))
    return float(share[0]) * 0.9 / 2  # the jitter shrinks an object by up to 10%


def object_present(images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: does each [-1, 1] image (N, 3, H, W) show an object, or is it an empty frame?"""
    return _chromatic_share(images) >= min_object_share(images.shape[-1])


def clip_zero_shot(model, tokenizer, prompts: list[world.ToyPrompt], seed: int = 0, res: int = 32) -> dict:
    """Attribute accuracy of the toy CLIP on freshly drawn images of `prompts`' scenes."""
    scenes = [p.scene for p in prompts]
    images = torch.from_numpy(world.draw_batch(scenes, [seed + i for i in range(len(scenes))], res))
    return attribute_accuracy(model, tokenizer, images, scenes)


@torch.no_grad()
def sample_images(pipe, texts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                  batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """(N, 3, H, W) samples in [-1, 1], image i seeded by `seed + i` whatever the batching."""
    out = []
    for lo in tqdm(range(0, len(texts), batch_size), desc="sampling", disable=not progress):
        batch = texts[lo:lo + batch_size]
        gens = [torch.Generator().manual_seed(seed + lo + i) for i in range(len(batch))]
        pipe.set_progress_bar_config(disable=True)
        imgs = pipe(batch, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
        out.append(imgs * 2 - 1)
    return torch.cat(out)


def prompt_following(pipe, model, tokenizer, prompts: list[world.ToyPrompt], **sample_kwargs) -> dict:
    """Attribute accuracy, judged by the toy CLIP, of the model's samples for `prompts`, and the share of
    samples that show an object at all (`object`: an empty frame is right about its background only)."""
    images = sample_images(pipe, [p.text for p in prompts], **sample_kwargs)
    accuracy = attribute_accuracy(model, tokenizer, images, [p.scene for p in prompts])
    return {**accuracy, "object": float(object_present(images).float().mean())}


def image_grid(rows: list[list[np.ndarray]], scale: int = 4, pad: int = 2) -> Image.Image:
    """Tile (H, W, 3) uint8 images into a grid, enlarged `scale` times with nearest-neighbour.

    The separating lines are dark gray (64), unlike any of the toy world's backgrounds."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 64, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = img
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def evaluate_toy_models(pipe, model, tokenizer, n: int = 200, seed: int = 0, p_two: float = 0.25,
                        steps: int = 20, guidance: float = 4.0, splits=("eval_in", "eval_out")) -> dict:
    """The figures that say the toy world works, per prompt split: the toy CLIP's zero-shot accuracy
    per attribute on drawn scenes, and the share of the toy model's samples that show each attribute."""
    res = pipe.unet.config.sample_size
    result = {
        "prompts": {"splits": list(splits), "n": n, "seed": seed, "p_two_objects": p_two},
        "sampling": {"steps": steps, "guidance": guidance, "scheduler": type(pipe.scheduler).__name__},
        "chance": CHANCE,
        "clip_zero_shot": {},
        "model_prompt_following": {},
    }
    for split in splits:
        prompts = world.toy_prompts(split, n, seed, p_two)
        result["clip_zero_shot"][split] = clip_zero_shot(model, tokenizer, prompts, seed, res)
        result["model_prompt_following"][split] = prompt_following(pipe, model, tokenizer, prompts, seed=seed,
                                                                   steps=steps, guidance=guidance)
    return result


def sample_grid(pipe, prompts: list[world.ToyPrompt], seeds: int = 4, seed: int = 0, steps: int = 20,
                guidance: float = 4.0) -> Image.Image:
    """One row per prompt: the drawn ground-truth scene, then `seeds` samples."""
    res = pipe.unet.config.sample_size
    texts = [p.text for p in prompts for _ in range(seeds)]
    samples = sample_images(pipe, texts, seed=seed, steps=steps, guidance=guidance)
    samples = ((samples + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    rows = [[world.draw(p.scene, seed + i, res)] + list(samples[i * seeds:(i + 1) * seeds])
            for i, p in enumerate(prompts)]
    return image_grid(rows)
