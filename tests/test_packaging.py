"""The built wheel carries the configs and the paper's numbers, and the installed entry points
work outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):  # a copy: the build leaves build/ behind
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-300:]}")
    return next(out.glob("childtune-*.whl"))


def test_the_wheel_holds_configs_reference_and_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"childtune/conf/config.yaml", "childtune/conf/experiment/main.yaml",
            "childtune/conf/model/tiny.yaml", "childtune/conf/protocol/cpu_full.yaml",
            "childtune/reference/paper.yaml",
            "hydra_plugins/childtune_launcher/parallel_launcher.py"} <= names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    for script in ("childtune-train", "childtune-aggregate", "childtune-plan"):
        assert script in scripts


def test_the_unpacked_wheel_composes_and_plans_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "childtune.train", "--cfg", "job",
                           "model=tiny"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "name: tiny" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", "import childtune.study.aggregate as a; "
                           "print(a.DEFAULT_REFERENCE.is_file(), a.__file__)"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith(f"True {site}"), proc.stdout + proc.stderr
