"""Images are tracked by the workflow (issue 12): a finished folder that lost an image, holds a damaged one,
or lost its manifest to a failed generation is generated again (finished images kept, the rest re-sampled
bit for bit), and its metrics are measured again after it, never before. Kept cheap: the FP floor's
metrics only (two toy folders), on the test session's tiny toy models."""

import json
import shutil

from test_workflow import checkout, job_stats, output, snakemake, tiny_config

TARGET = "results/metrics/fp-reseeded/W32A32/in_domain.json"
FOLDER = "results/images/fp-reseeded/W32A32/in_domain"
REFERENCE = "results/images/fp/W32A32/in_domain"


def ran(run) -> dict[str, int]:
    """The 'Job stats' table of a run: rule -> job count."""
    return job_stats(output(run))


def snapshot(folder):
    """A folder's files but its runtime record (the time its sampling took differs from run to run)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "runtime.json"}


def test_a_folder_that_lost_or_damaged_images_is_generated_again_before_its_metrics(
        tmp_path, tiny_clip_dir, tiny_model_dir):
    workdir = checkout(tmp_path, tiny_config())
    # the session's toy models stand in for the workflow's (no Snakemake metadata: not retrained)
    shutil.copytree(tiny_clip_dir, workdir / "results/toy/clip")
    shutil.copytree(tiny_model_dir, workdir / "results/toy/model")
    run = snakemake(workdir, TARGET, cores=2)
    assert run.returncode == 0, output(run)[-3000:]
    folder, reference, metrics = workdir / FOLDER, workdir / REFERENCE, workdir / TARGET
    before = {"folder": snapshot(folder), "reference": snapshot(reference)}
    measured = json.loads(metrics.read_text())["metrics"]

    (folder / "00001.png").unlink()
    (folder / "00002.png").write_bytes((folder / "00002.png").read_bytes()[:100])  # truncated
    (reference / "manifest.csv").unlink()  # what a failed generation job leaves: Snakemake removed it
    rerun = snakemake(workdir, TARGET, cores=2)
    assert rerun.returncode == 0, output(rerun)[-3000:]
    assert "Job stats:" in output(rerun), output(rerun)[-3000:]  # not "Nothing to be done"
    assert ran(rerun) == {"generate": 2, "metrics": 1}
    assert "00001.png missing" in output(rerun) and "00002.png has 100 bytes" in output(rerun)
    assert "no manifest.csv" in output(rerun)
    assert {"folder": snapshot(folder), "reference": snapshot(reference)} == before  # re-sampled bit for bit
    assert json.loads(metrics.read_text())["metrics"] == measured

    again = snakemake(workdir, "--dry-run", TARGET)
    assert again.returncode == 0 and "Nothing to be done" in output(again), output(again)[-3000:]
