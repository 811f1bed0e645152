"""Issue 19's faults on the run side: non-finite metrics or weights are failed runs, never
successes; one run has one identity however its numbers are spelled; the valid keys are named."""
from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from childtune import records
from childtune.errors import UserError
from childtune.run import guard, loop, train, validate
from reliability_helpers import compose_cfg, overrides, records_under, write_rte


def _guarded_failure(tmp_path, monkeypatch, capsys, patch) -> dict:
    data_dir, results = write_rte(tmp_path / "data"), tmp_path / "results"
    patch(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        guard.guarded_run(compose_cfg(overrides(data_dir, results)), train.run,
                          train.rerun_command)
    assert exit_.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("failed: tiny rte vanilla seed=1: not_finite")
    [path] = records_under(results)
    assert path.name == "seed1.failed.json"
    return json.loads(path.read_text())


def test_a_nan_dev_score_is_a_failed_run_not_a_success(tmp_path, monkeypatch, capsys):
    real = loop.evaluate

    def nan_scores(monkeypatch):
        def evaluate(*args, **kwargs):
            metrics, losses, seconds = real(*args, **kwargs)
            return ({split: {k: math.nan for k in m} for split, m in metrics.items()}, losses,
                    seconds)
        monkeypatch.setattr(loop, "evaluate", evaluate)

    record = _guarded_failure(tmp_path, monkeypatch, capsys, nan_scores)
    assert (record["status"], record["reason"]) == ("failed", "not_finite")
    assert "metrics.dev.accuracy is nan" in record["error"]


def test_weights_that_blow_up_after_the_last_loss_check_fail_the_run(tmp_path, monkeypatch,
                                                                      capsys):
    real = loop.train

    def blow_up(monkeypatch):
        def train_then_blow_up(model, *args, **kwargs):
            out = real(model, *args, **kwargs)
            with torch.no_grad():
                next(model.parameters()).fill_(math.inf)  # the last step's update overflowed
            return out
        monkeypatch.setattr(loop, "train", train_then_blow_up)

    record = _guarded_failure(tmp_path, monkeypatch, capsys, blow_up)
    assert "trained weights hold NaN or inf" in record["error"]


@pytest.mark.parametrize("one, other", [
    (["variant=child_tuning_f", "variant.p=1"], ["variant=child_tuning_f", "variant.p=1.0"]),
    (["trainer.lr=1"], ["trainer.lr=1.0"]),
    (["trainer.max_grad_norm=1"], ["trainer.max_grad_norm=1.0"]),
    (["trainer.epochs=3.0"], ["trainer.epochs=3"]),
])
def test_one_run_has_one_identity_however_its_numbers_are_spelled(one, other):
    def ident(args):
        return records.identity(OmegaConf.to_container(compose_cfg(["model=tiny", *args]),
                                                       resolve=True))
    assert ident(one)["config_hash"] == ident(other)["config_hash"]


def test_the_default_identity_is_unchanged_by_number_normalisation():
    config = OmegaConf.to_container(compose_cfg(["model=tiny"]), resolve=True)
    assert isinstance(config["trainer"]["max_grad_norm"], float)  # 1.0 stays 1.0
    assert isinstance(config["trainer"]["epochs"], int)           # 3 stays 3
    from childtune.config_keys import canonical_numbers
    assert json.dumps(canonical_numbers(config), sort_keys=True) == json.dumps(config,
                                                                               sort_keys=True)


def test_an_unknown_key_names_the_valid_keys_of_its_section():
    config = OmegaConf.to_container(compose_cfg(["model=tiny", "+trainer.learning_rate=1e-3"]),
                                    resolve=True)
    with pytest.raises(UserError) as error:
        validate.check_config(config)
    message = str(error.value)
    assert "unknown config key 'trainer.learning_rate'" in message
    assert "valid keys under trainer: adam_betas, adam_eps," in message and " lr," in message


def test_every_study_config_has_only_known_keys():
    from childtune import jobs
    from childtune.study import plan

    for study in plan.studies():
        for protocol in ("cpu", "paper"):
            config = jobs.resolved([f"experiment={study}", f"protocol={protocol}"])
            assert validate.config_keys.unknown_keys(config) == [], (study, protocol)
