"""CT_D's Fisher pass and kept count against plain re-implementations of the official code
(RunxinXu/ChildTuning, ChildTuningD.calculate_fisher), with a model loaded the way users load
one: `from_pretrained` returns it in eval mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from childtune import encoder_layer_names, fisher_information, top_p_mask
from childtune.masks import kept_count

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
