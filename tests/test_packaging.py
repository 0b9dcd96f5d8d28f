"""The set-up files agree with each other, so conda users and CI install what was tested."""

from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["slurm"]]


def test_environment_yml_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = {Requirement(r).name.lower(): Requirement(r) for r in pip if not r.startswith("-e")}
    for req in pyproject_requirements():
        assert req.name.lower() in conda_reqs, f"environment.yml lacks {req.name}"
        if req.name not in ("torch", "torchvision"):  # pinned exactly in both places instead
            assert conda_reqs[req.name.lower()].specifier == req.specifier, req.name


def test_constraints_pin_every_dependency_within_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for req in pyproject_requirements():
        version = pins[req.name.lower().replace("_", "-")]
        assert req.specifier.contains(version), f"constraints.txt pins {req.name}=={version}, outside {req.specifier}"
