"""Transfer studies, training side: label spaces, encoder hand-over, and tiny end-to-end runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from childtune.errors import UserError
from childtune.run import transfer
from childtune.run.tasks import get_task

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_label_spaces():
    rte, sick, mnli = get_task("rte"), get_task("sick"), get_task("mnli")
    assert transfer.label_space(rte, sick) == transfer.BINARY
    assert transfer.label_space(sick, rte) == transfer.BINARY
    assert transfer.label_space(mnli, sick) == transfer.THREE_WAY
    # SICK: ENTAILMENT, NEUTRAL, CONTRADICTION
    assert transfer.to_space(sick, transfer.BINARY) == [0, 1, 1]
    assert transfer.to_space(sick, transfer.THREE_WAY) == [0, 1, 2]
    assert transfer.to_space(rte, transfer.BINARY) == [0, 1]
    with pytest.raises(UserError, match="has none"):
        transfer.label_space(rte, get_task("stsb"))


def _config(task="rte", **settings):
    return {"task": {"name": task}, "transfer": {"source_task": None, "eval_tasks": None,
                                                 **settings}}


def test_bad_transfer_settings_fail_early():
    transfer.check(_config(source_task="mrpc"))
    transfer.check(_config(eval_tasks=["rte", "sick"]))
    with pytest.raises(UserError, match="own task"):
        transfer.check(_config(source_task="rte"))
    with pytest.raises(UserError, match="unknown task"):
        transfer.check(_config(source_task="nope"))
    with pytest.raises(UserError, match="must be a list"):
        transfer.check(_config(eval_tasks="sick"))
    with pytest.raises(UserError, match="has none"):
        transfer.check(_config(task="cola", eval_tasks=["rte"]))


def test_the_encoder_moves_to_a_model_with_a_new_head(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from childtune.run import models

    cfg = OmegaConf.load(Path(SRC) / "childtune" / "conf" / "model" / "tiny.yaml")
    torch.manual_seed(0)
    source = models.load_model(cfg, num_labels=2)
    path = tmp_path / "enc.pt"
    transfer.save_encoder(source, path, {"task": "mrpc"})
    torch.manual_seed(1)
    target = models.load_model(cfg, num_labels=1)
    head_before = target.classifier.weight.clone()
    transfer.load_encoder(target, path)
    for name, value in source.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(value, target.state_dict()[name]), name
    assert torch.equal(target.classifier.weight, head_before)


def _train(tmp_path, *overrides):
    env = {**os.environ, "PYTHONPATH": SRC}
    command = [sys.executable, "-m", "childtune.train", "model=tiny", "data.n_train=32",
               "trainer.epochs=1", "runtime.progress=false", f"results_dir={tmp_path}",
               f"runtime.cache_dir={tmp_path / 'cache'}", *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def _record(tmp_path, task):
    (path,) = (tmp_path / "runs" / "tiny" / task).rglob("seed1.json")
    return path, json.loads(path.read_text())


@pytest.mark.integration
def test_task_transfer_trains_its_source_once(tmp_path):
    result = _train(tmp_path, "task=rte", "variant=child_tuning_d", "transfer.source_task=mrpc")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training the source run first" in result.stdout
    source_path, source = _record(tmp_path, "mrpc")
    _, target = _record(tmp_path, "rte")
    assert target["transfer"]["source_record"] == str(source_path.relative_to(tmp_path))
    assert target["transfer"]["source_identity"] == source["identity"]
    assert "transfer" not in source                  # the source is an ordinary run
    assert list((tmp_path / "cache" / "encoders").rglob("seed1.pt"))
    # Another target from the same source reuses its encoder.
    result = _train(tmp_path, "task=cola", "variant=child_tuning_d", "transfer.source_task=mrpc")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training the source run first" not in result.stdout


@pytest.mark.integration
def test_domain_transfer_evaluates_on_the_other_nli_task(tmp_path):
    result = _train(tmp_path, "task=rte", "variant=vanilla", "transfer.eval_tasks=[rte,sick]")
    assert result.returncode == 0, result.stderr[-2000:]
    _, record = _record(tmp_path, "rte")
    (name,) = record["transfer"]["eval"]
    sick = record["transfer"]["eval"]["sick"]
    assert name == "sick" and sick["split"] == "test" and sick["examples"] == 4906
    assert sick["label_space"] == ["entailment", "not_entailment"]
    assert 0.0 <= sick["accuracy"] <= 1.0
