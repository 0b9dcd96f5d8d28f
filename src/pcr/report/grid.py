"""Image folders -> one grid of the same prompts across methods, for reading differences by eye.

Kept apart from the chart figures: it reads images, not tables, and lays itself out by hand so that
every tile keeps its pixels.
"""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pcr.bench.folders import check_images
from pcr.bench.prompts import prompt_list
from pcr.report.figures import DPI, save_figure

__all__ = ["sample_grid"]


def sample_grid(folders: dict[str, str | os.PathLike], stem: str | os.PathLike, indices,
                prompts: list[str] | None = None, size: int | tuple[int, int] | None = None) -> list[Path]:
    """The same prompts across methods: rows = image indices, columns = labels (dict order).

    Images are folder / f"{index:05d}.png". `prompts` is the whole prompt set (prompts[index] titles
    row `index`); `size` is the tile size in pixels (an int for square tiles, or (width, height);
    default: the first image's). Raises FileNotFoundError naming the first missing image, and
    pcr.bench.folders.FolderError naming an image that is not the file its folder's manifest pins (or
    does not decode): a grid must show the images the metrics measured.
    """
    if prompts is not None:
        prompts = prompt_list(prompts, "sample_grid")
    labels, indices = list(folders), [int(i) for i in indices]
    if not labels or not indices:
        raise ValueError("sample_grid needs at least one folder and one index")
    paths = {(i, label): Path(folders[label]) / f"{i:05d}.png" for i in indices for label in labels}
    for path in paths.values():  # all checked before any drawing, so nothing is half-written
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "sample_grid: no image", str(path))
    if prompts is not None and max(indices) >= len(prompts):
        raise ValueError(f"sample_grid: index {max(indices)} but only {len(prompts)} prompts given")
    for label in labels:
        check_images(folders[label], [paths[(i, label)] for i in indices])
    images = {key: Image.open(path).convert("RGB") for key, path in paths.items()}
    if size is None:
        size = next(iter(images.values())).size
    elif isinstance(size, int):
        size = (size, size)
    # Laid out by hand, in inches, so every tile is exactly `size` pixels at DPI (at least 1 inch:
    # tiny toy images are enlarged) and the grid's size follows from rows and columns alone.
    tw, th = max(size[0] / DPI, 1.0), max(size[1] / DPI, 1.0)
    pad, left, top, right, bottom = 0.06, (1.9 if prompts is not None else 0.45), 0.75, 0.1, 0.1
    wrap = max(8, int(tw * 13))  # characters of an x-small column title that fit over one tile
    width = left + len(labels) * (tw + pad) - pad + right
    height = top + len(indices) * (th + pad) - pad + bottom
    fig = Figure(figsize=(width, height))
    for r, index in enumerate(indices):
        for c, label in enumerate(labels):
            img = images[(index, label)]
            if img.size != tuple(size):
                enlarge = size[0] > img.size[0]
                img = img.resize(size, Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)
            x0, y0 = left + c * (tw + pad), height - top - (r + 1) * th - r * pad
            ax = fig.add_axes((x0 / width, y0 / height, tw / width, th / height))
            ax.imshow(np.asarray(img), interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(str(label), wrap), fontsize="x-small")
            if c == 0:
                text = f"#{index}" if prompts is None else f"#{index}: {prompts[index]}"
                ax.text(-0.04, 0.5, textwrap.fill(textwrap.shorten(text, 110, placeholder=" …"), 30),
                        transform=ax.transAxes, ha="right", va="center", fontsize="x-small")
    return save_figure(fig, stem)
