"""The variants through the train entrypoint (tiny model, in-process)."""
from __future__ import annotations

import pytest

from childtune.errors import UserError
from childtune.method.variants import check_variant

from conftest import compose


def test_vanilla_and_d_see_the_same_batches_and_d_with_p1_equals_vanilla(run_tiny):
    vanilla = run_tiny("variant=vanilla")
    d = run_tiny("variant=child_tuning_d", "variant.p=0.3")
    d_full = run_tiny("variant=child_tuning_d", "variant.p=1.0")
    assert d["train"]["batch_order_sha256"] == vanilla["train"]["batch_order_sha256"]
    # The Fisher pass draws from its own random streams: with every entry kept, CT_D trains
    # exactly like vanilla (same dropout masks, same batches, same updates).
    assert d_full["metrics"] == vanilla["metrics"]
    assert d_full["train"]["last_loss"] == vanilla["train"]["last_loss"]
    assert d["train"]["last_loss"] != vanilla["train"]["last_loss"]


def test_f_with_p1_equals_vanilla_end_to_end(run_tiny):
    vanilla = run_tiny("variant=vanilla")
    f = run_tiny("variant=child_tuning_f", "variant.p=1.0")
    assert f["train"]["last_loss"] == vanilla["train"]["last_loss"]
    assert f["metrics"] == vanilla["metrics"]
    assert f["mask"]["observed_keep_rate"] == 1.0


@pytest.mark.parametrize("variant,p", [("child_tuning_f", 0.3), ("child_tuning_d", 0.3),
                                       ("random_mask", 0.3), ("lowest_fisher", 0.3),
                                       ("prune", 0.3)])
def test_masked_variants_record_their_mask(run_tiny, variant, p):
    record = run_tiny(f"variant={variant}")
    assert record["identity"]["variant"] == variant and record["identity"]["p"] == p
    mask = record["mask"]
    if variant == "child_tuning_f":
        assert mask["scope"] == "all" and 0.2 < mask["observed_keep_rate"] < 0.4
        return
    stats = mask["statistics"]
    assert mask["scope"] == "layers" and stats["kept"] == round(p * stats["masked_entries"])
    assert set(stats["per_layer"]) == {"0", "1"} and "ffn_in" in stats["per_module"]
    assert mask["source"] in ("computed", "reused")
    if variant == "prune":
        assert set(record["metrics_before_prune"]) == set(record["metrics"]) == {"dev"}
        assert record["headline"]["value"] == record["metrics"]["dev"]["accuracy"]


def test_task_default_p_and_override(run_tiny):
    assert compose("task=mrpc", "variant=child_tuning_f").variant.p == 0.4
    assert compose("task=mrpc", "variant=child_tuning_d").variant.p == 0.1
    assert compose("task=cola", "variant=lowest_fisher").variant.p == 0.2
    assert compose("task=sst2", "variant=prune").variant.p == 0.3
    assert compose("task=rte", "variant=child_tuning_d", "variant.p=0.5").variant.p == 0.5


def test_mask_cache_is_reused_with_the_same_key_only(run_tiny):
    first = run_tiny("variant=child_tuning_d", "seed=3")
    again = run_tiny("variant=child_tuning_d", "seed=3", "force=true")
    other = run_tiny("variant=child_tuning_d", "seed=3", "variant.p=0.2")
    assert first["mask"]["source"] == "computed" and first["mask"]["fisher_seconds"] > 0
    assert again["mask"]["source"] == "reused" and again["mask"]["fisher_seconds"] == 0
    assert again["mask"]["cache_key"] == first["mask"]["cache_key"] != other["mask"]["cache_key"]
    assert again["metrics"] == first["metrics"]


def test_official_warmup_switch_drops_warmup_for_child_tuning_only(run_tiny):
    assert run_tiny("variant=vanilla")["train"]["warmup_steps"] > 0
    assert run_tiny("variant=child_tuning_d")["train"]["warmup_steps"] > 0
    assert run_tiny("variant=child_tuning_d", "trainer.official_warmup=true",
                    "trainer.epochs=1")["train"]["warmup_steps"] == 0
    assert run_tiny("variant=vanilla", "trainer.official_warmup=true")["train"]["warmup_steps"] > 0


@pytest.mark.parametrize("bad", [0, -0.2, 1.5, float("nan"), "abc", True, None])
def test_bad_p_is_rejected_before_training(bad):
    with pytest.raises(UserError, match=r"variant.p must be a number in \(0, 1\]"):
        check_variant({"mask": "fisher_top", "p": bad, "scope": "layers",
                       "fisher_recipe": "official", "fisher_mode": "train"})


def test_bad_p_from_the_command_line_fails_without_a_record(run_tiny, tmp_path):
    for value in ("0", "-1", "1.01", "nan", "half"):
        with pytest.raises(UserError, match="variant.p"):
            run_tiny("variant=child_tuning_f", f"variant.p={value}")
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "cache").exists()
