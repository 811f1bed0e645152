"""A run's numbers depend on its identity only: not on progress bars, not on whether its mask
came from the cache; and a cached mask is never reused for other data."""
from __future__ import annotations

import pytest
import torch

from childtune.method import variants

from conftest import random_batches, tiny_model

VARIANTS = ("vanilla", "child_tuning_f", "top_k", "child_tuning_d", "random_mask",
            "lowest_fisher", "prune", "child_tuning_d_top_k")
FIXED = ("child_tuning_d", "random_mask", "lowest_fisher", "prune", "child_tuning_d_top_k")
TIMING = ("source", "fisher_seconds", "computed_fisher_seconds")


def numbers(record: dict) -> dict:
    """Everything in a record that the run's identity must decide."""
    return {"identity": record["identity"], "metrics": record["metrics"],
            "metrics_before_prune": record.get("metrics_before_prune"),
            "headline": record["headline"], "train": record["train"],
            "mask": {k: v for k, v in record["mask"].items() if k not in TIMING},
            "data": record["data"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_progress_bars_and_the_mask_cache_change_no_number(run_tiny, tmp_path, variant):
    def run(progress: bool, cache: str) -> dict:
        return run_tiny(f"variant={variant}", f"runtime.progress={str(progress).lower()}",
                        f"runtime.cache_dir={tmp_path / cache}", "force=true")

    cold_off, cold_on = run(False, "cache_a"), run(True, "cache_b")
    runs = [cold_off, cold_on]
    if variant in FIXED:   # each cache now holds the other progress setting's mask
        warm_off, warm_on = run(False, "cache_b"), run(True, "cache_a")
        assert cold_off["mask"]["source"] == cold_on["mask"]["source"] == "computed"
        assert warm_off["mask"]["source"] == warm_on["mask"]["source"] == "reused"
        runs += [warm_off, warm_on]
    expected = numbers(cold_off)
    for record in runs[1:]:
        assert numbers(record) == expected
    assert expected["train"]["steps"] == 5 and expected["train"]["batch_order_sha256"]
    assert variant not in FIXED or len(expected["mask"]["sha256"]) == 64


def test_a_cache_hit_leaves_the_random_streams_as_a_miss_does(tmp_path):
    model = tiny_model()
    variant = {"mask": "fisher_top", "p": 0.3, "scope": "layers", "fisher_seed": None,
               "fisher_recipe": "official", "fisher_mode": "train"}

    def build():
        torch.manual_seed(7)
        child = variants.build(variant, model, fisher_loader=lambda _: random_batches(3),
                               max_grad_norm=1.0, seed=1, cache_dir=tmp_path, cache_parts={})
        return child, torch.get_rng_state()

    (miss, after_miss), (hit, after_hit) = build(), build()
    assert (miss.info["source"], hit.info["source"]) == ("computed", "reused")
    assert torch.equal(after_miss, after_hit)
    torch.manual_seed(7)
    assert torch.equal(after_miss, torch.get_rng_state())  # the pass drew from its own streams
    assert miss.info["sha256"] == hit.info["sha256"]


def test_a_changed_label_gets_a_new_mask_and_the_record_names_the_data(run_tiny, tiny_data):
    first = run_tiny("variant=child_tuning_d")
    again = run_tiny("variant=child_tuning_d", "force=true")
    assert (first["mask"]["source"], again["mask"]["source"]) == ("computed", "reused")
    assert first["data"]["files"] == {"train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv"}
    assert str(tiny_data) not in str(first["data"]) and len(first["data"]["sha256"]["train"]) == 64

    train = tiny_data / "glue" / "RTE" / "train.tsv"
    lines = train.read_text().splitlines()
    lines[1] = lines[1].replace("not_entailment", "entailment")   # relabel one example
    train.write_text("\n".join(lines) + "\n")
    relabelled = run_tiny("variant=child_tuning_d", "force=true")
    assert relabelled["mask"]["source"] == "computed"
    assert relabelled["mask"]["cache_key"] != first["mask"]["cache_key"]
    assert relabelled["data"]["sha256"]["train"] != first["data"]["sha256"]["train"]
    assert relabelled["data"]["sha256"]["dev"] == first["data"]["sha256"]["dev"]
    assert relabelled["identity"] == first["identity"]   # same settings, other data


def test_the_data_fingerprint_sees_texts_labels_and_order():
    from childtune.run.data import Split, fingerprint

    split = Split([("a b", "c"), ("d", "e f")], [0, 1])
    same = Split([("a b", "c"), ("d", "e f")], [0, 1])
    others = [Split([("a b", "c"), ("d", "e f")], [1, 1]),      # a label
              Split([("a b", "c"), ("d", "e g")], [0, 1]),      # a text
              Split([("d", "e f"), ("a b", "c")], [1, 0]),      # the order
              Split([("a", "b c"), ("d", "e f")], [0, 1])]      # where one text ends
    assert fingerprint(split) == fingerprint(same)
    assert len({fingerprint(s) for s in [split, *others]}) == 5
