"""Prompt sets of QDiffBench: loaders for each source format, seeded sampling, and the check that
calibration and evaluation prompts never overlap (an overlap would flatter every quantized model).

Specs, as `load_prompts` reads them:
  coco:<captions_*.json>           COCO captions (captions_train2017/val2017 format), one prompt per caption
  parti:<PartiPrompts.tsv>         PartiPrompts (tab-separated, a `Prompt` column)
  sdprompts:<file.parquet|.csv>    Stable-Diffusion-Prompts (a `Prompt` column)
  txt:<file>                       plain text, one prompt a line
  toy:<split>                      the toy world's splits: train, calib, eval_in, eval_out (n is required)

Every set is a set: prompts are stripped, empty ones dropped, and duplicates dropped (first spelling
kept), two prompts being the same when check_disjoint would call them the same (case and spacing
aside). Files are read as UTF-8, a byte-order mark ignored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PROMPT_SPECS", "PromptOverlapError", "PromptSet", "check_disjoint", "load_prompts", "prompt_list",
           "prompts_digest", "read_prompt_set", "write_prompt_set"]

PROMPT_SPECS = ("coco:<captions json>", "parti:<tsv>", "sdprompts:<parquet|csv>", "txt:<file>", "toy:<split>")


class PromptOverlapError(ValueError):
    """Calibration and evaluation prompt sets share prompts; the message names some of them."""


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered tuple of distinct prompts. The name goes into every result's provenance."""

    name: str
    prompts: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(prompt_list(self.prompts, "PromptSet prompts")))

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    def __getitem__(self, index):
        return self.prompts[index]

    def sample(self, n: int, seed: int = 0) -> PromptSet:
        """`n` prompts drawn without replacement by `seed`, kept in the set's own order.

        Keeping the source order makes a larger sample of the same seed list the same prompts in
        the same order, so image indices (and their seeds) stay comparable between runs."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > len(self.prompts):
            raise ValueError(f"cannot sample {n} prompts from {self.name}, which has only {len(self.prompts)}; "
                             "ask for fewer")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(self.prompts), size=n, replace=False))
        return PromptSet(f"{self.name}[n={n},seed={seed}]", tuple(self.prompts[i] for i in keep))

    def digest(self) -> str:
        return prompts_digest(self.prompts)


def prompts_digest(prompts: Sequence[str]) -> str:
    """12 hex digits identifying the exact prompts and their order (recorded by generate, checked by evaluate)."""
    return hashlib.sha256(json.dumps(prompt_list(prompts, "prompts_digest")).encode()).hexdigest()[:12]


def prompt_list(prompts, where: str) -> list:
    """``prompts`` as a list; a bare string (a sequence too) would be read as one prompt per character, so
    it is refused, naming ``where`` (the function or argument) and the fix."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{where}: prompts must be a list of prompts, got the single string {prompts!r} "
                        f"({len(prompts)} one-character prompts if taken as a list); pass [{prompts!r}]")
    return list(prompts)


def _distinct(texts: Iterable[str]) -> tuple[str, ...]:
    """Stripped, non-empty, one per normalised prompt (check_disjoint's sameness), first spelling kept."""
    out: dict[str, str] = {}
    for text in texts:
        if isinstance(text, str) and text.strip():
            out.setdefault(_normalize(text), text.strip())
    return tuple(out.values())


def _require_file(path: Path, kind: str, expected: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{kind} prompt file {path} does not exist; expected {expected}")


def _load_coco(path: Path) -> tuple[str, ...]:
    expected = ("a COCO captions JSON (captions_train2017.json / captions_val2017.json) with an "
                "'annotations' list of {'image_id', 'id', 'caption'}")
    _require_file(path, "COCO", expected)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected {expected}") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{path} has no 'annotations' list; expected {expected}")
    bad = [i for i, a in enumerate(annotations) if not isinstance(a, dict) or not isinstance(a.get("caption"), str)]
    if bad:
        raise ValueError(f"{path}: annotation(s) {bad[:5]} have no 'caption' string; expected {expected}")
    return _distinct(a["caption"] for a in annotations)


def _column(rows: list[dict], columns: Sequence[str], path: Path, kind: str) -> tuple[str, ...]:
    name = next((c for c in ("Prompt", "prompt") if c in columns), None)
    if name is None:
        raise ValueError(f"{path} has no 'Prompt' column (columns found: {list(columns)}); "
                         f"expected a {kind} file with a 'Prompt' column")
    return _distinct(row[name] for row in rows)


