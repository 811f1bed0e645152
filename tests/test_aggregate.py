"""Tables from synthetic records written through the entrypoint's writer: statistics against
hand computation, missing cells, paper columns, and a torch-free aggregator."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from childtune import records
from childtune.study import aggregate, plan, tables
from fake_records import fake_failure, fake_identity, fake_record

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Headline values (fractions) per (task, variant) for seeds 1, 2, 3.
VALUES = {("rte", "vanilla"): [0.60, 0.62, 0.64], ("rte", "child_tuning_d"): [0.63, 0.66, 0.66],
          ("mrpc", "vanilla"): [0.80, 0.82, 0.78], ("mrpc", "child_tuning_d"): [0.81, 0.85, 0.80]}
LAUNCH = ["experiment=main", "protocol=cpu", "model=tiny", "task=rte,mrpc",
          "variant=vanilla,child_tuning_d", "seed=1,2,3"]


@pytest.fixture(scope="module")
def small_plan():
    return plan.make_plan(LAUNCH)


def _write(results_dir: Path, small_plan, skip=(), values=VALUES, row_key="variant"):
    """A record per planned run but those in `skip`, with values[(task, row)][seed - 1]; the
    row is the run's variant, or its method with row_key="method"."""
    for run in small_plan.runs:
        ident = run["identity"]
        key = (ident["task"], {**ident, **run["overrides"]}[row_key])
        if (*key, ident["seed"]) in skip:
            continue
        value = values[key][ident["seed"] - 1]
        records.write_record(results_dir, fake_record(
            ident, value, config={"study": small_plan.study, "protocol": {"name": "cpu"}}))
    plan.write_manifest(results_dir, small_plan)


def _aggregate(results_dir: Path, reference: Path | None = None, study: str = "main"):
    args = [f"results_dir={results_dir}", "figures=false"]
    if reference is not None:
        args.append(f"reference={reference}")
    aggregate.run(args)
    stats = pd.read_csv(results_dir / "tables" / f"{study}.csv")
    markdown = (results_dir / "tables" / f"{study}.md").read_text()
    return stats.set_index(["row", "column"]), markdown


def _p_two_sided_df2(t: float) -> float:
    """Student's t with 2 degrees of freedom has a closed-form tail: P(|T| > t)."""
    return 1 - t / math.sqrt(t * t + 2)


def test_statistics_match_hand_computation(tmp_path, small_plan):
    _write(tmp_path, small_plan)
    stats, markdown = _aggregate(tmp_path)

    vanilla = stats.loc[("vanilla", "rte")]
    assert (vanilla["n"], vanilla["n_planned"], bool(vanilla["complete"])) == (3, 3, True)
    assert vanilla["mean"] == pytest.approx(62.0)
    assert vanilla["std"] == pytest.approx(2.0)              # sample std, ddof=1

    d = stats.loc[("child_tuning_d", "rte")]                  # 63, 66, 66 vs 60, 62, 64
    assert d["mean"] == pytest.approx(65.0)
    assert d["std"] == pytest.approx(math.sqrt(3.0))
    assert d["delta"] == pytest.approx(3.0)                   # differences 3, 4, 2
    assert d["p_ttest_rel"] == pytest.approx(_p_two_sided_df2(3 * math.sqrt(3)), rel=1e-6)
    assert d["p_wilcoxon"] == pytest.approx(0.25)             # exact: 2 * (1/2)**3

    d = stats.loc[("child_tuning_d", "mrpc")]                 # 81, 85, 80 vs 80, 82, 78
    assert d["delta"] == pytest.approx(2.0)
    assert d["p_ttest_rel"] == pytest.approx(_p_two_sided_df2(2 * math.sqrt(3)), rel=1e-6)

    # avg: per-seed means over the tasks. vanilla 70, 72, 71; CT_D 72, 75.5, 73.
    assert stats.loc[("vanilla", "avg"), "mean"] == pytest.approx(71.0)
    assert stats.loc[("vanilla", "avg"), "std"] == pytest.approx(1.0)
    avg = stats.loc[("child_tuning_d", "avg")]
    assert avg["mean"] == pytest.approx(73.5)
    assert avg["std"] == pytest.approx(math.sqrt(3.25))
    assert avg["delta"] == pytest.approx(2.5)                 # differences 2, 3.5, 2
    assert avg["p_ttest_rel"] == pytest.approx(_p_two_sided_df2(5.0), rel=1e-6)

    assert "| vanilla | 62.00 ± 2.00 (3) | 80.00 ± 2.00 (3) | 71.00 ± 1.00 (3) |" in markdown
    assert "+3.00 (p=0.0351)" in markdown
    assert "†" not in markdown.split("## ")[1]


