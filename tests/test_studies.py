"""Every study config composes under both protocols; plans expand the sweeps as Hydra does;
runs shared between studies have one identity; existing runs keep theirs."""
from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from childtune import jobs, records
from childtune.study import plan

# Planned runs per (study, protocol): tasks x variants x [sizes | p values] x seeds.
EXPECTED = {
    ("main", "cpu"): 4 * 3 * 5, ("main", "paper"): 4 * 3 * 10,
    ("main_tuned_lr", "cpu"): 2 * 3 * 5, ("main_tuned_lr", "paper"): 4 * 3 * 10,
    ("ablation", "cpu"): 4 * 5 * 5, ("ablation", "paper"): 4 * 5 * 10,
    ("lr_grid", "cpu"): 4 * 3 * 1, ("lr_grid", "paper"): 4 * 3 * 1,
    ("lr_grid_variants", "cpu"): 2 * 3 * 3, ("lr_grid_variants", "paper"): 4 * 3 * 4,
    ("low_resource", "cpu"): 4 * 3 * 3 * 5, ("low_resource", "paper"): 4 * 3 * 3 * 10,
    ("p_sweep", "cpu"): 2 * 2 * 10 * 3, ("p_sweep", "paper"): 4 * 2 * 10 * 10,
    ("domain_transfer", "cpu"): 2 * 3 * 5, ("domain_transfer", "paper"): 1 * 3 * 10,
    ("task_transfer", "cpu"): 3 * 3 * 5, ("task_transfer", "paper"): 3 * 3 * 10,
    ("prior_methods", "cpu"): 4 * 8 * 5, ("prior_methods", "paper"): 4 * 8 * 10,
    ("combinations", "cpu"): 4 * 12 * 5, ("combinations", "paper"): 4 * 12 * 10,
    ("reference_rows", "cpu"): 4, ("reference_rows", "paper"): 4,
    ("low_resource_sizes", "cpu"): 4 * 4 * 2, ("low_resource_sizes", "paper"): 4 * 4 * 2,
}


def test_every_study_has_expectations():
    assert {s for s, _ in EXPECTED} == set(plan.studies())


@pytest.mark.parametrize("study,protocol", sorted(EXPECTED))
def test_every_study_composes_for_both_protocols(study, protocol):
    from childtune.run import train, transfer

    planned = plan.make_plan([f"experiment={study}", f"protocol={protocol}"], identities=False)
    assert planned.study == study and planned.protocol == protocol
    assert len(planned.runs) == EXPECTED[(study, protocol)]
    assert len({tuple(r["job"]) for r in planned.runs}) == len(planned.runs)
    for run in (planned.runs[0], planned.runs[-1]):
        config = jobs.resolved(run["job"])
        train.check_config(config)
        transfer.check(config)
        assert config["study"] == study
        assert records.identity(config)["model"] == ("minilm" if protocol == "cpu"
                                                     else "bert-large-cased")


def test_a_command_line_sweep_wins_over_the_protocol_seeds():
    planned = plan.make_plan(["experiment=ablation", "protocol=cpu", "seed=1,2"],
                             identities=False)
    assert len(planned.runs) == 4 * 5 * 2
    assert {r["overrides"]["seed"] for r in planned.runs} == {1, 2}
    planned = plan.make_plan(["experiment=low_resource", "protocol=cpu", "data.n_train=64"],
                             identities=False)
    assert {r["overrides"]["data.n_train"] for r in planned.runs} == {64}


def _identity(*overrides: str) -> dict:
    return records.identity(jobs.resolved(list(overrides)))


def test_runs_shared_between_studies_have_one_identity():
    def path(*overrides):
        return records.record_path("", _identity("protocol=cpu", "seed=1", *overrides))

    main_d = path("experiment=main", "task=rte", "variant=child_tuning_d")
    assert path("experiment=ablation", "task=rte", "variant=child_tuning_d") == main_d
    assert path("experiment=low_resource", "task=rte", "variant=child_tuning_d",
                "data.n_train=1000") == main_d
    # p_sweep at a task's own p (MRPC: p_D=0.1) is main's run; another p is not.
    main_mrpc = path("experiment=main", "task=mrpc", "variant=child_tuning_d")
    assert path("experiment=p_sweep", "task=mrpc", "variant=child_tuning_d",
                "variant.p=0.1") == main_mrpc
    assert path("experiment=p_sweep", "task=mrpc", "variant=child_tuning_d",
                "variant.p=0.2") != main_mrpc


