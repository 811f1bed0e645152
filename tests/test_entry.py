"""The entrypoint (train.run): one validation pass per run, before any work, and the hooks'
named points called once each, in the order hooks.RunHook writes them."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from childtune.run import data, distributed, hooks, prune, train, transfer, validate
from conftest import compose

POINTS = ["after_model", "builds_child", "after_child", "after_loaders", "replaces_training",
          "before_training", "after_training", "after_evaluation", "after_record"]


@pytest.fixture
def validations(monkeypatch):
    """Counts each half of the validation pass; data.load_splits notes how many had run."""
    calls = {"check_config": 0, "check_environment": 0, "before_data": []}
    for name in ("check_config", "check_environment"):
        real = getattr(validate, name)

        def counted(config, real=real, name=name):
            calls[name] += 1
            return real(config)
        monkeypatch.setattr(validate, name, counted)
    real_load = data.load_splits

    def load_splits(*args, **kwargs):
        calls["before_data"].append((calls["check_config"], calls["check_environment"]))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(data, "load_splits", load_splits)
    return calls


@pytest.mark.parametrize("variant", ["child_tuning_d", "reference"])
def test_a_run_validates_once_before_any_data_and_a_skipped_rerun_once(
        run_tiny, validations, variant):
    """Fails if the pass is skipped (0), runs twice (a module re-checking the config), or runs
    after the data is read."""
    run_tiny(f"variant={variant}")
    assert (validations["check_config"], validations["check_environment"]) == (1, 1)
    assert validations["before_data"] and set(validations["before_data"]) == {(1, 1)}
    run_tiny(f"variant={variant}")  # the record exists: skipped, after its own one pass
    assert (validations["check_config"], validations["check_environment"]) == (2, 2)


class Recording(hooks.RunHook):
    """Every point, noting its name, then doing what the default does."""

    def __init__(self, seen: list[str]):
        self.seen = seen
        for point in POINTS + ["reruns", "writes"]:
            default = getattr(hooks.RunHook, point)
            setattr(self, point, lambda ctx, p=point, d=default: (seen.append(p), d(self, ctx))[1])


def test_the_points_are_called_once_each_in_the_documented_order(run_tiny, monkeypatch):
    seen: list[str] = []
    real = train.chosen_hooks
    monkeypatch.setattr(train, "chosen_hooks",
                        lambda config: hooks.Hooks([*real(config), Recording(seen)]))
    record = run_tiny("variant=child_tuning_d")
    assert [p for p in seen if p != "writes"] == POINTS
    assert "writes" in seen and record["status"] == "success"
    seen.clear()
    run_tiny("variant=child_tuning_d")  # skipped: only asked whether it must rerun
    assert seen == ["reruns"]
    written = [name for name in vars(hooks.RunHook) if not name.startswith("_")]
    assert [p for p in written if p not in ("reruns", "writes")] == POINTS  # as written there
    assert sorted(written) == sorted(POINTS + ["reruns", "writes"])


def _config(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("model=tiny", *overrides), resolve=True)


@pytest.mark.parametrize("overrides, kinds", [
    ((), []),
    (("variant=prune",), [prune.PruneRun]),
    (("variant=child_tuning_d", "runtime.keep_for_prune=true"), [prune.KeepsModel]),
    (("variant=child_tuning_f", "runtime.keep_for_prune=true"), []),
    (("transfer.source_task=mrpc",), [transfer.TransferHook]),
    (("task=rte", "transfer.eval_tasks=[sick]"), [transfer.TransferHook]),
    (("runtime.save_encoder=true", "variant=prune"), [transfer.TransferHook, prune.PruneRun]),
])
def test_the_config_chooses_the_hooks(overrides, kinds):
    assert distributed.hook() is None  # not under torchrun
    assert [type(h) for h in train.chosen_hooks(_config(*overrides))] == kinds
