"""Trust in a generation folder: its manifest pins each image's byte size and sha256, so whatever reads
the images (metrics, sample grids, a resumed or collected generation) can tell the PNGs generate wrote
from a damaged, replaced or swapped file, and name the file and what to do.

Torch-free: the workflow's planning reads manifests through it (pcr.plan.folders). Manifests written
before the size and hash columns existed (index, prompt, seed, file) stay readable; their images are
checked for existence and by decoding only, until a generation run rewrites the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from pcr.io import atomic_file

__all__ = ["FIELDS", "MANIFEST", "SETTINGS", "FolderError", "changed_images", "check_images", "file_digest",
           "first_unreadable", "image_files", "image_name", "read_manifest", "stale_images", "usable_image",
           "write_manifest"]

MANIFEST = "manifest.csv"
SETTINGS = "generation.json"
FIELDS = ("index", "prompt", "seed", "file", "bytes", "sha256")
_OLD_FIELDS = FIELDS[:4]  # manifests of before issue 12: no size or hash
REGENERATE = ("delete {files} and rerun the folder's generation (pcr.bench.generate, or snakemake, which "
              "plans it again: finished images are kept, the deleted ones sampled again)")


class FolderError(RuntimeError):
    """A generation folder's image is damaged, of another size, or not the file its manifest pins."""


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(byte size, sha256 hex) of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_manifest(path: str | os.PathLike, rows: Iterable[tuple[int, str, int]]) -> None:
    """Write a manifest of (index, prompt, seed) rows; each image's size and sha256 are read from the
    folder, so the manifest pins the files as they are now."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for index, prompt, seed in rows:
            writer.writerow((index, prompt, seed, image_name(index), *file_digest(path.parent / image_name(index))))


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest as dicts with int index and seed, and int bytes and str sha256 (None in a
    manifest of before these columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest {path}; pcr.bench.generate() writes it (merge_manifests after shards)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = tuple(reader.fieldnames or ())
    try:
        if fields not in (FIELDS, _OLD_FIELDS) or any(None in r or None in r.values() for r in rows):
            raise ValueError(f"columns {list(fields)}, expected {list(FIELDS)}")
        return [{**r, "index": int(r["index"]), "seed": int(r["seed"]),
                 "bytes": int(r["bytes"]) if r.get("bytes") else None, "sha256": r.get("sha256") or None}
                for r in rows]
    except ValueError as err:
        raise FolderError(f"{path} is not a readable manifest ({err}); rerun the folder's generation, "
                          "which writes it again (finished images are kept)") from None


def stale_images(folder: str | os.PathLike, rows: Sequence[dict]) -> list[str]:
    """What is wrong with the images a manifest lists, found cheaply (one stat per image, no hashing):
    'NAME missing' or 'NAME has N bytes, its manifest M'."""
    folder, problems = Path(folder), []
    for row in rows:
        try:
            size = (folder / row["file"]).stat().st_size
        except FileNotFoundError:
            problems.append(f"{row['file']} missing")
            continue
        if row["bytes"] is not None and size != row["bytes"]:
            problems.append(f"{row['file']} has {size} bytes, its manifest {row['bytes']}")
    return problems


def _pinned(row: dict | None) -> bool:
    return row is not None and row["bytes"] is not None and row["sha256"] is not None


def changed_images(folder: str | os.PathLike, rows: Sequence[dict]) -> list[str]:
    """Names of the listed images that are absent or (where the row pins them) not that file."""
    folder = Path(folder)
    return [r["file"] for r in rows if not (folder / r["file"]).is_file()
            or (_pinned(r) and file_digest(folder / r["file"]) != (r["bytes"], r["sha256"]))]


def usable_image(path: Path, row: dict | None, size: tuple[int, int] | None) -> bool:
    """Whether a resumed generation may keep this image: the file its manifest row pins, or (no row with
    a hash) a PNG that decodes whole at `size` (width, height; None: any)."""
    if not path.is_file():
        return False
    if _pinned(row):
        return file_digest(path) == (row["bytes"], row["sha256"])
    try:
        decoded = _decoded_size(path)
    except FolderError:
        return False
    return size is None or decoded == size


def _decoded_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image decoded whole; FolderError naming the file if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise FolderError(f"{path} does not decode ({err}): the file is damaged") from None


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.size


def image_files(folder: str | os.PathLike, n: int) -> list[Path]:
    """The folder's images 0..n-1; FileNotFoundError naming the missing ones."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; generate it with pcr.bench.generate()")
    files = [folder / image_name(i) for i in range(n)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {len(missing)} of the {n} images ({', '.join(missing[:5])}...); "
                                "finish its generation (a rerun skips finished images)")
    return files


def check_images(folder: str | os.PathLike, files: Sequence[Path]) -> tuple[int, int]:
    """Check the images a consumer is about to read; return their common (width, height).

    An image its manifest pins must be that file (size and sha256: a damaged, edited or swapped file is
    named); one without a hash (no manifest, or one of before) must decode whole. All must share one
    size. Errors name the files and say how to fix the folder."""
    folder = Path(folder)
    if not files:
        raise ValueError(f"no images of {folder} to check")
    rows = {r["file"]: r for r in read_manifest(folder / MANIFEST)} if (folder / MANIFEST).is_file() else {}
    changed = changed_images(folder, [rows[f.name] for f in files if _pinned(rows.get(f.name))])
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise FolderError(f"{folder}: {', '.join(changed[:5])}{more} are not the images its manifest pins (size or "
                          "sha256 differ): changed after generation (damaged, edited or swapped); "
                          + REGENERATE.format(files="them"))
    try:
        sizes = {f: _header_size(f) if _pinned(rows.get(f.name)) else _decoded_size(f) for f in files}
    except FolderError as err:
        raise FolderError(f"{err}; " + REGENERATE.format(files="it")) from None
    common = Counter(sizes.values()).most_common(1)[0][0]
    odd = [f"{f.name} is {w}x{h}" for f, (w, h) in sizes.items() if (w, h) != common]
    if odd:
        raise FolderError(f"{folder}: {', '.join(odd[:5])} while its other images are {common[0]}x{common[1]}: "
                          "a folder's images share one size; " + REGENERATE.format(files="the odd ones"))
    return common


def first_unreadable(files: Sequence[str | os.PathLike]) -> str | None:
    """The first image of `files` that does not decode, or those of another size than the first: the
    description a loader's bare error (OSError, torch's stack) lacks; None if all are fine."""
    sizes = {}
    for f in files:
        try:
            sizes[str(f)] = _decoded_size(Path(f))
        except FolderError as err:
            return str(err)
    odd = [f"{f} is {w}x{h}" for f, (w, h) in sizes.items() if (w, h) != next(iter(sizes.values()))]
    return f"{', '.join(odd[:5])}, unlike {next(iter(sizes))}" if odd else None