def test_main_tuned_lr_runs_each_variant_at_its_own_rate_and_else_is_main():
    tuned = jobs.resolved(["protocol=cpu"])["protocol"]["tuned_lr"]
    cpu = plan.make_plan(["experiment=main_tuned_lr", "protocol=cpu"])
    assert len(cpu.runs) == 30
    for run in cpu.runs:
        ident = run["identity"]
        assert ident["lr"] == tuned[ident["variant"]][ident["task"]]
    # The paper protocol has no tuned rates: the study plans exactly main's runs.
    paper = {r["path"] for r in plan.make_plan(["experiment=main_tuned_lr", "protocol=paper"]).runs}
    assert paper == {r["path"] for r in plan.make_plan(["experiment=main", "protocol=paper"]).runs}


def test_a_task_transfer_run_starts_from_a_main_run():
    planned = plan.make_plan(["experiment=task_transfer", "protocol=cpu", "task=rte",
                              "variant=vanilla", "seed=1"])
    (run,) = planned.runs
    (source,) = planned.sources
    main = records.record_path("", _identity("experiment=main", "protocol=cpu", "task=mrpc",
                                             "variant=vanilla", "seed=1"))
    assert run["source"] == source["path"] == str(main)
    assert run["transfer"] == {"source_task": "mrpc"}
    assert source["encoder"].endswith(str(main.with_suffix(".pt")))
    assert run["path"] != str(records.record_path("", _identity(
        "experiment=main", "protocol=cpu", "task=rte", "variant=vanilla", "seed=1")))


COMBINATION_PAIRS = [("pretrained_decay", "child_tuning_d", "pretrained_decay"),
                     ("top_k", "child_tuning_d_top_k", "none"),
                     ("mixout", "child_tuning_d", "mixout"),
                     ("recadam", "child_tuning_d", "recadam"),
                     ("r3f", "child_tuning_d", "r3f")]


def test_combinations_has_a_row_per_method_each_next_to_its_ct_d_row():
    planned = plan.make_plan(["experiment=combinations", "protocol=cpu"])
    methods = list(dict.fromkeys(r["overrides"]["method"] for r in planned.runs))
    assert methods == ["vanilla", "child_tuning_d", *(m for method, *_ in COMBINATION_PAIRS
                                                       for m in (method, f"{method}_ct_d"))]
    assert len(planned.runs) == 12 * 4 * 5 == len({r["path"] for r in planned.runs})
    assert planned.swept == ["seed", "task", "method"]
    made_by = {(r["overrides"]["method"], r["identity"]["task"], r["identity"]["seed"]):
               (r["identity"]["variant"], r["identity"]["regularizer"], r["path"])
               for r in planned.runs}
    for method, variant, regularizer in COMBINATION_PAIRS:
        assert made_by[(f"{method}_ct_d", "rte", 1)][:2] == (variant, regularizer)
    # A method + CT_D run is the run `variant=child_tuning_d regularizer=X` has always named.
    old = records.record_path("", _identity("experiment=combinations", "protocol=cpu",
                                            "task=rte", "seed=1", "variant=child_tuning_d",
                                            "regularizer=mixout"))
    assert made_by[("mixout_ct_d", "rte", 1)][2] == str(old)


# Pinned identities: (old hash, current hash). The old ones are the records the CPU sweep wrote
# before the recipe fixes; since then the default optimizer is torch's fused AdamW
# (`trainer.optimizer=adamw_fused`, other rounding than the old `adamw`), and
# `trainer.precision` and `model.no_decay` are part of every identity. So no old record can be
# taken for a current run, and restoring the three old settings gives back exactly the old hash.
OLD_RECIPE = ("trainer.optimizer=adamw", "~trainer.precision", "~model.no_decay")
EXISTING = [("2e-05", "05966e7a4c", "8bae165e0e"), ("5e-05", "5b9a48a281", "074339a036"),
            ("0.0001", "de3ebc340b", "aef2b0db88")]


@pytest.mark.parametrize("lr,old_hash,config_hash", EXISTING)
def test_existing_runs_keep_their_identity(lr, old_hash, config_hash):
    run = ("seed=100", "task=cola", "variant=vanilla", f"trainer.lr={lr}", "experiment=lr_grid",
           "protocol=cpu")
    assert _identity(*run)["config_hash"] == config_hash != old_hash
    assert _identity(*run, *OLD_RECIPE)["config_hash"] == old_hash


# The CPU sweep's CT_D records (main), as above; their masks also came from a dropout-free
# Fisher pass (now variant.fisher_mode=train, which is part of their identity).
EXISTING_CT_D = [("cola", "4494756525", "0b748951d8"), ("rte", "4e44843852", "acc78985fb"),
                 ("mrpc", "f6b3aa0a17", "cea239494b"), ("stsb", "8ad502aeb7", "dd3ba2588a")]


