"""One command-line convention: every entrypoint takes key=value arguments and answers --help;
plan answers from its cache in seconds and lists the missing runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from childtune.study import aggregate, plan, wandb_tables

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"childtune.{module}", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("module,expected", [
    ("aggregate", "results_dir=..."), ("plan", "missing=..."),
    ("study.wandb_tables", "project=..."), ("train", "Powered by Hydra")])
def test_every_entrypoint_answers_help(module, expected):
    proc = _cli(module, "--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stdout


@pytest.mark.parametrize("main", [aggregate.main, wandb_tables.main])
def test_every_entrypoint_takes_key_value_and_refuses_others(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--results-dir", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown argument '--results-dir'; use results_dir=..." in err[0]


def test_plan_refuses_a_bad_flag_in_one_line(capsys):
    assert plan.main(["launch=maybe"]) == 2
    assert capsys.readouterr().err.strip() == "error: launch must be true or false, got 'maybe'"


def test_plan_answers_from_its_cache_and_lists_missing_runs(tmp_path):
    launch = ["experiment=main", "protocol=cpu", "task=rte", "seed=1,2"]
    first = _cli("plan", *launch, f"results_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert list((tmp_path / ".cache" / "childtune" / "plans").glob("*.json"))
    start = time.perf_counter()
    again = _cli("plan", *launch, f"results_dir={tmp_path / 'r'}", "missing=true", cwd=tmp_path)
    assert time.perf_counter() - start < 5, "plan composed again instead of using its cache"
    assert again.stdout.startswith(first.stdout.strip())
    lines = [line for line in again.stdout.splitlines() if line.startswith("  missing ")]
    assert len(lines) == 6       # rte x 3 variants x 2 seeds
    assert "runs/minilm/rte/vanilla/" in lines[0]
    assert "python -m childtune.train experiment=main protocol=cpu" in lines[0]