# combinations: vanilla, mixout and mixout + CT_D on RTE, seeds 1, 2, 3.
COMBINED = {("rte", "vanilla"): [0.60, 0.62, 0.64], ("rte", "mixout"): [0.58, 0.63, 0.60],
            ("rte", "mixout_ct_d"): [0.64, 0.66, 0.66]}


@pytest.fixture(scope="module")
def combined_plan():
    return plan.make_plan(["experiment=combinations", "protocol=cpu", "model=tiny", "task=rte",
                           "method=vanilla,mixout,mixout_ct_d", "seed=1,2,3"])


def _without_ct_d_section(markdown: str) -> list[str]:
    lines = markdown.split("Δ vs the method without CT_D")[1].splitlines()
    return [line for line in lines if line.startswith("| mixout_ct_d |")]


def test_a_method_with_ct_d_is_compared_with_the_method_paired_by_seed(tmp_path, combined_plan):
    _write(tmp_path, combined_plan, values=COMBINED, row_key="method")
    stats, markdown = _aggregate(tmp_path, study="combinations")
    # mixout_ct_d 64, 66, 66 vs mixout 58, 63, 60: differences 6, 3, 6 (t = 5, 2 df);
    # against vanilla 60, 62, 64 (the usual Δ grid): 4, 4, 2.
    assert stats.loc[("mixout_ct_d", "rte"), "delta"] == pytest.approx(10 / 3)
    obs = tables.observations(combined_plan, {r.path: r for r in records.read_records(tmp_path)})
    versus = tables.delta_versus(obs, "", "mixout_ct_d", "mixout", "rte")
    assert versus["delta"] == pytest.approx(5.0) and versus["n_pairs"] == 3
    assert versus["p_ttest_rel"] == pytest.approx(_p_two_sided_df2(5.0), rel=1e-6)
    assert _without_ct_d_section(markdown) == ["| mixout_ct_d | +5.00 (p=0.0377) | +5.00 (p=0.0377) |"]
    assert "(each `<method>_ct_d` row against `<method>`" in markdown


def test_the_method_without_ct_d_pairs_only_the_seeds_both_have(tmp_path, combined_plan):
    _write(tmp_path, combined_plan, values=COMBINED, row_key="method",
           skip={("rte", "mixout", 2)})
    _, markdown = _aggregate(tmp_path, study="combinations")
    # seeds 1 and 3: differences 6, 6 (no spread: no test)
    assert _without_ct_d_section(markdown) == ["| mixout_ct_d | +6.00 (p=n/a)† | +6.00 (p=n/a)† |"]


def test_missing_runs_are_flagged_never_averaged_silently(tmp_path, small_plan):
    _write(tmp_path, small_plan, skip={("rte", "child_tuning_d", 3)})
    stats, markdown = _aggregate(tmp_path)
    cell = stats.loc[("child_tuning_d", "rte")]
    assert (cell["n"], cell["n_planned"], bool(cell["complete"])) == (2, 3, False)
    assert cell["mean"] == pytest.approx(64.5)
    assert cell["n_pairs"] == 2
    avg = stats.loc[("child_tuning_d", "avg")]
    assert (avg["n"], bool(avg["complete"])) == (2, False)   # only seeds with every task
    assert bool(stats.loc[("vanilla", "rte"), "complete"])
    assert "64.50 ± 2.12 (2/3)†" in markdown
    assert "records: 11 of 12 planned runs (0 failed: not counted as results; 1 missing)" in markdown


def test_failed_runs_are_counted_as_failed_not_as_results(tmp_path, small_plan):
    _write(tmp_path, small_plan, skip={("rte", "child_tuning_d", 3)})
    (run,) = [r for r in small_plan.runs if (r["identity"]["task"], r["identity"]["variant"],
                                             r["identity"]["seed"]) == ("rte", "child_tuning_d", 3)]
    records.write_failure(tmp_path, fake_failure(run["identity"], "diverged",
                                                 "loss is nan at step 3"))
    stats, markdown = _aggregate(tmp_path)
    assert stats.loc[("child_tuning_d", "rte"), "n"] == 2
    assert "64.50 ± 2.12 (2/3)†" in markdown
    assert "records: 11 of 12 planned runs (1 failed: not counted as results; 0 missing)" in markdown


def test_a_cell_without_any_run_is_marked(tmp_path, small_plan):
    skip = {("mrpc", "child_tuning_d", s) for s in (1, 2, 3)}
    _write(tmp_path, small_plan, skip=skip)
    stats, markdown = _aggregate(tmp_path)
    assert stats.loc[("child_tuning_d", "mrpc"), "n"] == 0
    assert "— (0/3)†" in markdown


