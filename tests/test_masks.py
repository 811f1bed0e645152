"""Exact semantics of the Child-Tuning variants (issue 3): each test could fail if a detail slipped."""
from __future__ import annotations

import math

import pytest
import torch

from childtune import (ChildTuningD, ChildTuningF, bottom_p_mask, encoder_layer_names,
                       fisher_information, prune_, random_mask, top_p_mask)
from childtune.method.scopes import mask_statistics
from childtune.method.selection import kept_count

from conftest import random_batches, tiny_model


def train_steps(model, batches, masker=None, optimizer="adamw", weight_decay=0.01, lr=1e-3):
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if masker is not None:
        masker.attach(opt)
    torch.manual_seed(123)  # dropout stream
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return model


def fake_fisher(seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    scores = {"a": torch.rand(7, 5, generator=g), "b": torch.rand(40, generator=g),
              "c": torch.rand(3, 3, 3, generator=g)}
    if ties:  # many exact ties, including at the threshold
        scores = {k: (v * 4).floor() for k, v in scores.items()}
    return scores


# ------------------------------------------------------------------ CT_F

@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_f_with_p1_is_bit_identical_to_vanilla(optimizer):
    batches = random_batches(5)
    vanilla = train_steps(tiny_model(), batches, optimizer=optimizer)
    model = tiny_model()
    f = train_steps(model, batches, ChildTuningF(model.named_parameters(), p=1.0, seed=7),
                    optimizer=optimizer)
    for (name, a), b in zip(vanilla.named_parameters(), f.parameters()):
        assert torch.equal(a, b), name


def test_f_scales_kept_gradients_by_exactly_one_over_p():
    p = 0.3
    param = torch.nn.Parameter(torch.zeros(200, 50))
    grad = torch.randn(200, 50)
    param.grad = grad.clone()
    masker = ChildTuningF([("w", param)], p=p, seed=0)
    masker.apply()
    kept = param.grad != 0
    assert torch.equal(param.grad[kept], grad[kept] * (1.0 / p))
    assert 0.2 < kept.float().mean() < 0.4


def test_f_keep_rate_matches_p_within_binomial_bound():
    for p in (0.1, 0.3, 0.75):
        param = torch.nn.Parameter(torch.zeros(1000, 100))
        masker = ChildTuningF([("w", param)], p=p, seed=1)
        for _ in range(20):
            param.grad = torch.ones_like(param)
            masker.apply()
        n = masker.seen
        assert n == 20 * 100_000
        bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma
        assert abs(masker.kept / n - p) < bound, (p, masker.kept / n)


def test_f_draws_a_fresh_mask_every_step_and_is_seeded():
    def masks(seed):
        param = torch.nn.Parameter(torch.zeros(64, 64))
        masker = ChildTuningF([("w", param)], p=0.5, seed=seed)
        out = []
        for _ in range(2):
            param.grad = torch.ones_like(param)
            masker.apply()
            out.append(param.grad != 0)
        return out

    first, second = masks(3)
    assert not torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(masks(3), (first, second)))


def test_f_does_not_touch_the_global_random_stream():
    torch.manual_seed(5)
    expected = torch.rand(3)
    param = torch.nn.Parameter(torch.zeros(10))
    param.grad = torch.ones(10)
    torch.manual_seed(5)
    ChildTuningF([("w", param)], p=0.5, seed=0).apply()
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ fixed masks (D, lowest, random)

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77, 1.0])
def test_kept_counts_are_exact(p, ties):
    scores = fake_fisher(ties=ties)
    n = sum(v.numel() for v in scores.values())
    shapes = {k: v.shape for k, v in scores.items()}
    for masks in (top_p_mask(scores, p), bottom_p_mask(scores, p), random_mask(shapes, p, 0)):
        assert sum(int(m.sum()) for m in masks.values()) == kept_count(p, n) == round(p * n + 1e-9)


@pytest.mark.parametrize("ties", [False, True])
def test_top_mask_keeps_the_largest_values(ties):
    scores = fake_fisher(ties=ties)
    masks = top_p_mask(scores, 0.3)
    kept = torch.cat([scores[k][masks[k]] for k in scores])
    dropped = torch.cat([scores[k][~masks[k]] for k in scores])
    assert kept.min() >= dropped.max()
    if ties:  # the tie-break is by flat index: lower index first, deterministic
        flat_scores = torch.cat([v.flatten() for v in scores.values()])
        flat_mask = torch.cat([m.flatten() for m in masks.values()])
        t = kept.min()
        tied = (flat_scores == t).nonzero().flatten()
        taken = flat_mask[tied]
        assert taken.any() and not taken.all()
        assert torch.equal(taken, torch.sort(taken.int(), descending=True).values.bool())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_lowest_and_top_are_disjoint_when_p_at_most_half(p, ties):
    scores = fake_fisher(ties=ties)
    top, low = top_p_mask(scores, p), bottom_p_mask(scores, p)
    assert not any((top[k] & low[k]).any() for k in scores)
    kept_low = torch.cat([scores[k][low[k]] for k in scores])
    rest = torch.cat([scores[k][~low[k]] for k in scores])
    assert kept_low.max() <= rest.min()


def test_random_mask_is_seeded_and_differs_from_d():
    scores = fake_fisher()
    shapes = {k: v.shape for k, v in scores.items()}
    r1, r2, r3 = random_mask(shapes, 0.3, 1), random_mask(shapes, 0.3, 1), random_mask(shapes, 0.3, 2)
    assert all(torch.equal(r1[k], r2[k]) for k in shapes)
    assert not all(torch.equal(r1[k], r3[k]) for k in shapes)
    d = top_p_mask(scores, 0.3)
    assert not all(torch.equal(r1[k], d[k]) for k in shapes)