def _load_delimited(path: Path, kind: str, delimiter: str) -> tuple[str, ...]:
    _require_file(path, kind, f"a {'tab' if delimiter == chr(9) else 'comma'}-separated file with a 'Prompt' column")
    with open(path, newline="", encoding="utf-8-sig") as f:
        # PartiPrompts is plain TSV, not CSV-quoted: a prompt may start with a quoted word
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        rows = list(reader)
        return _column(rows, reader.fieldnames or [], path, kind)


def _load_sdprompts(path: Path) -> tuple[str, ...]:
    if path.suffix.lower() == ".csv":
        return _load_delimited(path, "Stable-Diffusion-Prompts", ",")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"sdprompts:{path}: expected a .parquet or .csv file with a 'Prompt' column")
    _require_file(path, "Stable-Diffusion-Prompts", "a parquet file with a 'Prompt' column")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: `pip install pyarrow`, or convert it to CSV "
                          "with a 'Prompt' column") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error types for a damaged file
        raise ValueError(f"{path} is not a readable parquet file ({type(err).__name__}: {err})") from None
    columns = table.column_names
    rows = table.select([c for c in columns if c in ("Prompt", "prompt")]).to_pylist()
    return _column(rows, columns, path, "Stable-Diffusion-Prompts")


def _load_txt(path: Path) -> tuple[str, ...]:
    _require_file(path, "text", "a UTF-8 text file with one prompt a line")
    try:
        return _distinct(path.read_text(encoding="utf-8-sig").splitlines())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); expected one prompt a line") from None


def load_prompts(spec: str, n: int | None = None, seed: int = 0) -> PromptSet:
    """The prompt set named by `spec` (see the module docstring); `n` of them sampled by `seed`,
    or all when n is None. Toy splits are drawn, not read, so they need n."""
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ValueError(f"unknown prompt spec {spec!r}; expected one of {', '.join(PROMPT_SPECS)}")
    if kind == "toy":
        from pcr.toy.world import toy_prompts

        if n is None:
            raise ValueError(f"{spec}: toy prompt sets are drawn from the toy world; give n (how many)")
        return PromptSet(f"toy:{rest}[n={n},seed={seed}]", tuple(p.text for p in toy_prompts(rest, n, seed)))
    loaders = {"coco": _load_coco, "parti": lambda p: _load_delimited(p, "PartiPrompts", "\t"),
               "sdprompts": _load_sdprompts, "txt": _load_txt}
    if kind not in loaders:
        raise ValueError(f"unknown prompt spec {spec!r}; expected one of {', '.join(PROMPT_SPECS)}")
    path = Path(os.path.expanduser(rest))
    prompts = loaders[kind](path)
    if not prompts:
        raise ValueError(f"{spec}: the file holds no prompts")
    full = PromptSet(f"{kind}:{path.name}", prompts)
    return full if n is None else full.sample(n, seed)


def write_prompt_set(path: str | os.PathLike, prompts: PromptSet) -> None:
    """Save a drawn set (JSON: name, digest, prompts), so every later step reads the same prompts."""
    from pcr.io import atomic_file

    data = {"name": prompts.name, "sha256": prompts.digest(), "prompts": list(prompts.prompts)}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_prompt_set(path: str | os.PathLike, n: int | None = None) -> PromptSet:
    """A set saved by write_prompt_set; `n` keeps its first n prompts (a calibration-size ablation)."""
    data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    prompts = PromptSet(data["name"], tuple(data["prompts"]))
    if n is None or n == len(prompts):
        return prompts
    if not 1 <= n <= len(prompts):
        raise ValueError(f"{path} holds {len(prompts)} prompts; cannot take the first {n}")
    return PromptSet(f"{prompts.name}[:{n}]", prompts.prompts[:n])


def _normalize(text: str) -> str:
    """Case and spacing do not make a different prompt for CLIP's lower-casing tokenizer."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def check_disjoint(calib: PromptSet | Sequence[str], evaluation: PromptSet | Sequence[str], show: int = 5) -> None:
    """Raise PromptOverlapError naming (up to `show` of) the prompts both sets hold."""
    prompt_list(calib, "check_disjoint's calibration set")
    prompt_list(evaluation, "check_disjoint's evaluation set")
    seen = {_normalize(p) for p in calib}
    shared = [p for p in evaluation if _normalize(p) in seen]
    if shared:
        names = [getattr(s, "name", "prompts") for s in (calib, evaluation)]
        listed = "; ".join(repr(p) for p in shared[:show]) + ("; ..." if len(shared) > show else "")
        raise PromptOverlapError(
            f"calibration set {names[0]} and evaluation set {names[1]} share {len(shared)} prompt(s): {listed}. "
            "Calibrate and evaluate on disjoint prompts (e.g. COCO train captions vs val captions)."
        )
