"""The package as a user installs it: a wheel built from this tree, in a new virtualenv.

Field case: the wheel listed no subpackages, so an installed jobline lacked
``runtime/chaos`` while ``jobline chaos`` was offered. To stay fast and offline the new
virtualenv borrows this environment's dependencies (a ``.pth`` file naming its
site-packages) and installs the wheel alone (``--no-deps``).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "actors", "vendors_fake", "loadtests")


def run(*argv: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


def source_tree(into: Path) -> Path:
    """What a clean checkout holds of the package (pip builds in the tree it is given)."""
    tree = into / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    return tree


def test_the_wheel_carries_every_subpackage_and_its_commands_run(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    source = source_tree(tmp_path)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("jobline-*.whl")

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)  # this pip installs into it, below
    python = target / "bin" / "python"
    new_site = Path(
        run(python, "-c", "import site; print(site.getsitepackages()[0])", cwd=tmp_path).strip()
    )
    (new_site / "borrowed-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    pip = (sys.executable, "-m", "pip", "--python", python)
    run(*pip, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)

    where = run(
        python,
        "-c",
        "import actors.wiring, loadtests.chaos.scenarios, runtime.api.openapi, vendors_fake; "
        "print(loadtests.chaos.scenarios.__file__)",
        cwd=tmp_path,
    )
    assert Path(where.strip()).is_relative_to(new_site)  # the wheel's, not this tree's
    jobline = target / "bin" / "jobline"
    assert "chaos" in run(jobline, "--help", cwd=tmp_path)
    assert "vendor-outage" in run(jobline, "chaos", "--list", cwd=tmp_path)
    assert "--profile" in run(jobline, "demo", "--help", cwd=tmp_path)
    profiles = run(
        python, "-c", "import vendors_fake; print(vendors_fake.preset_names())", cwd=tmp_path
    )
    assert "calm" in profiles  # the package data (profiles.toml) came along
    report = tmp_path / "simulated"
    config = ROOT / "jobline.toml"
    simulated = run(
        jobline, "simulate", "--config", config, "--jobs", "20", "--out", report, cwd=tmp_path
    )
    assert "all held" in simulated and (report / "report.png").is_file()