def test_fisher_matches_an_explicit_reference_loop():
    model = tiny_model()
    batches = random_batches(3)
    names = encoder_layer_names(model)
    assert names and all("layer" in n for n in names)
    assert not any(n.startswith(("bert.embeddings", "bert.pooler", "classifier")) for n in names)
    torch.manual_seed(0)
    fisher = fisher_information(model, batches, names, max_grad_norm=1.0)
    assert all(p.grad is None for p in model.parameters())

    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(params[n]) for n in names}
    torch.manual_seed(0)
    model.train()
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for n in names:
            g = params[n].grad
            norm = g.norm()
            g = g * min(1.0, 1.0 / (norm + 1e-6)) if norm > 1.0 else g
            expected[n] += g ** 2 / len(batches)
    for n in names:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_d_without_weight_decay_keeps_masked_entries_at_pretrained_values(optimizer):
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = encoder_layer_names(model)
    masks = top_p_mask(fisher_information(model, random_batches(2), names), 0.3)
    train_steps(model, random_batches(4, seed=1), ChildTuningD(model, masks),
                optimizer=optimizer, weight_decay=0.0)
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p[~masks[n]], initial[n][~masks[n]]), n
    moved_kept = sum(int((p[masks[n]] != initial[n][masks[n]]).sum())
                     for n, p in model.named_parameters() if n in masks)
    assert moved_kept > 0.5 * sum(int(m.sum()) for m in masks.values())
    for n in ("bert.embeddings.word_embeddings.weight", "classifier.weight"):
        assert not torch.equal(dict(model.named_parameters())[n], initial[n])


def test_weight_decay_on_frozen_entries_is_switchable():
    def frozen_entries_after(freeze_exactly):
        model = tiny_model()
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        masks = random_mask({n: p.shape for n, p in model.named_parameters()
                             if n in encoder_layer_names(model)}, 0.3, 0)
        train_steps(model, random_batches(3), ChildTuningD(model, masks, freeze_exactly),
                    weight_decay=0.1)
        return [(p[~masks[n]], initial[n][~masks[n]]) for n, p in model.named_parameters()
                if n in masks and n.endswith("dense.weight")]

    assert all(torch.equal(a, b) for a, b in frozen_entries_after(True))
    decayed = frozen_entries_after(False)  # official: decoupled decay still shrinks them
    assert all((a.abs() <= b.abs()).all() for a, b in decayed)
    assert any(not torch.equal(a, b) for a, b in decayed)


def test_prune_zeroes_exactly_the_non_child_in_scope_entries():
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = top_p_mask({n: initial[n].abs() + 0.1 for n in encoder_layer_names(model)}, 0.4)
    prune_(model, masks)
    for n, p in model.named_parameters():
        if n in masks:
            assert (p[~masks[n]] == 0).all() and torch.equal(p[masks[n]], initial[n][masks[n]])
        else:
            assert torch.equal(p, initial[n]), n


def test_mask_statistics_per_layer_and_module():
    model = tiny_model()
    masks = random_mask({n: p.shape for n, p in model.named_parameters()
                         if n in encoder_layer_names(model)}, 0.25, 0)
    stats = mask_statistics(masks, model)
    assert stats["kept_fraction"] == pytest.approx(0.25, abs=1e-3)
    assert set(stats["per_layer"]) == {"0", "1"}
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "layernorm"} \
        <= set(stats["per_module"])
    assert 0 < stats["scope_fraction_of_model"] < 1


def test_fused_adamw_is_the_default_and_masks_still_apply():
    from omegaconf import OmegaConf

    from childtune.run.optim import build_optimizer

    cfg = OmegaConf.create({"optimizer": "adamw_fused", "lr": 1e-3, "adam_betas": [0.9, 0.999],
                            "adam_eps": 1e-8, "weight_decay": 0.0})
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg)
    assert optimizer.defaults["fused"] is True
    masks = random_mask({n: p.shape for n, p in model.named_parameters()
                         if n in encoder_layer_names(model)}, 0.3, 0)
    ChildTuningD(model, masks).attach(optimizer)
    model.train()
    for batch in random_batches(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p[~masks[n]], initial[n][~masks[n]]), n


@pytest.mark.parametrize("make,fills", [
    (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01), True),
    (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True), True),
    (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, amsgrad=True), True),
    (lambda ps: torch.optim.Adam(ps, lr=1e-3), True),
    (lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.01), False)],  # coupled decay
    ids=["adamw", "adamw_fused", "adamw_amsgrad", "adam", "adam_coupled_decay"])
def test_filling_frozen_second_moments_changes_no_parameter_bit(make, fills):
    """The speed trick of ChildTuningD (frozen entries' exp_avg_sq set to the dtype's max)."""
    def train(fill):
        model = tiny_model()
        masks = random_mask({n: p.shape for n, p in model.named_parameters()
                             if n in encoder_layer_names(model)}, 0.3, 0)
        opt = make(model.parameters())
        ChildTuningD(model, masks).attach(opt, fill_frozen_moments=fill)
        torch.manual_seed(123)
        model.train()
        for batch in random_batches(4, seed=1):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        name = "bert.encoder.layer.0.intermediate.dense.weight"
        v = opt.state[dict(model.named_parameters())[name]]["exp_avg_sq"]
        return model, v[~masks[name]]

    plain, v_plain = train(False)
    filled, v_filled = train(True)
    for (n, a), b in zip(plain.named_parameters(), filled.parameters()):
        assert torch.equal(a, b), n
    if fills:   # exp_avg stays exactly 0 on frozen entries: their moments were filled
        assert (v_plain == 0).all() and (v_filled > 1e30).all()
    else:       # a coupled decay moves exp_avg: nothing is changed
        assert (v_plain > 0).any() and torch.equal(v_filled, v_plain)