def test_paper_numbers_stay_in_their_own_columns(tmp_path, small_plan):
    _write(tmp_path, small_plan)
    reference = tmp_path / "paper.yaml"
    reference.write_text(yaml.safe_dump({"numbers": [
        {"study": "main", "model": "bert-large-cased", "row": "vanilla", "column": "avg",
         "quantity": "mean", "value": 99.99, "source": "secondary", "provenance": "test"},
        {"study": "main", "model": None, "row": "child_tuning_d", "column": "rte",
         "quantity": "delta", "versus": "vanilla", "value": 7.77, "source": "paper",
         "provenance": "test"}]}))
    stats, markdown = _aggregate(tmp_path, reference)

    measured = ["mean", "std", "delta"]
    assert not (stats[measured] == 99.99).any().any()
    assert not (stats[measured] == 7.77).any().any()
    assert stats.loc[("vanilla", "avg"), "mean"] == pytest.approx(71.0)
    assert stats.loc[("vanilla", "avg"), "paper_mean"] == 99.99
    assert stats.loc[("vanilla", "avg"), "paper_mean_model"] == "bert-large-cased"
    assert stats.loc[("child_tuning_d", "rte"), "paper_delta"] == 7.77
    # Unknown paper cells stay empty.
    assert stats["paper_mean"].notna().sum() == 1
    assert stats["paper_delta"].notna().sum() == 1

    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| variant | rte"))
    assert header.endswith("| avg | paper avg |")
    vanilla = next(line for line in lines if line.startswith("| vanilla |"))
    assert vanilla.endswith("| 71.00 ± 1.00 (3) | 99.99 (bert-large-cased) |")
    ct_d = next(line for line in lines if line.startswith("| child_tuning_d | 65"))
    assert ct_d.endswith(" |  |")                              # no paper number for this row
    delta = next(line for line in lines if line.startswith("| child_tuning_d | +3.00"))
    assert delta.endswith("| +7.77 (model not stated) |")


def test_the_reference_file_gives_every_number_a_provenance():
    numbers, _ = aggregate.load_reference(aggregate.DEFAULT_REFERENCE)
    assert numbers
    for entry in numbers:
        assert entry["study"] in plan.studies()
        assert entry["source"] in ("paper", "secondary")
        assert entry["provenance"].strip()
        assert isinstance(entry["value"], (int, float))
        assert entry["quantity"] in ("mean", "delta")
        assert entry["quantity"] == "mean" or entry["versus"]


def test_the_section_names_the_learning_rates_unless_the_rows_show_them(small_plan):
    assert tables.learning_rates(small_plan) == "rte 2e-05, mrpc 5e-05"   # protocol.lr per task
    tuned = plan.make_plan(["experiment=main_tuned_lr", "protocol=cpu"])
    assert tables.learning_rates(tuned) == (
        "vanilla: cola 0.0002, stsb 0.0001; child_tuning_d: cola 0.0005, stsb 0.0005; "
        "child_tuning_f: cola 0.0005, stsb 0.0002")
    assert tables.learning_rates(plan.make_plan(["experiment=lr_grid", "protocol=cpu"])) == ""


def test_only_plans_with_records_and_no_duplicates(small_plan):
    subset = plan.Plan(small_plan.study, small_plan.protocol, ["x"], small_plan.runs[:3])
    found = {small_plan.runs[0]["path"]}
    assert aggregate.choose_plans([small_plan, subset, small_plan], found) == [small_plan]
    assert aggregate.choose_plans([small_plan], set()) == []


