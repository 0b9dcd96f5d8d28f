"""Feature networks for QDiffBench: the torch-fidelity extractor behind FID/KID, and the CLIP model
behind CLIP score, for both worlds.

Real world: torch-fidelity's `inception-v3-compat` (FID's standard network) and open_clip
ViT-L/14 (openai). Toy world: the toy CLIP's image tower, registered with torch-fidelity as the
feature extractor `toy-clip`, and the toy CLIP itself as the CLIP-score model. Both worlds feed
torch-fidelity uint8 images (N, 3, H, W), as it expects.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcr.runtime import MODEL_BUILD_LOCK

__all__ = ["TOY_CLIP", "ClipScorer", "create_extractor", "extract_features", "load_clip_scorer",
           "register_toy_clip_extractor"]

TOY_CLIP = "toy-clip"  # the feature extractor's name, and the clip_model value for the toy CLIP


def _extractor_class():
    from torch_fidelity import FeatureExtractorBase

    class ToyClipFeatureExtractor(FeatureExtractorBase):
        """The toy CLIP's image embedding, normalized to unit length.
        feature_extractor_weights_path is the toy CLIP folder (torch-fidelity's kwarg for the weights)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from pcr.toy.clip import load_toy_clip

            if feature_extractor_weights_path is None:
                raise ValueError("the toy-clip feature extractor needs the toy CLIP folder: pass "
                                 "feature_extractor_weights_path=<folder> (MetricsConfig.toy_clip)")
            self.model, _ = load_toy_clip(feature_extractor_weights_path)

        def forward(self, x):
            from pcr.toy.clip import clip_pixels

            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected uint8 images (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
            images = x.float() / 127.5 - 1.0  # the toy world's [-1, 1]
            features = self.model.encode_image(clip_pixels(images, self.model)).float()
            # unit length, as CLIP compares them: raw toy embeddings have norms of 12-30, which put
            # KID's cubic kernel at ~1e2 and drowned 64-image KIDs in estimator noise (|KID| ~ 1e3)
            return (torch.nn.functional.normalize(features, dim=1),)

        @staticmethod
        def get_provided_features_list():
            return (TOY_CLIP,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return TOY_CLIP

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    return ToyClipFeatureExtractor


def register_toy_clip_extractor() -> None:
    """Register `toy-clip` with torch-fidelity (once per process; torch-fidelity refuses a second)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if TOY_CLIP not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TOY_CLIP, _extractor_class())


_NETWORKS: dict = {}
_NETWORKS_LOCK = threading.Lock()


def _version(path) -> int | None:
    """A file's or folder's modification time: a network rebuilt from a rewritten file is a new one."""
    return os.stat(path).st_mtime_ns if path is not None and os.path.exists(path) else None


def cached_network(kind: str, build, *key):
    """``build(*key)``, kept for the rest of the process: the workflow runs many metrics jobs in one
    process (pcr.jobs), and loading Inception or ViT-L/14 took longer than measuring a folder. The
    networks are only read (eval mode, no gradients), so jobs in other threads may share them."""
    full = (kind, *key, *(_version(k) for k in key if isinstance(k, (str, os.PathLike))))
    with _NETWORKS_LOCK:
        if full not in _NETWORKS:
            with MODEL_BUILD_LOCK:  # see pcr.runtime
                _NETWORKS[full] = build(*key)
        return _NETWORKS[full]


def create_extractor(name: str, weights: str | os.PathLike | None = None, cuda: bool = False):
    """A torch-fidelity feature extractor with the layer it uses for FID and KID.

    `weights`: the toy CLIP folder for toy-clip; for torch-fidelity's own networks a local weights
    file, needed offline (they download on first use otherwise)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    register_toy_clip_extractor()
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        known = sorted(FEATURE_EXTRACTORS_REGISTRY)
        raise ValueError(f"unknown feature extractor {name!r}; torch-fidelity knows {known}")
    if name == TOY_CLIP and weights is None:
        raise ValueError("feature_extractor 'toy-clip' needs the toy CLIP folder (MetricsConfig.toy_clip)")
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"feature extractor weights {weights} do not exist")
    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    try:
        extractor = create_feature_extractor(name, [layer], cuda=cuda, verbose=False,
                                             feature_extractor_weights_path=None if weights is None else str(weights))
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise RuntimeError(
            f"could not load torch-fidelity's {name} weights ({type(err).__name__}: {err}). They are downloaded "
            "on first use; offline, download them elsewhere and pass the file as MetricsConfig.feature_weights."
        ) from None
    return extractor, layer


@torch.no_grad()
def extract_features(extractor, layer: str, files: list[Path], batch_size: int = 64,
                     cuda: bool = False) -> torch.Tensor:
    """(N, D) features of image files in the given order, through torch-fidelity's own loading; a file
    that does not decode, or is of another size, is an error naming it."""
    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from pcr.bench.folders import FolderError, first_unreadable

    dataset = ImagesPathDataset([str(f) for f in files])
    try:
        # save_cpu_ram: no loader worker processes (the dataset only decodes PNGs)
        return get_featuresdict_from_dataset(dataset, extractor, batch_size, cuda, save_cpu_ram=True,
                                             verbose=False)[layer]
    except (OSError, RuntimeError) as err:  # PIL's "image file is truncated", torch's "stack expects ..."
        # the file neither error names (real images come unchecked); other errors (CUDA memory) as they are
        culprit = first_unreadable(files) if isinstance(err, OSError) or "stack expects" in str(err) else None
        if culprit is None:
            raise
        raise FolderError(f"{culprit}; the feature network reads images that decode, all of one size: replace or "
                          "remove the file(s)") from err


class ClipScorer:
    """CLIP score of (image, prompt) pairs: 100 * max(cos(image, text), 0), as torchmetrics and the
    text-to-image literature define it."""

    def __init__(self, model, encode_images, encode_texts, name: str):
        self.model, self._images, self._texts, self.name = model, encode_images, encode_texts, name

    @torch.no_grad()
    def scores(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        img = self._images(images)
        txt = self._texts(texts)
        cos = (img * txt).sum(-1) / (img.norm(dim=-1) * txt.norm(dim=-1))
        return (100 * cos.clamp(min=0)).double().cpu().numpy()


def _toy_scorer(folder: str | os.PathLike, device: str) -> ClipScorer:
    from pcr.tokenizer import clip_tokenizer
    from pcr.toy.clip import encode_images, encode_texts, load_toy_clip

    model, _ = load_toy_clip(folder, device=device)
    tokenizer = clip_tokenizer()

    def images(pils):
        x = torch.from_numpy(np.stack([np.asarray(p.convert("RGB")) for p in pils])).permute(0, 3, 1, 2)
        return encode_images(model, x.to(device).float() / 127.5 - 1.0)

    return ClipScorer(model, images, lambda texts: encode_texts(model, tokenizer, texts), f"{TOY_CLIP}:{folder}")


def load_clip_scorer(model_name: str = "ViT-L-14", pretrained: str = "openai", toy_clip: str | None = None,
                     device: str = "cpu") -> ClipScorer:
    """The CLIP-score model: the toy CLIP (model_name 'toy-clip') or an open_clip model.

    `model_name` is an open_clip model name, or the path of an open_clip model config JSON (as
    open_clip.add_model_config takes; the file's stem becomes the model's name): a custom or tiny
    CLIP. `pretrained` is an open_clip tag (downloaded on first use) or a local checkpoint file."""
    if model_name == TOY_CLIP:
        if toy_clip is None:
            raise ValueError("clip_model 'toy-clip' needs the toy CLIP folder (MetricsConfig.toy_clip)")
        return _toy_scorer(toy_clip, device)
    import open_clip

    label = model_name  # provenance keeps what the user gave (the JSON path for a config file)
    if model_name.endswith(".json"):
        if not Path(model_name).is_file():
            raise FileNotFoundError(f"CLIP-score model config {model_name} does not exist; give an open_clip model "
                                    "config JSON (embed_dim, vision_cfg, text_cfg) or a model name such as 'ViT-L-14'")
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
        if model_name not in open_clip.list_models():  # open_clip skips a JSON without these keys, silently
            raise ValueError(f"CLIP-score model config {label} is not an open_clip model config: it needs the keys "
                             "embed_dim, vision_cfg and text_cfg")
    looks_like_path = os.sep in pretrained or Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors")
    if looks_like_path and not Path(pretrained).is_file():
        raise FileNotFoundError(f"CLIP-score checkpoint {pretrained} does not exist; give an open_clip checkpoint "
                                f"file for {model_name} or a pretrained tag such as 'openai'")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    except RuntimeError as err:
        raise RuntimeError(
            f"could not load the CLIP-score model {model_name} ({pretrained}): {err}. Its weights are downloaded on "
            "first use; offline, fetch them elsewhere and set clip_pretrained to the checkpoint file "
            "(or run the toy world with clip_model 'toy-clip')."
        ) from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)

    def images(pils):
        return model.encode_image(torch.stack([preprocess(p.convert("RGB")) for p in pils]).to(device))

    def texts(prompts):
        return model.encode_text(tokenizer(prompts).to(device))

    return ClipScorer(model, images, texts, f"{label}:{pretrained}")
