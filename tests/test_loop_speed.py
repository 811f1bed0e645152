"""Issue 15's loop speed-ups change no number: the clip that skips torch's multiply by 1.0, and
the process that keeps the memory it frees (childtune.memory)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from childtune.run import loop, optim

from conftest import ROOT, random_batches, tiny_model


def bits(tensors) -> list[bytes]:
    """Each tensor's bytes: equal means bit for bit (signed zeros and NaN payloads too)."""
    return [t.detach().reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors]


def gradients(norm: float, special: float | None = None) -> list[torch.nn.Parameter]:
    """Gradients of about the given total norm, with a -0.0, a subnormal and `special`."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((7, 5), (300,), (2, 3, 4))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    params[1].grad[3] = -0.0
    params[1].grad[4] = 1e-42
    total = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    for p in params:
        p.grad.mul_(norm / total)
    if special is not None:
        params[2].grad[1, 1, 1] = special
    return params


# torch's factor is max_norm / (norm + 1e-6): below 1.0 for a norm a hair under max_norm; with
# 1 - 9.5e-7 it is 1 - 2**-23, the largest float32 factor below 1.0 that these norms can give
NORMS = [0.0, 1e-3, 0.9999, 1.0 - 9.5e-7, 1.0 - 5e-7, 1.0 + 1e-4, 10.0]


@pytest.mark.parametrize("norm, special", [(n, None) for n in NORMS] + [
    (1e-3, float("nan")), (1e-3, float("inf")), (1e-3, -float("inf"))])
def test_clip_grad_norm_is_torchs_bit_for_bit(norm, special):
    ours, theirs = gradients(norm, special), gradients(norm, special)
    result = loop.clip_grad_norm(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert bits([result]) == bits([expected])
    assert bits(p.grad for p in ours) == bits(p.grad for p in theirs)
    assert special is not None or (bits(p.grad for p in ours) == bits(
        p.grad for p in gradients(norm))) == (norm + 1e-6 <= 1.0)   # clipped iff factor < 1


@pytest.mark.parametrize("norm, multiplies", [(1e-3, False), (0.9999, False),
                                              (1.0 - 9.5e-7, True), (10.0, True)])
def test_the_multiply_by_one_is_skipped_on_the_cpu(monkeypatch, norm, multiplies):
    calls = []
    clip = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_",
                        lambda *a, **k: calls.append(1) or clip(*a, **k))
    loop.clip_grad_norm(gradients(norm), 1.0)
    assert bool(calls) == multiplies


def _train(monkeypatch, clip, max_grad_norm: float) -> tuple[list[bytes], list[float]]:
    monkeypatch.setattr(loop, "clip_grad_norm", clip)
    torch.manual_seed(3)
    model = tiny_model()
    optimizer = torch.optim.AdamW(optim.param_groups(model, 0.01), lr=1e-2, fused=True)
    scheduler = optim.linear_schedule(optimizer, 12, 2)
    batches = [{**b, "idx": torch.arange(4)} for b in random_batches(12)]
    norms = []
    loop.train(model, batches, optimizer, scheduler, 1, max_grad_norm, progress=False,
               on_step=lambda values: norms.append(values["grad_norm"]))
    return bits(model.parameters()), norms


def test_training_with_the_skipping_clip_is_bit_identical_to_torchs(monkeypatch):
    new = loop.clip_grad_norm
    _, norms = _train(monkeypatch, new, float("inf"))
    max_norm = sorted(norms)[len(norms) // 2]   # about half the steps are clipped
    multiplied = []
    clip = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_",
                        lambda *a, **k: multiplied.append(1) or clip(*a, **k))
    ours, _ = _train(monkeypatch, new, max_norm)
    assert 0 < len(multiplied) < len(norms)   # both paths were taken
    theirs, _ = _train(monkeypatch, torch.nn.utils.clip_grad_norm_, max_norm)
    assert ours == theirs


# A MiniLM-sized vocabulary: the word embeddings' gradient (47 MB) is above glibc's largest
# mmap threshold, so without the setting every backward pass maps it afresh.
_PROBE = textwrap.dedent("""
    import hashlib, json, resource, sys
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from childtune.run import loop, memory, optim
    torch.set_num_threads(1)
    kept = memory.keep_freed_memory() if sys.argv[1] == "keep" else False
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2))
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 30522, (4, 12), generator=g),
                "attention_mask": torch.ones(4, 12, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,), generator=g), "idx": torch.arange(4)}
               for _ in range(6)]
    optimizer = torch.optim.AdamW(optim.param_groups(model, 0.01), lr=1e-3, fused=True)
    faults = []
    def on_step(values):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    loop.train(model, batches, optimizer, optim.linear_schedule(optimizer, 6, 1), 1, 1.0,
               progress=False, on_step=on_step)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    print(json.dumps({"kept": kept, "sha256": digest.hexdigest(),
                      "faults_per_step": (faults[-1] - faults[1]) / (len(faults) - 2)}))
""")


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keeping_freed_memory_changes_no_number_and_stops_the_page_faults():
    default, kept = _probe("default"), _probe("keep")
    assert kept["kept"] and not default["kept"]
    assert kept["sha256"] == default["sha256"]
    # the embeddings' 47 MB gradient is ~11,500 pages: faulted in every step by default
    assert default["faults_per_step"] > 5_000 > 500 > kept["faults_per_step"]


def test_a_run_keeps_freed_memory(run_tiny, monkeypatch):
    from childtune.run import memory

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1))
    run_tiny()
    assert calls == [1]
