"""The offline CLIP tokenizer (pcr.tokenizer) gives open_clip's / OpenAI CLIP's ids."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import SimpleTokenizer, basic_clean, whitespace_clean  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from pcr.tokenizer import clip_tokenizer  # noqa: E402

PARTI_PROMPTS = Path(__file__).parents[2] / "shared" / "data" / "PartiPrompts.tsv"
CONTEXT = 77
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pcr_cache")


@pytest.fixture(scope="module")
def tokenizer(cache_root) -> CLIPTokenizer:
    return clip_tokenizer(cache_root / "clip_tokenizer")


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=CONTEXT)


def clean(text: str) -> str:
    """open_clip's default ('lower') cleaning, applied before both tokenizers."""
    return whitespace_clean(basic_clean(text)).lower()


def reference_ids(reference: SimpleTokenizer, texts: list[str]) -> list[list[int]]:
    """open_clip's ids, cut after the end token (open_clip pads with 0, also the id of '!')."""
    rows = reference(texts, context_length=CONTEXT).tolist()
    return [row[: row.index(EOS) + 1] for row in rows]


def our_ids(tokenizer: CLIPTokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=CONTEXT)["input_ids"]


def read_prompts() -> list[str]:
    if not PARTI_PROMPTS.is_file():
        message = f"PartiPrompts not found at {PARTI_PROMPTS} (../shared/data beside the checkout)"
        if os.environ.get("CI"):  # CI has ../shared: its absence there is a broken checkout, not a laptop
            pytest.fail(message)
        pytest.skip(message)
    with PARTI_PROMPTS.open(newline="", encoding="utf-8") as f:
        return [row["Prompt"] for row in csv.DictReader(f, delimiter="\t")]


def test_parti_prompts_match_open_clip(tokenizer, reference):
    texts = [clean(prompt) for prompt in read_prompts()]
    ours, theirs = our_ids(tokenizer, texts), reference_ids(reference, texts)
    mismatches = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} prompts differ, e.g. {mismatches[:3]}"
    assert any(len(ids) == CONTEXT for ids in ours), "no prompt exercised truncation"


def test_truncation_keeps_end_token(tokenizer, reference):
    texts = [clean("a photo of a cat, " * 40)]
    ours, theirs = our_ids(tokenizer, texts), reference_ids(reference, texts)
    assert ours == theirs
    assert len(ours[0]) == CONTEXT and ours[0][0] == BOS and ours[0][-1] == EOS


def test_special_tokens_and_sizes(tokenizer, reference):
    assert tokenizer.model_max_length == CONTEXT
    assert len(tokenizer) == 49408 == reference.vocab_size
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS, EOS)
    assert tokenizer.pad_token_id == EOS and tokenizer.unk_token_id == EOS
    assert (reference.sot_token_id, reference.eot_token_id) == (BOS, EOS)


def test_default_cache_folder_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PCR_CACHE", str(tmp_path))
    tok = clip_tokenizer()
    folder = tmp_path / "clip_tokenizer"
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert files[0].read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert [p.name for p in tmp_path.iterdir()] == ["clip_tokenizer"]  # no temp dir left behind
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = clip_tokenizer()
    assert {p: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} == mtimes
    assert again("a red cube").input_ids == tok("a red cube").input_ids


def test_save_and_reload(tokenizer, tmp_path):
    texts = ["a red cube on top of a blue sphere", "an astronaut riding a horse, oil painting"]
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.model_max_length == CONTEXT
    assert our_ids(reloaded, texts) == our_ids(tokenizer, texts)


def test_clear_error_without_open_clip_bpe(tmp_path, monkeypatch):
    monkeypatch.setattr(open_clip.tokenizer, "default_bpe", lambda: str(tmp_path / "missing.txt.gz"))
    with pytest.raises(RuntimeError, match="open_clip_torch"):
        clip_tokenizer(tmp_path / "clip_tokenizer")
    assert not (tmp_path / "clip_tokenizer").exists()


def test_cached_token_ids_equal_the_tokenizers(tokenizer):
    import torch

    from pcr.tokenizer import CachedTokenIds

    cached = CachedTokenIds(tokenizer)
    texts = ["a red circle", "a blue square on the left", "a red circle"]
    want = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(cached(texts), want) and len(cached.ids) == 2
    assert torch.equal(cached(texts[::-1]), want.flip(0))  # from memory