def test_the_aggregator_never_imports_torch(tmp_path, small_plan):
    _write(tmp_path, small_plan)
    code = ("import sys; from childtune import aggregate; "
            f"aggregate.main(['results_dir={tmp_path}']); "
            "bad = [m for m in ('torch', 'transformers', 'childtune.run', 'childtune.method') "
            "if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "main: wrote" in result.stdout


def test_bad_argument_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        aggregate.main([f"results={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown argument")


@pytest.mark.integration
def test_a_tiny_multirun_gives_a_complete_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    train = [sys.executable, "-m", "childtune.train", "-m", "experiment=main", "protocol=cpu",
             "model=tiny", "task=rte", "variant=vanilla,child_tuning_d", "seed=1,2",
             "data.n_train=32", "trainer.epochs=1", f"results_dir={tmp_path}",
             f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=false",
             f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(train, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "plans").glob("main-cpu-*.json"))) == 1   # ManifestCallback
    result = subprocess.run([sys.executable, "-m", "childtune.aggregate",
                             f"results_dir={tmp_path}"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "tables" / "main.md").read_text()
    assert "records: 4 of 4 planned runs (0 failed: not counted as results; 0 missing)" in markdown
    assert "†" not in markdown.split("## ")[1]
    assert "| child_tuning_d |" in markdown


def test_runs_frame_has_one_row_per_record(tmp_path, small_plan):
    _write(tmp_path, small_plan, skip={("rte", "child_tuning_d", 3)})
    frame = aggregate.runs_frame(records.read_records(tmp_path))
    assert len(frame) == 11 and set(frame["status"]) == {"success"}
    cell = frame[(frame["task"] == "rte") & (frame["variant"] == "vanilla")]
    assert sorted(cell["headline"]) == [0.60, 0.62, 0.64]


def test_readme_table_blocks_are_rebuilt_from_the_records(tmp_path, small_plan):
    _write(tmp_path / "results", small_plan, skip={("rte", "child_tuning_d", 3)})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table: main protocol cpu -->\nstale 99.99\n<!-- /table -->\n"
                      "middle\n<!-- table: nosuch protocol cpu -->\nkept\n<!-- /table -->\nend\n")
    aggregate.run([f"results_dir={tmp_path / 'results'}", "figures=false", f"readme={readme}"])
    text = readme.read_text()
    section = (tmp_path / "results" / "tables" / "main.md").read_text()
    block = text.split("<!-- table: main protocol cpu -->\n")[1].split("<!-- /table -->")[0]
    assert "stale" not in block and "64.50 ± 2.12 (2/3)†" in block
    assert "records: 11 of 12 planned runs" in block and block.strip().splitlines()[-1] in section
    assert text.startswith("intro\n") and "middle\n" in text and text.endswith("end\n")
    assert "<!-- table: nosuch protocol cpu -->\nkept\n<!-- /table -->" in text  # left as is
    before = readme.read_text()
    aggregate.run([f"results_dir={tmp_path / 'results'}", "figures=false", f"readme={readme}"])
    assert readme.read_text() == before   # idempotent


def test_a_missing_readme_is_one_error_line(tmp_path, small_plan, capsys):
    _write(tmp_path, small_plan)
    with pytest.raises(SystemExit):
        aggregate.main([f"results_dir={tmp_path}", "figures=false",
                        f"readme={tmp_path / 'nope.md'}"])
    assert capsys.readouterr().err.strip().startswith("error: readme=")


# ---------------------------------------------------------------- hostile inputs (issue 19)

def _one_error_line(capsys, call) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        call()
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize("text, problem", [
    ("a\n<!-- table: main protocol cpu -->\nold\nhand-written\n"
     "<!-- table: nosuch protocol cpu -->\nkept\n<!-- /table -->\nend\n", "has no <!-- /table -->"),
    ("a\n<!-- table: main protocol cpu -->\nold\nhand-written text\n", "is never closed"),
    ("a\n<!-- /table -->\nb\n", "closes no block"),
])
def test_a_readme_with_unpaired_markers_is_refused_and_left_untouched(tmp_path, small_plan,
                                                                       capsys, text, problem):
    _write(tmp_path / "results", small_plan)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    line = _one_error_line(capsys, lambda: aggregate.main([
        f"results_dir={tmp_path / 'results'}", "figures=false", f"readme={readme}"]))
    assert problem in line
    assert readme.read_text() == text


def test_hostile_aggregate_inputs_are_one_error_line(tmp_path, small_plan, capsys):
    results = tmp_path / "results"
    line = _one_error_line(capsys, lambda: aggregate.main([f"results_dir={results}"]))
    assert "does not exist" in line  # not "0 records", exit 0
    _write(results, small_plan)
    line = _one_error_line(capsys, lambda: aggregate.main([f"results_dir={results}",
                                                           "figures=maybe"]))
    assert "figures must be true or false, got 'maybe'" in line
    (results / "tables").write_text("a file where the tables folder goes")
    line = _one_error_line(capsys, lambda: aggregate.main([f"results_dir={results}",
                                                           "figures=false"]))
    assert "cannot write tables to" in line
    (results / "tables").unlink()
    only_status = results / "runs" / "x" / "seed1.json"
    only_status.parent.mkdir(parents=True)
    only_status.write_text('{"status": "success"}')
    line = _one_error_line(capsys, lambda: aggregate.main([f"results_dir={results}",
                                                           "figures=false"]))
    assert "is not a readable run record" in line and "identity" in line


def test_hostile_plan_inputs_are_one_error_line_and_a_cut_record_is_not_done(
        tmp_path, small_plan, capsys):
    results = tmp_path / "results"
    _write(results, small_plan)
    args = [f"results_dir={results}", *LAUNCH]
    assert plan.status(results, small_plan)["done"] == 12
    for jobs in ("0", "abc"):
        assert plan.main([*args, f"jobs={jobs}"]) == 2
        assert capsys.readouterr().err.strip() == (f"error: jobs must be a positive integer, "
                                                   f"got {jobs!r}")
    first = results / small_plan.runs[0]["path"]
    first.write_text(first.read_text()[:40])  # cut short by an interrupted copy
    assert plan.main(args) == 2
    assert "is not a readable run record" in capsys.readouterr().err
    first.unlink()
    assert plan.status(results, small_plan)["done"] == 11
    [manifest] = (results / plan.PLANS).glob("*.json")
    manifest.write_text(manifest.read_text()[:100])
    assert plan.main(args) == 2
    assert "is not a readable plan" in capsys.readouterr().err


def test_plan_sums_the_core_hours_its_done_runs_recorded(tmp_path, small_plan):
    """Training, Fisher and evaluation seconds times the run's torch threads, over the success
    records the plan names; failures and missing runs add nothing."""
    from childtune.study import progress

    measured = {1: (100.0, 20.0, 5.0, 1), 2: (200.0, 0.0, 7.0, 2)}   # train, fisher, eval, threads
    expected = 0.0
    for run in small_plan.runs:
        ident, seed = run["identity"], run["identity"]["seed"]
        if seed == 3 or ident["task"] != "rte":
            continue
        train, fisher, evaluate, threads = measured[seed]
        records.write_record(tmp_path, fake_record(
            ident, 0.6, timings={"train_seconds": train, "fisher_seconds": fisher,
                                 "eval_seconds": evaluate},
            environment={"torch_threads": threads}))
        expected += (train + fisher + evaluate) * threads
    failed = next(r["identity"] for r in small_plan.runs if r["identity"]["seed"] == 3)
    records.write_record(tmp_path, fake_failure(failed, "nan_loss", "loss is nan"))
    status = progress.status(tmp_path, small_plan)
    assert status["recorded_hours"] == pytest.approx(expected / 3600)
    assert f"({expected / 3600:.1f} CPU-h recorded)" in progress.describe(tmp_path, small_plan, 2)


def test_plan_scales_its_estimate_by_the_speed_its_protocols_done_runs_measured(tmp_path,
                                                                                 small_plan):
    """Measured over estimated seconds (the overhead out of both) of the protocol's done
    runs; runs of another protocol, reference rows (no training) and failures do not count."""
    from childtune.study import progress

    protocol = {"name": "cpu", "train_seconds": {"rte": 100}, "overhead_seconds": 50,
                "train_sizes": {"rte": 1000}}

    def config(variant: dict, name: str = "cpu") -> dict:
        return {"study": "main", "protocol": {**protocol, "name": name},
                "task": {"name": "rte"}, "data": {"n_train": None},
                "trainer": {"epochs": 3}, "variant": variant}
    vanilla = {"mask": "none", "name": "vanilla"}
    assert progress.estimate(config(vanilla)) == 150
    assert progress.estimate(config({**vanilla, "reference": True})) == 50   # was 150
    assert progress.speed_ratio(tmp_path, "cpu") is None   # no done run: no second estimate
    for seed, (train, evaluate) in {1: (120.0, 10.0), 2: (170.0, 10.0)}.items():
        records.write_record(tmp_path, fake_record(
            fake_identity(seed=seed), 0.6, config=config(vanilla),
            timings={"train_seconds": train, "fisher_seconds": 0.0, "eval_seconds": evaluate}))
    slow = {"train_seconds": 900.0, "fisher_seconds": 0.0, "eval_seconds": 10.0}
    records.write_record(tmp_path, fake_record(fake_identity(seed=3), 0.6,
                                               config=config(vanilla, "other"), timings=slow))
    records.write_record(tmp_path, fake_record(
        fake_identity(seed=4, variant="reference"), 0.5,
        config=config({**vanilla, "reference": True}), timings={}))
    records.write_record(tmp_path, fake_failure(fake_identity(seed=5), "nan_loss", "nan",
                                                config=config(vanilla)))
    assert progress.speed_ratio(tmp_path, "cpu") == (pytest.approx(310 / 200), 2)
    line = progress.describe(tmp_path, small_plan, 2)
    hours = progress.status(tmp_path, small_plan)["cpu_hours"]
    assert (f"; x1.55 at the speed of the 2 done cpu runs: {hours * 1.55:.1f} CPU-hours, "
            f"~{hours * 1.55 / 2:.1f} h wall)") in line
