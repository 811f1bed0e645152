"""The prune ablation reuses CT_D's trained model (prune.py) instead of training again."""
from __future__ import annotations

import pytest

from childtune import checkpoints, records
from childtune.errors import UserError
from childtune.run import prune
from omegaconf import OmegaConf

from conftest import compose


def _resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(*overrides), resolve=True)


@pytest.mark.parametrize("extra", [[], ["task=cola"], ["variant.p=0.2", "regularizer=mixout"]])
def test_ct_d_config_names_the_ct_d_run_of_the_same_settings(extra):
    pruned = _resolved("variant=prune", *extra)
    ct_d = _resolved("variant=child_tuning_d", *extra)
    assert records.identity(prune.ct_d_config(pruned)) == records.identity(ct_d)
    assert records.identity(pruned)["config_hash"] != records.identity(ct_d)["config_hash"]


def test_prune_evaluates_the_kept_ct_d_model_and_trains_nothing(run_tiny, tmp_path):
    ct_d = run_tiny("variant=child_tuning_d", "runtime.keep_for_prune=true")
    kept = checkpoints.path(tmp_path / "cache", prune.MODELS, ct_d["identity"])
    assert kept.is_file()

    reused = run_tiny("variant=prune", "runtime.keep_for_prune=true")
    assert reused["prune"] == {"ct_d_record": str(records.record_path("", ct_d["identity"])),
                               "model": "kept CT_D model", "before_prune_equals_ct_d_record": True}
    assert reused["metrics_before_prune"] == ct_d["metrics"]
    assert reused["timings"]["train_seconds"] == 0.0
    assert reused["train"]["batch_order_sha256"] == ct_d["train"]["batch_order_sha256"]
    assert reused["train"]["steps"] == ct_d["train"]["steps"] > 0

    # Without the kept model the prune run trains CT_D itself: the very same numbers.
    kept.unlink()
    trained = run_tiny("variant=prune", "force=true")
    assert trained["prune"]["model"] == "trained here"
    assert trained["prune"]["before_prune_equals_ct_d_record"] is True
    assert trained["timings"]["train_seconds"] > 0
    assert trained["metrics"] == reused["metrics"]
    assert trained["train"]["last_loss"] == ct_d["train"]["last_loss"]


def test_only_ct_d_runs_keep_their_model(run_tiny, tmp_path):
    record = run_tiny("variant=random_mask", "runtime.keep_for_prune=true")
    assert not checkpoints.path(tmp_path / "cache", prune.MODELS, record["identity"]).exists()
    assert not (tmp_path / "cache" / prune.MODELS).exists()


def test_keep_for_prune_needs_a_cache_dir():
    config = _resolved("variant=child_tuning_d", "runtime.keep_for_prune=true",
                       "runtime.cache_dir=null")
    with pytest.raises(UserError, match="runtime.cache_dir"):
        prune.check(config)


def test_main_and_ablation_studies_keep_ct_d_models():
    for study in ("main", "ablation"):
        assert compose(f"experiment={study}").runtime.keep_for_prune is True
