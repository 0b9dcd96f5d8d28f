import os
import subprocess
import sys

import pytest
import torch

from pcr.runtime import available_cpus, use_available_cpus


def test_a_process_pinned_to_one_core_uses_one_thread():
    """As under taskset or a cluster job given one CPU: torch's default would be every core of the node."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import torch; "
            "from pcr.runtime import use_available_cpus; print(use_available_cpus(), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "PCR_TORCH_THREADS"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["1", "1"]


def test_the_override_sets_the_threads(monkeypatch):
    monkeypatch.setenv("PCR_TORCH_THREADS", "1")
    before = torch.get_num_threads()
    try:
        assert use_available_cpus() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_bad_override_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PCR_TORCH_THREADS", "two")
    with pytest.raises(ValueError, match="PCR_TORCH_THREADS"):
        available_cpus()


def test_device_and_dtype_from_config_names():
    import torch

    from pcr.pipelines import load_pipeline
    from pcr.runtime import resolve_device, torch_dtype

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        torch_dtype("fp16")
    assert load_pipeline("tiny-sd", device="cpu", dtype="bfloat16").unet.dtype == torch.bfloat16


def test_each_thread_logs_to_its_own_job_log(tmp_path):
    """Workflow jobs run in threads of one process (pcr.jobs): a job's stderr must not reach another's log."""
    import sys
    import threading

    from pcr.runtime import job_log

    ready = threading.Barrier(2)

    def job(name):
        with job_log(tmp_path / f"{name}.log"):
            ready.wait()  # both jobs are inside their logs at once
            for i in range(50):
                print(f"{name} line {i}", file=sys.stderr)

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, other in (("a", "b"), ("b", "a")):
        text = (tmp_path / f"{name}.log").read_text()
        assert text.count(f"{name} line") == 50 and f"{other} line" not in text
    print("after the jobs", file=sys.stderr)  # the main thread still writes to the real stderr
    assert "after the jobs" not in (tmp_path / "a.log").read_text()
