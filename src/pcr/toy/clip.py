"""The toy CLIP: a small open_clip model trained contrastively on the toy world.

It plays ViT-L/14's part in the toy world (feature network for FID, scorer for CLIP score, judge of
prompt-following) and lends its text tower to the toy text-to-image model, as CLIP does for Stable
Diffusion. It is built from a registered open_clip model config and loaded with
`open_clip.create_model_and_transforms(name, pretrained=path)`: the same path a real checkpoint takes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pcr.io import atomic_dir
from pcr.runtime import MODEL_BUILD_LOCK
from pcr.toy import world

__all__ = [
    "TOY_CLIP_NAME", "toy_clip_config", "train_toy_clip", "load_toy_clip", "clip_pixels",
    "encode_images", "encode_texts", "attribute_accuracy",
]

TOY_CLIP_NAME = "pcr-toy-clip"
CONFIG_FILE = f"{TOY_CLIP_NAME}.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def toy_clip_config(res: int = 32, width: int = 128, layers: int = 4, embed_dim: int = 64,
                    vision_width: int = 32) -> dict:
    """An open_clip model config: a small ResNet image tower (CLIP's ModifiedResNet, as in OpenAI's
    RN50) on images upsampled 2x, and a CLIP text transformer over Stable Diffusion's vocabulary.

    The tower's attention pooling has absolute position embeddings, so it tells left from right
    within a hundred steps; ViT towers of this size took thousands of steps to learn position.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 2 * res, "layers": [1, 1, 1, 1], "width": vision_width, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": width // 32,
                     "layers": layers},
    }


def _register(config_path: Path) -> None:
    """Register (or re-register) `pcr-toy-clip` from this file.

    open_clip keys its registry by name and lets the config path added last win, so registering
    every time makes a process that loads two toy CLIPs of different sizes build each one right.
    """
    import open_clip

    open_clip.add_model_config(config_path)


def clip_pixels(images: torch.Tensor, model) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W) -> the normalized input the CLIP image tower expects."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if images.shape[-1] != size:
        # bicubic, as open_clip's own preprocessing resizes PIL images
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    return ((images + 1) / 2 - mean) / std


def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings of images in [-1, 1]."""
    return model.encode_image(clip_pixels(images, model), normalize=True)


def encode_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Unit-norm text embeddings; `tokenizer` is SD's CLIP tokenizer (ids equal open_clip's)."""
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return model.encode_text(ids.to(next(model.parameters()).device), normalize=True)