@pytest.mark.parametrize("task,old_hash,config_hash", EXISTING_CT_D)
def test_existing_ct_d_runs_changed_identity_with_the_recipe_only(task, old_hash, config_hash):
    run = ("seed=1", f"task={task}", "variant=child_tuning_d", "experiment=main", "protocol=cpu")
    assert _identity(*run)["config_hash"] == config_hash != old_hash
    assert _identity(*run, *OLD_RECIPE, "~variant.fisher_mode")["config_hash"] == old_hash
    dropout_free = _identity(*run, "variant.fisher_mode=eval")["config_hash"]
    assert dropout_free not in (config_hash, old_hash)


def test_a_new_section_whose_options_are_off_keeps_the_hash():
    config = {"model": {"name": "m"}, "seed": 1, "trainer": {"lr": 1e-4}}
    off = {**config, "transfer": {"source_task": None, "eval_tasks": None}}
    on = {**config, "transfer": {"source_task": "mrpc", "eval_tasks": None}}
    assert records.config_hash(off) == records.config_hash(config) != records.config_hash(on)


def test_a_saved_plan_is_reused_while_the_configs_are_unchanged(tmp_path, monkeypatch):
    launch = ["experiment=main", "protocol=cpu", "model=tiny", "task=rte", "variant=vanilla",
              "seed=1,2"]
    first = plan.cached_plan(tmp_path, launch)
    assert [p.name for p in plan.read_manifests(tmp_path)] == [first.name]

    def no_composing(*_):
        raise AssertionError("composed again")

    monkeypatch.setattr(plan, "make_plan", no_composing)
    again = plan.cached_plan(tmp_path, [*launch, f"results_dir={tmp_path}"])
    assert again.to_json() == first.to_json()
    monkeypatch.setattr(plan, "conf_sha", lambda: "changed")
    with pytest.raises(AssertionError, match="composed again"):
        plan.cached_plan(tmp_path, launch)


def test_a_bad_study_is_one_clear_error():
    with pytest.raises(plan.UserError, match="cannot compose experiment=nope"):
        plan.make_plan(["experiment=nope", "protocol=cpu"])


@pytest.mark.parametrize("model,k", [("tiny", 1), ("minilm", 3)])
def test_every_combinations_method_passes_the_config_checks_on_each_model(model, k):
    """top_k's k defaults to the model's `top_k` (tiny: 1 of its 2 layers), else 3, so the
    combinations multirun runs unchanged on model=tiny."""
    from childtune.run.train import check_config

    combos = plan.make_plan(["experiment=combinations", f"model={model}", "task=rte", "seed=1"])
    assert len(combos.runs) == 12
    for run in combos.runs:
        config = jobs.resolved([f"{key}={value}" for key, value in run["overrides"].items()])
        check_config(config)
        if run["overrides"]["method"].startswith("top_k"):
            assert config["variant"]["k"] == k


def test_an_existing_ct_d_mask_keeps_its_cache_key():
    """The key of the CPU sweep's CT_D mask of cola seed 101 (lr_grid_variants, cpu_full)
    from the parts train.py gives mask_cache (its record's `mask.cache_key`)."""
    from childtune import mask_cache

    variant = {"count": None, "decay_frozen": True, "fisher_mode": "train",
               "fisher_recipe": "official", "fisher_seed": None, "k": None, "mask": "fisher_top",
               "name": "child_tuning_d", "p": 0.2, "prune": False, "scope": "layers"}
    cache_parts = {
        "model": {"lr": 5e-05, "name": "minilm", "no_decay": ["bias", "LayerNorm.weight"],
                  "path": None, "source": "embedded"},
        "task": "cola", "data": {"max_seq_length": 128, "n_train": None, "subsample_seed": 0},
        "train_sha256": "ff690706d5712d2536f7603513811377454b64d724d4c7a4fff0432fbfbe7a00",
        "batch_size": 16}
    parts = mask_cache.key_parts(variant, cache_parts, seed=101, max_grad_norm=1.0)
    assert mask_cache.key(parts) == "88ac256f10e84f44"
    random = mask_cache.key_parts({**variant, "mask": "random"}, cache_parts, 101, 1.0)
    assert set(random) == {"model", "seed", "mask", "p", "scope", "fisher_seed"}


EXTEND_RTE = '++protocol.studies.lr_grid_variants.extra_sweeps=["task=rte trainer.lr=5.0e-4"]'


@pytest.mark.parametrize("narrowing,extended", [
    ([], True), (["task=cola,rte"], True), (["seed=101"], True),
    (["task=cola"], False), (["trainer.lr=1e-4"], False)])
