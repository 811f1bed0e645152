"""The values the full-data protocol takes from its own tables are the tables' choices, read
again here from the committed records: each `protocol.tuned_lr` that is set is the lr grid's
chosen rate (complete, not at the grid's edge), and low_resource, once set, trains each task at
the smallest size at which vanilla learns (an extra sweep per task), plus the full sets; and
main has the seeds its pre-registered power rule asks for once seeds 1-5 are in."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from childtune import records
from childtune.study import aggregate, claims, evidence, plan, tables
from conftest import compose

RESULTS = Path(__file__).resolve().parents[1] / "results"
UNSET = "???"
FIRST_SEEDS = [1, 2, 3, 4, 5]   # the seeds main always has; the rule reads them, once
SEED_CAP = 10                   # a claim that needs more is reported as underpowered


def _protocol() -> dict:
    return OmegaConf.to_container(compose("protocol=cpu_full").protocol, resolve=False)


def _saved_plan(study: str) -> plan.Plan:
    """The study's largest saved plan under cpu_full (the one the tables show)."""
    saved = [p for p in plan.read_manifests(RESULTS) if p.study == study
             and p.protocol == "cpu_full"]
    assert saved, f"no saved {study} plan under results/plans"
    return max(saved, key=lambda p: len(p.runs))


@pytest.fixture(scope="module")
def recs() -> dict:
    return {r.path: r for r in records.read_records(RESULTS)}


def test_each_tuned_rate_that_is_set_is_the_grids_choice(recs):
    tuned = _protocol()["tuned_lr"]
    chosen_values = [(v, t, lr) for v in ("vanilla", "child_tuning_d", "child_tuning_f")
                     for t, lr in tuned[v].items() if lr != UNSET]
    if not chosen_values:
        pytest.skip("no protocol.tuned_lr value is set yet (the lr grid is running)")
    grid = _saved_plan("lr_grid_variants")
    chosen = evidence.chosen_rates(tables.observations(grid, recs)).set_index(
        ["variant", "column"])
    for variant, task, lr in chosen_values:
        choice = chosen.loc[(variant, task)]
        assert choice["complete"], f"{variant} {task}: the grid is not complete"
        assert not choice["edge"], f"{variant} {task}: the choice is at the grid's edge"
        assert float(lr) == choice["lr"], f"{variant} {task}: {lr} is not the grid's choice"


def test_the_low_resource_sizes_once_set_are_where_vanilla_learns(recs):
    settings = _protocol()["studies"]["low_resource"]
    if settings["sizes"] == UNSET:
        pytest.skip("protocol.studies.low_resource.sizes is not set yet")
    study = _saved_plan("low_resource_sizes")
    learnable = evidence.learnable_sizes(study, recs)
    assert learnable["complete"].all(), "low_resource_sizes is not complete"
    smallest = evidence.smallest_learnable(learnable)
    assert str(settings["sizes"]).strip() == "null"     # the full sets, for every task
    given = {}
    for entry in settings.get("extra_sweeps") or []:    # each task's own size
        overrides = dict(o.split("=", 1) for o in entry.split())
        assert set(overrides) == {"task", "data.n_train"}, entry
        assert overrides["task"] not in given, f"two sizes for {overrides['task']}"
        given[overrides["task"]] = int(overrides["data.n_train"])
    assert given == {task: size for task, size in smallest.items() if size is not None}


def test_a_rate_that_is_not_the_grids_choice_fails_the_check(recs, monkeypatch):
    protocol = _protocol()
    protocol["tuned_lr"]["vanilla"]["rte"] = 2e-4        # RTE collapses there: never the choice
    monkeypatch.setitem(globals(), "_protocol", lambda: protocol)
    with pytest.raises(AssertionError, match="vanilla rte"):
        test_each_tuned_rate_that_is_set_is_the_grids_choice(recs)


def test_main_has_the_seeds_its_power_rule_asks_for(recs):
    """The rule in cpu_full.yaml, applied once to seeds 1-5: where a main claim's paired test
    needs 6-10 seeds to detect the paper's difference at our SD, main gets seeds up to the
    largest such number; more than 10 is underpowered and adds nothing."""
    obs = tables.observations(_saved_plan("main"), recs)
    first = obs[obs["seed"].isin(FIRST_SEEDS)]
    if not first["found"].all():
        pytest.skip("main's seeds 1-5 are not all recorded yet")
    numbers, paper_claims = aggregate.load_reference(aggregate.DEFAULT_REFERENCE)
    judged = claims.rows([c for c in paper_claims if c["study"] == "main"], numbers,
                         evidence.paired_tests(first).assign(study="main"), first)
    assert judged, "no main claim was judged"
    needed = [n for c in judged
              if (n := evidence.seeds_needed(c["test"]["sd_diff"], c["paper_delta"]))]
    target = max([len(FIRST_SEEDS)] + [n for n in needed if n <= SEED_CAP])
    planned = plan.make_plan(["experiment=main", "protocol=cpu_full"], identities=False)
    assert {r["overrides"]["seed"] for r in planned.runs} == set(range(1, target + 1)), (
        f"the main claims need {needed} seeds: main should have seeds 1-{target}")
