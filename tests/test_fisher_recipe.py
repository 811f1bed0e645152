"""CT_D's Fisher pass and kept count against plain re-implementations of the official code
(RunxinXu/ChildTuning, ChildTuningD.calculate_fisher), with a model loaded the way users load
one: `from_pretrained` returns it in eval mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from childtune import encoder_layer_names, fisher_information, percentile_mask, top_p_mask
from childtune.method.selection import kept_count

from conftest import random_batches, tiny_model


def loaded_model(tmp_path):
    """A tiny BERT saved and loaded back: in eval mode, as a pretrained checkpoint is."""
    from transformers import AutoModelForSequenceClassification

    tiny_model().save_pretrained(tmp_path / "ckpt")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert not model.training
    return model


def official_fisher(model, batches, max_grad_norm=1.0, train=True):
    """calculate_fisher of the official code, written out again: train mode, per-tensor clip
    of each 'layer' parameter's gradient, grad**2 / N. (train=False: the same with dropout off,
    what this suite computed before the fix.)"""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if "layer" in n}
    model.train(train)
    for batch in batches:
        model(**batch).loss.backward()
        for name, param in model.named_parameters():
            if "layer" in name:
                torch.nn.utils.clip_grad_norm_(param, max_grad_norm)
                fisher[name] += (param.grad ** 2) / len(batches)
        model.zero_grad()
    return fisher


def test_fisher_of_a_loaded_model_is_the_train_mode_fisher_and_its_mode_is_restored(tmp_path):
    model, batches = loaded_model(tmp_path), random_batches(4)
    names = encoder_layer_names(model)
    torch.manual_seed(0)
    fisher = fisher_information(model, batches, names, max_grad_norm=1.0)
    assert not any(m.training for m in model.modules())  # back in eval mode

    reference = loaded_model(tmp_path)
    torch.manual_seed(0)  # the same dropout stream
    expected = official_fisher(reference, batches)
    assert list(fisher) == list(expected)
    for name in names:
        assert torch.equal(fisher[name], expected[name]), name


def test_eval_mode_switch_reproduces_the_dropout_free_fisher(tmp_path):
    model, batches = loaded_model(tmp_path), random_batches(4)
    names = encoder_layer_names(model)
    model.train()  # the caller's mode is restored, whatever it was
    eval_fisher = fisher_information(model, batches, names, mode="eval")
    assert all(m.training for m in model.modules())
    expected = official_fisher(loaded_model(tmp_path), batches, train=False)
    for name in names:
        assert torch.equal(eval_fisher[name], expected[name]), name
    torch.manual_seed(0)
    train_fisher = fisher_information(loaded_model(tmp_path), batches, names)
    assert not any(torch.equal(eval_fisher[n], train_fisher[n]) for n in names)
    with pytest.raises(ValueError, match="mode"):
        fisher_information(model, batches, names, mode="inference")


# ---------------------------------------------------------------- the kept count

def official_mask(scores: dict, p: float) -> dict:
    """The official threshold, written out again: np.append of every value, then
    `>= np.percentile(r, (1 - p) * 100)` (linear interpolation), ties kept."""
    r = None
    for v in scores.values():
        v = v.view(-1).numpy()
        r = v if r is None else np.append(r, v)
    polar = np.percentile(r, (1 - p) * 100)
    return {k: torch.from_numpy(v.numpy() >= polar) for k, v in scores.items()}


def random_scores(n: int, seed: int, ties: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(n // 3, generator=g), torch.rand(n - n // 3, generator=g)
    if ties:  # few distinct values: many exact ties, at the threshold too
        a, b = (a * 5).floor(), (b * 5).floor()
    return {"a": a, "b": b.view(-1, 1)}


def kept(masks: dict) -> int:
    return sum(int(m.sum()) for m in masks.values())


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3, 0.5, 0.77])
def test_the_official_count_is_one_more_or_less_than_round_p_n_without_ties(p):
    """Without ties the official rule keeps floor(p*N + 1 - p) entries (the threshold sits at
    position (1 - p)(N - 1)), ours exactly round(p*N); the two child networks are nested."""
    differ = 0
    for n in range(10, 200, 7):
        scores = random_scores(n, n, ties=False)
        official, ours = official_mask(scores, p), top_p_mask(scores, p)
        count = kept(official)
        assert kept(ours) == kept_count(p, n)
        formula = int(p * n + 1 - p)   # floor(p*N + 1 - p), +1 where numpy rounds the position
        assert abs(count - kept(ours)) <= 1 and count in (formula, formula + 1)
        small, large = (ours, official) if kept(ours) <= count else (official, ours)
        assert all(torch.equal(small[k] & large[k], small[k]) for k in scores)  # nested
        differ += count != kept(ours)
    # p < 0.5: the official rule keeps one more for about a (0.5 - p) share of N; p = 0.5: never
    assert (differ > 0) == (p != 0.5)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.77])
def test_count_official_is_the_official_mask_bit_for_bit(p, ties):
    for seed in range(5):
        scores = random_scores(101 + seed, seed, ties)
        ours, official = percentile_mask(scores, p), official_mask(scores, p)
        assert all(torch.equal(ours[k], official[k]) for k in scores)
        if ties:  # every tie at the threshold kept: more than p*N
            assert kept(official) > kept_count(p, 101 + seed)
        low = percentile_mask(scores, p, largest=False)  # the lowest-Fisher ablation's
        values = np.concatenate([v.view(-1).numpy() for v in scores.values()])
        polar = np.percentile(values, p * 100)
        assert all(torch.equal(low[k], torch.from_numpy(v.numpy() <= polar))
                   for k, v in scores.items())


def test_fisher_mode_and_count_are_part_of_the_identity_and_the_mask_cache_key(run_tiny):
    default = run_tiny("variant=child_tuning_d")
    old = run_tiny("variant=child_tuning_d", "variant.fisher_mode=eval")
    official = run_tiny("variant=child_tuning_d", "variant.count=official")
    hashes = {r["identity"]["config_hash"] for r in (default, old, official)}
    keys = {r["mask"]["cache_key"] for r in (default, old, official)}
    assert len(hashes) == len(keys) == 3
    assert all(r["mask"]["source"] == "computed" for r in (default, old, official))
    assert old["mask"]["sha256"] != default["mask"]["sha256"]
    stats = official["mask"]["statistics"]   # no ties in a Fisher: floor(p*N + 1 - p) or +1
    assert stats["kept"] - int(0.3 * stats["masked_entries"] + 0.7) in (0, 1)


@pytest.mark.parametrize("variant,message", [
    ({"mask": "random", "count": "official"}, "variant.count"),
    ({"mask": "fisher_top", "count": "exact"}, "variant.count"),
    ({"mask": "fisher_top", "fisher_mode": "inference"}, "variant.fisher_mode"),
    ({"mask": "fisher_bottom", "fisher_mode": None}, "variant.fisher_mode")])
def test_bad_fisher_mode_or_count_is_rejected(variant, message):
    from childtune.errors import UserError
    from childtune.method.variants import check_variant

    base = {"p": 0.3, "scope": "layers", "fisher_recipe": "official", "fisher_mode": "train"}
    with pytest.raises(UserError, match=message):
        check_variant({**base, **variant})
