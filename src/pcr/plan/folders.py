"""Planning's check of a generated image folder: does it still hold what its manifest lists?

Why at planning: an image is not an output of its generation rule (Snakemake deletes a job's outputs
before rerunning it, which would throw away the finished images a resumed run keeps), and Snakemake 9
reruns a job whose output is missing only when a job downstream of it has to run. So a folder that lost
an image, or lost its manifest to a generation job that failed (Snakemake removes the outputs of a
failed job), under metrics that still exist was "Nothing to be done", and a metrics job forced on it
failed and lost its file. workflow/rules/generate.smk forces the generation of a folder this check
names, as ``--forcerun <manifest>`` would: the job resumes (finished images kept, the others sampled
again) and everything downstream of it reruns after it.

Cheap, since it runs for every folder of the DAG on every plan: one stat per image (existence and
byte size against the manifest), no decoding and no hashing. What only a hash sees (an image swapped
for another of the same size) the consumers catch: pcr.bench.folders.check_images.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcr.bench.folders import SETTINGS, FolderError, read_manifest, stale_images

__all__ = ["folder_problem", "shard_manifest"]


def shard_manifest(folder: str, k: int | str, n: int) -> str:
    """The manifest of shard k of n of an image folder: each shard job has a folder of its own."""
    return f"{folder}/shards/{k}-of-{n}/manifest.shard-{k}-of-{n}.csv"


def folder_problem(manifest: str | os.PathLike) -> str | None:
    """Why the folder of `manifest` (manifest.csv, or a shard's manifest in its shard folder) must be
    generated again, or None: it holds what the manifest lists, or holds no generation yet (a folder
    never started is planned by Snakemake as usual)."""
    manifest = Path(manifest)
    folder = manifest.parent
    if not manifest.is_file():
        if (folder / SETTINGS).is_file():
            return (f"{folder} has no {manifest.name} but holds a generation ({SETTINGS}): its last generation "
                    "failed or was interrupted")
        return None
    try:
        rows = read_manifest(manifest)
    except (FolderError, OSError) as err:
        return f"{manifest} is unreadable ({err})"
    problems = stale_images(folder, rows)
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        return f"{folder} no longer holds what {manifest.name} lists: {'; '.join(problems[:5])}{more}"
    return None