def test_an_extra_sweep_extends_the_grid_on_one_task(narrowing, extended):
    base = plan.make_plan(["experiment=lr_grid_variants", "protocol=cpu_full", *narrowing,
                           "protocol.studies.lr_grid_variants.extra_sweeps=[]"],
                          identities=False)
    grown = plan.make_plan(["experiment=lr_grid_variants", "protocol=cpu_full", EXTEND_RTE,
                            *narrowing], identities=False)

    def swept(run: dict) -> dict:
        return {k: v for k, v in run["overrides"].items() if "extra_sweeps" not in k}

    added = [swept(r) for r in grown.runs if swept(r) not in [swept(b) for b in base.runs]]
    assert len(grown.runs) == len(base.runs) + len(added)
    if not extended:
        assert added == [] and grown.extra == [] and "&&" not in grown.command
        return
    seeds = 1 if narrowing == ["seed=101"] else 2
    assert len(added) == 3 * seeds                                  # variants x seeds
    assert {(r["task"], r["trainer.lr"]) for r in added} == {("rte", 5e-4)}
    assert grown.extra == [["task=rte", "trainer.lr=5.0e-4"]]
    second = grown.launches[1]
    assert grown.command.endswith("&& python -m childtune.train -m " + " ".join(
        shlex.quote(o) for o in second))
    assert second[-2:] == ["task=rte", "trainer.lr=5.0e-4"]
    assert not any(o.startswith("task=") for o in second[:-2])  # the study's task= replaced


def test_the_extra_sweeps_own_launch_plans_only_its_runs():
    """plan launch=true runs an extra sweep as its own multirun (the study's overrides and the
    extra sweep's): that multirun's plan is those runs, not the study's grid again."""
    own = plan.make_plan(["experiment=lr_grid_variants", "protocol=cpu_full", EXTEND_RTE,
                          "task=rte", "trainer.lr=5.0e-4"], identities=False)
    assert own.extra == [] and len(own.runs) == 3 * 2


def test_plan_launches_the_study_then_each_extra_sweep(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(plan.subprocess, "run",
                        lambda command: commands.append(command) or SimpleNamespace(returncode=0))
    assert plan.main(["experiment=lr_grid_variants", "protocol=cpu_full", "model=tiny",
                      "task=cola,rte", "variant=vanilla", "seed=101", EXTEND_RTE,
                      f"results_dir={tmp_path}", "launch=true"]) == 0
    assert [c[c.index("-m", 2) + 1:] for c in commands] == [
        [*launch, f"results_dir={tmp_path}", "hydra/launcher=parallel"]
        for launch in plan.cached_plan(tmp_path, [
            "experiment=lr_grid_variants", "protocol=cpu_full", "model=tiny", "task=cola,rte",
            "variant=vanilla", "seed=101", EXTEND_RTE]).launches]
    assert len(commands) == 2 and commands[1][-4:-2] == ["task=rte", "trainer.lr=5.0e-4"]
    (saved,) = plan.read_manifests(tmp_path)
    assert len(saved.runs) == 2 * 4 + 1


@pytest.mark.parametrize("entry,message", [
    ("model=tiny", "must set keys the study sweeps .* it sets model"),
    ("task=(rte", "is not a list of overrides"),
    ("", "must set keys the study sweeps .* it sets nothing")])
def test_a_bad_extra_sweep_is_one_clear_error(entry, message):
    with pytest.raises(plan.UserError, match=message):
        plan.make_plan(["experiment=lr_grid_variants", "protocol=cpu_full",
                        f'++protocol.studies.lr_grid_variants.extra_sweeps=["{entry}"]'])


def test_a_multirun_inside_a_saved_plan_saves_no_plan_of_its_own(tmp_path, capsys):
    from omegaconf import OmegaConf

    whole = ["experiment=main", "protocol=cpu", "model=tiny", "task=rte,mrpc", "seed=1,2"]
    plan.write_manifest(tmp_path, plan.make_plan(whole))

    def multirun(*overrides):
        config = OmegaConf.create({"hydra": {"overrides": {"task": list(overrides)}},
                                   "results_dir": str(tmp_path)})
        plan.ManifestCallback().on_multirun_start(config)
        return sorted(p.name for p in (tmp_path / "plans").glob("*.json"))

    assert len(multirun(*whole)) == 1                                      # the same plan
    assert len(multirun(*whole[:3], "task=rte", "seed=1,2")) == 1          # part of it
    assert "part of the saved plan main-cpu-" in capsys.readouterr().out
    assert len(multirun(*whole[:3], "task=rte,cola", "seed=1,2")) == 2     # more than it
