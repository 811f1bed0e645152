"""Any multirun tabulates: a sweep of no study gets its plan saved and its table written like
a study's, and records no saved plan names are grouped by what their commands varied."""
from __future__ import annotations

import shlex

import pandas as pd

from childtune import records
from childtune.jobs import resolved
from childtune.study import aggregate, plan
from fake_records import fake_record

SWEEP = ["model=tiny", "task=rte", "variant=vanilla,child_tuning_d", "seed=1,2", "study=mine"]


def test_a_sweep_of_no_study_has_a_plan():
    # Used to raise "Input cfg is not an OmegaConf config object" (no sweeper params).
    made = plan.make_plan(SWEEP)
    assert made.study == "mine" and len(made.runs) == 4
    assert set(made.swept) == {"variant", "seed"}


def _write_from_commands(results_dir, jobs: list[list[str]], value=lambda ident: 0.5):
    """A record per job, as train writes it (command included), and no saved plan."""
    for job in jobs:
        config = resolved(job)
        ident = records.identity(config)
        records.write_record(results_dir, fake_record(
            ident, value(ident), config=config,
            command="python -m childtune.train " + " ".join(shlex.quote(o) for o in job)))


def test_records_of_no_plan_are_tabulated_by_what_the_sweep_varied(tmp_path, capsys):
    jobs = [r["job"] for r in plan.make_plan(SWEEP, identities=False).runs]
    _write_from_commands(tmp_path, jobs, value=lambda i: 0.6 + 0.1 * (
        i["variant"] == "child_tuning_d") + 0.01 * i["seed"])
    aggregate.run([f"results_dir={tmp_path}", "figures=false"])
    out = capsys.readouterr().out
    assert f"mine: wrote {tmp_path / 'tables' / 'mine.md'}" in out
    assert "not tabulated" not in out
    stats = pd.read_csv(tmp_path / "tables" / "mine.csv").set_index(["row", "column"])
    assert stats.loc[("vanilla", "rte"), "mean"] == 61.5
    assert stats.loc[("child_tuning_d", "rte"), "delta"] == 10.0
    markdown = (tmp_path / "tables" / "mine.md").read_text()
    launch = markdown.split("Launch: `")[1].split("`")[0]
    assert "variant=child_tuning_d,vanilla" in launch and "seed=1,2" in launch
