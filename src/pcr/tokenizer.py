"""Stable Diffusion's CLIP tokenizer, built offline.

Stable Diffusion 1.x tokenizes prompts with OpenAI CLIP's byte-level BPE
(``openai/clip-vit-large-patch14``). Fetching it from the Hugging Face hub needs
the network, but open_clip_torch already ships the same BPE merges file
(``bpe_simple_vocab_16e6.txt.gz``). This module rebuilds the tokenizer files
from it, exactly as OpenAI's / open_clip's ``SimpleTokenizer`` builds its
vocabulary (so the ids are identical, vocab size 49408), caches them on disk
and loads them with ``transformers.CLIPTokenizer``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

__all__ = ["CachedTokenIds", "clip_tokenizer", "default_cache_dir"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def default_cache_dir() -> Path:
    """``$PCR_CACHE/clip_tokenizer``, with PCR_CACHE defaulting to ``~/.cache/pcr``."""
    root = os.environ.get("PCR_CACHE") or Path("~/.cache/pcr").expanduser()
    return Path(root) / "clip_tokenizer"


def _bpe_file() -> Path:
    """The merges file that open_clip_torch ships, or a clear error if missing."""
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as err:
        raise RuntimeError(
            "Building the CLIP tokenizer offline needs the BPE file of open_clip_torch; "
            "install it with `pip install open_clip_torch`."
        ) from err
    path = Path(default_bpe())
    if not path.is_file():
        raise RuntimeError(
            f"open_clip's BPE file {path} is missing; reinstall open_clip_torch "
            "(`pip install --force-reinstall open_clip_torch`)."
        )
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible map from the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_files(folder: Path) -> None:
    """Write vocab.json, merges.txt and tokenizer_config.json into ``folder``."""
    lines = gzip.open(_bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # as in SimpleTokenizer: 48894 merges
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += [BOS_TOKEN, EOS_TOKEN]
    encoder = {token: i for i, token in enumerate(vocab)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,  # True only warns for BPE in v5
    }
    (folder / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def clip_tokenizer(cache_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """Stable Diffusion 1.x's CLIP tokenizer, built without any download.

    The files are written once into ``cache_dir`` (default
    :func:`default_cache_dir`), atomically: they are built in a temporary folder
    beside it and renamed into place; if another process got there first, its
    folder is used.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not _complete(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            _write_files(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private to this user
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # an empty leftover folder would block the rename
            os.replace(tmp, folder)
        except OSError:
            if not _complete(folder):  # not a lost race: a real error
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(folder)


class CachedTokenIds:
    """``tokenizer(texts, padding="max_length", max_length=77, truncation=True).input_ids`` with a memory.
    The slow (pure Python) tokenizer cost a tenth of a toy training step, whose captions keep repeating."""

    def __init__(self, tokenizer: CLIPTokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, texts: list[str]):
        import torch

        new = sorted({t for t in texts if t not in self.ids})
        if new:
            ids = self.tokenizer(new, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                                 return_tensors="pt").input_ids
            self.ids.update(zip(new, ids, strict=True))
        return torch.stack([self.ids[t] for t in texts])