def _encode_texts_trimmed(model, ids: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(ids, normalize=True)` computed on the columns up to the last end token only.

    Under the causal mask no token sees the padding after it, so dropping trailing columns changes
    nothing; toy captions use about half of the 77 positions, so training runs ~2x faster.
    """
    length = int((ids == ids.max()).int().argmax(1).max()) + 1  # the end token has the largest id
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def _contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, image_keys: list[str],
                      text_keys: list[str]) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over B images and B + K texts (the first B are the images' captions,
    the rest hard negatives), with every text of an image's scene counted as a positive.

    A batch of the toy world often holds one scene twice under different phrasings; plain InfoNCE
    would push those apart as negatives.
    """
    codes = np.unique(image_keys + text_keys, return_inverse=True)[1]
    img_codes, txt_codes = torch.as_tensor(codes[:len(image_keys)]), torch.as_tensor(codes[len(image_keys):])
    same = (img_codes[:, None] == txt_codes[None, :]).float()  # (B, B + K)
    logits = scale * img @ txt.T
    image_loss = F.cross_entropy(logits, same / same.sum(1, keepdim=True))
    own = same[:, :len(image_keys)].T  # captions against images; negatives have no image to pick
    text_loss = F.cross_entropy(logits[:, :len(image_keys)].T, own / own.sum(1, keepdim=True))
    return (image_loss + text_loss) / 2


# Hard negatives change one attribute of the true scene. Colour, size and background separate
# almost at once from random batches; position and shape are what a contrastive model learns last,
# so every image gets one negative of each, plus one of a random attribute.
_NEGATIVE_ATTRIBUTES = ("position", "shape", None)


def _hard_negative(scene: world.ToyScene, rng: np.random.Generator, attribute: str | None = None) -> world.ToyScene:
    if attribute is None:
        attribute = ("shape", "colour", "size", "position", "background")[rng.integers(5)]
    values = tuple(world.BACKGROUNDS) if attribute == "background" else world.ATTRIBUTES[attribute]
    index = int(rng.integers(len(scene.objects)))
    current = scene.background if attribute == "background" else getattr(scene.objects[index], attribute)
    others = [v for v in values if v != current]
    return scene.with_attribute(attribute, others[rng.integers(len(others))], index)


def train_toy_clip(out_dir: str | os.PathLike, steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
                   seed: int = 0, res: int = 32, p_two: float = 0.25, width: int = 128, layers: int = 4,
                   progress: bool = True) -> dict:
    """Train the toy CLIP from scratch and save config + weights in `out_dir` (atomically)."""
    import open_clip
    from safetensors.torch import save_file
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pcr.tokenizer import CachedTokenIds, clip_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenize = CachedTokenIds(clip_tokenizer())
    config = toy_clip_config(res, width, layers)
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        _register(tmp / CONFIG_FILE)
        model, _, _ = open_clip.create_model_and_transforms(TOY_CLIP_NAME)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        start = time.time()
        bar = tqdm(range(steps), desc="toy CLIP", disable=not progress)
        for _ in bar:
            images, captions, scenes = world.random_batch(rng, batch_size, res, p_two)
            negatives = [_hard_negative(s, rng, a) for a in _NEGATIVE_ATTRIBUTES for s in scenes]
            # negatives are phrased in both families, like the captions, so phrasing never tells them apart
            texts = captions + [world.caption(n, world.FAMILIES[rng.integers(len(world.FAMILIES))],
                                              int(rng.integers(world.N_TEMPLATES))) for n in negatives]
            # the math attention kernel: the flash kernel's backward took over a third of a step at these sizes
            with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.MATH):
                img = encode_images(model, torch.from_numpy(images))
                txt = _encode_texts_trimmed(model, tokenize(texts))
            keys = [s.key() for s in scenes]
            loss = _contrastive_loss(img.float(), txt.float(), model.logit_scale.exp(), keys,
                                     keys + [n.key() for n in negatives])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        stats = {"steps": steps, "batch_size": batch_size, "seed": seed, "train_seconds": time.time() - start,
                 "final_loss": float(loss.item())}
        (tmp / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def load_toy_clip(folder: str | os.PathLike, device: str = "cpu"):
    """(model, preprocess) of a trained toy CLIP, through open_clip's own loading path."""
    import open_clip

    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not (folder / CONFIG_FILE).is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"no toy CLIP in {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE}; "
            "train one with pcr.toy.clip.train_toy_clip (the workflow's `toy_clip` rule does)")
    with MODEL_BUILD_LOCK:  # see pcr.runtime
        _register(folder / CONFIG_FILE)
        model, _, preprocess = open_clip.create_model_and_transforms(TOY_CLIP_NAME, pretrained=str(weights),
                                                                     device=device)
    model.eval()
    return model, preprocess


@torch.no_grad()
def attribute_accuracy(model, tokenizer, images: torch.Tensor, scenes: list[world.ToyScene]) -> dict[str, float]:
    """Zero-shot accuracy per attribute: for each image and attribute, does CLIP prefer the caption
    with the true value over the same caption with every other value? Two-object scenes are judged
    on their first object (their positions are fixed by the pair, so not on position).
    """
    img = encode_images(model, images)
    candidates: dict[str, list[tuple[int, list[str], int]]] = {}  # attribute -> (image, captions, true index)
    for attribute, values in {**world.ATTRIBUTES, "background": tuple(world.BACKGROUNDS)}.items():
        candidates[attribute] = []
        for i, scene in enumerate(scenes):
            if attribute == "position" and len(scene.objects) > 1:
                continue
            true = scene.background if attribute == "background" else getattr(scene.objects[0], attribute)
            texts = [world.caption(scene.with_attribute(attribute, v), "plain", 0) for v in values]
            candidates[attribute].append((i, texts, values.index(true)))
    unique = sorted({t for rows in candidates.values() for _, texts, _ in rows for t in texts})
    txt = torch.cat([encode_texts(model, tokenizer, unique[lo:lo + 512]) for lo in range(0, len(unique), 512)])
    row = {t: k for k, t in enumerate(unique)}
    result = {}
    for attribute, rows in candidates.items():
        correct = [int((img[i] @ txt[[row[t] for t in texts]].T).argmax()) == true for i, texts, true in rows]
        result[attribute] = float(np.mean(correct)) if correct else float("nan")
    return result
