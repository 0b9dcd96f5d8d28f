"""Stand-in weights for the real world's metric networks, so tests run their code paths offline.

- `install_random_inception(torch_home)`: torch-fidelity's `inception-v3-compat` with random
  weights, written where its loader looks when TORCH_HOME=torch_home. torch-fidelity builds the
  network in FeatureExtractorInceptionV3.__init__ and then calls
  torch.hub.load_state_dict_from_url(URL_INCEPTION_V3), which reads
  `<torch.hub.get_dir()>/checkpoints/<the URL's file name>` if it exists (no hash check) and
  downloads it otherwise; torch.hub.get_dir() is `$TORCH_HOME/hub`.
- `write_tiny_open_clip(folder)`: an open_clip model config JSON of a tiny ViT CLIP and a
  checkpoint of its random weights, for `clip_model=<json>, clip_pretrained=<checkpoint>`.

Random weights give meaningless but finite features: enough to run FID and CLIP score end to end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["inception_weights_path", "install_random_inception", "write_tiny_open_clip"]


def inception_weights_path(torch_home: str | os.PathLike) -> Path:
    """Where torch-fidelity's loader reads the inception-v3-compat weights when TORCH_HOME=torch_home."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch_home) / "hub" / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def _inception_shapes(scratch: Path) -> dict[str, torch.Tensor]:
    """torch-fidelity's own module, built on the meta device with its weight loading skipped:
    its state dict names every tensor the real file holds, with the right shapes."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # __init__ loads the (empty) file it is given; keep the module as built

    empty = scratch / "empty.pth"
    torch.save({}, empty)  # given as the weights path, so __init__ does not download
    with torch.device("meta"):
        module = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    return module.state_dict()


# Mixed_7c's convolutions whose outputs are concatenated into the 2048 pool features, in order:
# branch1x1 gives features 0-319.
_LAST_BRANCHES = ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")


def install_random_inception(torch_home: str | os.PathLike, seed: int = 0, active_features: int | None = 64) -> Path:
    """Write seeded random inception-v3-compat weights where torch-fidelity loads them from when
    TORCH_HOME=torch_home; returns the file. Convolutions get He-scaled weights and the batch norms
    are identities, so activations keep their scale through the 90-odd layers (PyTorch's default
    init shrinks them layer after layer towards features that are all alike).

    Only the first `active_features` (<= 320) of the 2048 features vary (None: all); the last
    layer's batch norm zeroes the others. FID's eigvals of the 2048x2048 covariance product then
    deflates to that block (LAPACK's balancing isolates zero rows and columns): under a second,
    where 2048 varying features take ~30 s on one busy core."""
    path = inception_weights_path(torch_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in _inception_shapes(path.parent).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
        elif name.endswith(("running_var", "bn.weight")):
            state[name] = torch.ones(meta.shape)
        elif name.endswith(("running_mean", "bias")):
            state[name] = torch.zeros(meta.shape)
        else:  # conv (out, in, kh, kw) and fc (out, in) weights
            fan_in = meta[0].numel()
            state[name] = torch.randn(meta.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    if active_features is not None:
        for branch in _LAST_BRANCHES:
            keep = active_features if branch == "branch1x1" else 0
            for param in ("weight", "bias"):  # bn(x) = 0 for the dropped channels, relu(0) = 0
                state[f"Mixed_7c.{branch}.bn.{param}"][keep:] = 0
    torch.save(state, path)
    return path


# A tiny ViT CLIP: 32x32 images in 8x8 patches, one transformer layer of width 32 per tower. The
# text tower keeps CLIP's vocabulary and context so open_clip's own tokenizer feeds it.
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_open_clip(folder: str | os.PathLike, name: str = "tiny-clip", seed: int = 0) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a tiny open_clip model with seeded random weights. The model's
    open_clip name is the JSON's stem, `name`."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP, indent=2) + "\n")
    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    checkpoint = folder / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint
