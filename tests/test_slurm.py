"""The tiny DAG on a real SLURM cluster: a single-node cluster brought up on this machine
(.ci/slurm/up.sh: Debian's slurm-wlm and munge, controller and node on this host, partition pcr),
the workflow's own SLURM profile (workflow/profiles/slurm), generation in 2 shards per folder.
Every model job goes through sbatch; a generation shard killed with scancel fails the run, the rerun
submits it again, and every output then equals a local run's byte for byte, measured times aside.

`make test-slurm` runs it (root; apt unless slurm-wlm is installed), and .ci/run calls that;
`make test` skips it."""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import MODEL_RULES, ROOT, SNAKEMAKE, checkout, job_stats, tiny_config

pytestmark = pytest.mark.skipif(
    os.environ.get("PCR_SLURM_TEST") != "1",
    reason="brings up a SLURM cluster on this machine (root, apt): run it with `make test-slurm`")

SHARDS = 2  # per image folder; with 2 images per batch, each shard samples one batch of the 4 prompts
# what the CI cluster needs beyond the profile: no accounting database (job states from squeue), its
# partition (as a user gives theirs), and status checks every 2 s instead of the profile's 40 s wait
CI_CLUSTER = ("--slurm-status-command", "squeue", "--default-resources", "slurm_partition=pcr",
              "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2")
# keys and columns of measured times and where they were measured: compared without them (the rest of
# results/ byte for byte)
MEASURED = re.compile(r"seconds|speedup|^source$")
# the rules whose jobs go through sbatch (the others are localrules): with shards, generate_shard, not generate
SBATCH_RULES = MODEL_RULES - {"generate"}


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    up = subprocess.run(["bash", str(ROOT / ".ci/slurm/up.sh")], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"\nSLURM bring-up: {time.monotonic() - started:.0f} s ({up.stdout.strip()})")


def snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PCR_TORCH_THREADS": "1"}  # the same threads in every job, here and on SLURM
    return subprocess.Popen([str(SNAKEMAKE), *args], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(run: subprocess.Popen, timeout: int = 1200) -> tuple[int, str]:
    out, _ = run.communicate(timeout=timeout)
    return run.returncode, out


def on_slurm(workdir: Path) -> subprocess.Popen:
    return snakemake(workdir, "--profile", "workflow/profiles/slurm", *CI_CLUSTER, "all")


def submitted(log: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job the run submitted with sbatch, from the SLURM log paths it printed
    (.snakemake/slurm_logs/rule_<rule>[/<wildcards>]/<jobid>.log)."""
    jobs = []
    for path in re.findall(r"has been submitted with SLURM jobid \d+ \(log: (\S+)\)", log):
        rule, *wildcards, _ = path.split("slurm_logs/")[1].split("/")
        jobs.append((rule.removeprefix("rule_"), "/".join(wildcards)))
    return jobs


def cancel_first_running_shard(stop: threading.Event, cancelled: list) -> None:
    """scancel the first generation shard SLURM runs, once it has run 2 s (still starting: a job here
    takes 6-15 s, most of it reading the workflow and importing torch)."""
    while not stop.is_set():
        queue = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %M %k"], capture_output=True, text=True)
        for job_id, elapsed, comment in (line.split() for line in queue.stdout.splitlines()):
            minutes, seconds = elapsed.split(":")[-2:]
            if comment.startswith("rule_generate_shard_") and int(minutes) * 60 + int(seconds) >= 2:
                subprocess.run(["scancel", job_id], check=True)
                cancelled.append(comment)  # rule_<rule>_wildcards_<wildcards>
                return
        time.sleep(0.2)


def results(workdir: Path) -> dict[str, Path]:
    return {str(p.relative_to(workdir)): p for p in sorted((workdir / "results").rglob("*"))
            if p.is_file() and "results/benchmarks/" not in str(p.relative_to(workdir))}


def untimed(data):
    if isinstance(data, dict):
        return {k: untimed(v) for k, v in data.items() if not MEASURED.search(k)}
    return [untimed(v) for v in data] if isinstance(data, list) else data


def without_times(path: Path):
    """A file's content, its measured times left out: the run-time table's job counts, a table's
    other columns (a Markdown table is its CSV's), a JSON file's other keys, a safetensors file's tensors
    and other metadata, any other file's bytes."""
    if path.stem == "run_time":  # rows ordered by time taken
        return dict(pd.read_csv(path.with_suffix(".csv"))[["rule", "jobs"]].values.tolist())
    if path.suffix == ".md" and path.with_suffix(".csv").exists():
        path = path.with_suffix(".csv")
    if path.suffix == ".csv" and path.parent.name == "tables":
        table = pd.read_csv(path)
        return table.drop(columns=[c for c in table if MEASURED.search(c)]).to_csv(index=False)
    if path.suffix == ".json":
        return untimed(json.loads(path.read_text()))
    if path.suffix == ".safetensors":  # calibration parameters: tensors, and metadata with its seconds
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
        metadata = {k: json.loads(v) if v.startswith("{") else v for k, v in header.pop("__metadata__", {}).items()}
        return header, untimed(metadata), raw[8 + size:]
    return path.read_bytes()


def test_tiny_dag_on_slurm_equals_a_local_run_and_resumes_a_cancelled_job(cluster, tmp_path):
    config = tiny_config()
    config["sampling"].update(shards=SHARDS, batch_size=2)
    # one evaluation set: every rule still runs, in 22 sbatch jobs instead of 36 (each imports torch, ~15 s)
    del config["prompts"]["evaluation"]["generalization"]
    local, remote = checkout(tmp_path / "local", config), checkout(tmp_path / "slurm", config)

    started = time.monotonic()
    rc, log = finish(snakemake(local, "--cores", "2", "all"))
    assert rc == 0, log[-3000:]
    local_s = time.monotonic() - started

    started = time.monotonic()
    stop, cancelled = threading.Event(), []
    killer = threading.Thread(target=cancel_first_running_shard, args=(stop, cancelled))
    killer.start()
    rc, first = finish(on_slurm(remote))
    stop.set()
    killer.join()
    first_s = time.monotonic() - started
    assert cancelled, "no generation shard was seen running"
    assert rc != 0 and "CANCELLED" in first, first[-3000:]
    assert "localrule collect_shards:" in first  # tables, figures and collecting shards stay here

    started = time.monotonic()
    rc, rerun = finish(on_slurm(remote))
    rerun_s = time.monotonic() - started
    assert rc == 0, rerun[-3000:]
    # every planned job of the sbatch rules went through sbatch once and no localrule did; the cancelled
    # shard twice, and nothing that finished before the kill ran again
    jobs, again = submitted(first), submitted(rerun)
    planned = job_stats(first)
    assert len(set(jobs) | set(again)) == sum(planned[rule] for rule in SBATCH_RULES) == len(jobs) + len(again) - 1
    assert {rule for rule, _ in jobs + again} == SBATCH_RULES
    killed = cancelled[0].removeprefix("rule_").split("_wildcards_")
    assert tuple(killed) in jobs and tuple(killed) in again

    ours, theirs = results(local), results(remote)
    assert sorted(ours) == sorted(theirs)
    shards = [f for f in ours if "/shards/" in f and f.endswith(".csv")]
    assert len(shards) == SHARDS * len([f for f in ours if f.endswith("/manifest.csv")])
    assert [f for f in ours if without_times(ours[f]) != without_times(theirs[f])] == []
    print(f"\nSLURM: {len(jobs)} jobs through sbatch in {first_s:.0f} s, one cancelled ({cancelled[0]}); the "
          f"rerun submitted {len(again)} in {rerun_s:.0f} s; the same DAG locally: {local_s:.0f} s; "
          f"{len(ours)} files under results/ equal")
