"""A multirun's per-job artefacts (config, overrides, log), launch lines, one summary line, no
progress bars drawn over each other; a study's config without -m says it ran one job."""
from __future__ import annotations

import json

from conftest import run_cli


def test_a_multirun_leaves_per_job_files_and_one_summary_line(tmp_path, tiny_data):
    args = ["-m", "model=tiny", f"data.dir={tiny_data}", "trainer.epochs=1",
            "trainer.lr=1e-4,1e30", f"results_dir={tmp_path / 'r'}",
            f"runtime.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_cli(*args)
    assert "python -m childtune.train model=tiny" in proc.stdout and "[job 1]" in proc.stdout
    assert "train:" not in proc.stderr                        # no progress bars in a multirun
    summary = [line for line in proc.stdout.splitlines() if line.startswith("sweep:")]
    failure = next((tmp_path / "r").rglob("*.failed.json"))
    assert summary == [f"sweep: 1 done, 0 skipped, 1 failed ({failure}); per job: "
                       f"{tmp_path / 'sweep'}/<job>/"], proc.stdout
    for job in ("0", "1"):
        folder = tmp_path / "sweep" / job
        assert "trainer.lr=" in (folder / ".hydra" / "overrides.yaml").read_text()
        assert "model:" in (folder / ".hydra" / "config.yaml").read_text()
        assert "seed=1" in (folder / "train.log").read_text()
    assert json.loads((tmp_path / "sweep" / "1" / "outcome.json").read_text())["status"] == "failed"

    proc = run_cli(*args[:-1], f"hydra.sweep.dir={tmp_path / 'again'}")
    assert "sweep: 0 done, 1 skipped, 1 failed" in proc.stdout


def test_a_study_without_multirun_says_it_ran_one_job(tmp_path, tiny_data):
    proc = run_cli("experiment=main", "model=tiny", f"data.dir={tiny_data}", "data.n_train=41",
                   f"results_dir={tmp_path / 'r'}")
    assert ("note: study main sweeps task, variant; without -m this ran one job of it (add -m "
            "to run the study)") in proc.stderr
    proc = run_cli("experiment=main", "model=tiny", "task=rte", "variant=vanilla",
                   f"data.dir={tiny_data}", "data.n_train=41", f"results_dir={tmp_path / 'r'}")
    assert "note:" not in proc.stderr      # the rerun command of one job of the study
