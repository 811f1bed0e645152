"""The fast paths (issue 6) keep the reference semantics exactly: bit-identical Fisher masks
and Fisher values, D masking equal to `grad * mask`, and CT_F's documented Bernoulli draw.
Correctness only: speed is measured by benchmarks/, never asserted here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from childtune import ChildTuningD, ChildTuningF, bottom_p_mask, fisher_information, top_p_mask
from childtune.method import chunking, selection
from childtune.method import masks as M
from childtune.method.scopes import encoder_layer_names
from childtune.method.selection import kept_count


# ------------------------------------------------------------------ reference implementations

def reference_selection(scores, k, largest):
    """The previous implementation: one concatenated copy, `kthvalue`, ties by flat index."""
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    n = flat.numel()
    chosen = torch.zeros(n, dtype=torch.bool)
    if k >= n:
        chosen[:] = True
    elif k > 0:
        if largest:
            t = flat.kthvalue(n - k + 1).values
            chosen = flat > t
            ties = (flat == t).nonzero().flatten()[: k - int(chosen.sum())]
        else:
            t = flat.kthvalue(k).values
            chosen = flat < t
            need = k - int(chosen.sum())
            ties = (flat == t).nonzero().flatten()
            ties = ties[ties.numel() - need:]
        chosen[ties] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def reference_fisher(model, batches, names, max_grad_norm):
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        with torch.no_grad():
            for n in names:
                torch.nn.utils.clip_grad_norm_(params[n], max_grad_norm)
                fisher[n] += params[n].grad.float() ** 2 / len(batches)
    model.zero_grad(set_to_none=True)
    return fisher


def random_scores(g: torch.Generator, kind: int) -> dict[str, torch.Tensor]:
    scores = {}
    for j in range(int(torch.randint(1, 5, (1,), generator=g))):
        n = int(torch.randint(1, 400, (1,), generator=g))
        if kind == 0:      # continuous
            v = torch.rand(n, generator=g)
        elif kind == 1:    # few distinct values: ties everywhere, also at the threshold
            v = torch.randint(0, 4, (n,), generator=g).float()
        elif kind == 2:    # signed values with +0.0 and -0.0 mixed
            v = torch.randn(n, generator=g)
            v[v.abs() < 0.7] = 0.0
            v[::3] = -0.0
        elif kind == 3:    # infinities and zeros
            v = torch.tensor([math.inf, -math.inf, 0.0, -0.0, 1.0])[
                torch.randint(0, 5, (n,), generator=g)]
        else:              # subnormals
            v = torch.randint(0, 3, (n,), generator=g).float() * 1e-40
        scores[f"t{j}"] = v.view(-1, 1) if n % 2 == 0 else v
    return scores


# ------------------------------------------------------------------ exact threshold

P_GRID = (0.0, 0.01, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0)


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == torch.bool and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("kind", range(5))
def test_top_and_bottom_masks_are_bit_identical_to_the_reference(kind):
    g = torch.Generator().manual_seed(kind)
    for _ in range(40):
        scores = random_scores(g, kind)
        n = sum(s.numel() for s in scores.values())
        for p in P_GRID:
            k = kept_count(p, n)
            assert_same(top_p_mask(scores, p), reference_selection(scores, k, largest=True))
            assert_same(bottom_p_mask(scores, p), reference_selection(scores, k, largest=False))


@pytest.mark.parametrize("layout", ["shuffled", "sorted", "periodic", "ties", "signed zeros"])
def test_bisection_path_is_exact_when_the_sample_misleads(monkeypatch, layout):
    """With the candidate budget forced to a minimum, the bracket is bisected on the float
    bit patterns; sorted and periodic layouts make the strided sample unrepresentative."""
    monkeypatch.setattr(selection, "_MIN_CANDIDATES", 1)
    monkeypatch.setattr(chunking, "CHUNK", 1 << 10)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(50_000, generator=g) ** 3
    if layout == "sorted":
        x = x.sort().values
    elif layout == "periodic":
        x = torch.arange(50_000).remainder(97).float() * 1e-3 + x * 1e-9
    elif layout == "ties":
        x = (x * 20).floor()
    elif layout == "signed zeros":   # +0.0 and -0.0 compare equal but differ in bit pattern
        x = torch.randn(50_000, generator=g)
        x[x.abs() < 1.0] = 0.0
        x[::2] = -x[::2]
    scores = {"a": x[:12_345].clone(), "b": x[12_345:].view(-1, 5).clone()}
    for p in (0.001, 0.3, 0.5, 0.9):
        k = kept_count(p, x.numel())
        assert_same(top_p_mask(scores, p), reference_selection(scores, k, largest=True))
        assert_same(bottom_p_mask(scores, p), reference_selection(scores, k, largest=False))


def test_selection_of_non_float32_scores_matches_reference():
    g = torch.Generator().manual_seed(3)
    scores = {"a": torch.rand(300, generator=g, dtype=torch.float64),
              "b": (torch.rand(40, 7, generator=g) * 8).floor().half()}
    n = 580
    assert_same(top_p_mask(scores, 0.4), reference_selection(scores, kept_count(0.4, n), True))


def test_nan_scores_are_refused_with_a_clear_error():
    scores = {"a": torch.tensor([1.0, float("nan"), 2.0])}
    with pytest.raises(ValueError, match="NaN"):
        top_p_mask(scores, 0.5)


# ------------------------------------------------------------------ CT_F draw

def shapes_model(shapes, dtype=torch.float32):
    return [(f"w{i}", torch.nn.Parameter(torch.zeros(s, dtype=dtype))) for i, s in enumerate(shapes)]


def draw_masks(named, p, seed, steps=2, grad=None):
    masker = ChildTuningF(named, p=p, seed=seed)
    out = []
    for _ in range(steps):
        for _, q in named:
            q.grad = torch.ones_like(q) if grad is None else grad.clone()
        masker.apply()
        out.append([q.grad.clone() for _, q in named])
    return masker, out


@pytest.mark.parametrize("bits", [16, 32])
def test_f_draw_is_the_documented_rule(bits):
    """Pins the stream and the quantisation: tensor after tensor, 64-bit words from SFC64(seed)
    read as 64/bits uniform signed `bits`-bit integers s, entry i from part i % (64/bits) of
    word i // (64/bits); an entry is kept iff s < round(p * 2**bits) - 2**(bits-1), and kept
    entries are grad * (1/p). The expectation is drawn per tensor (whole-tensor draws), not per
    chunk, so it also pins that chunking never changes the masks."""
    p, seed = 0.3, 11
    named = shapes_model([(3000, 50), (7,), (1, 1), (5,)])
    assert named[0][1].numel() > 2 * chunking.CHUNK  # several chunks, and a short last one
    grad = torch.randn(3000, 50)
    masker = ChildTuningF(named, p=p, seed=seed, bits=bits)
    for _, q in named:
        q.grad = grad.clone() if q.shape == grad.shape else torch.ones_like(q)
    masker.apply()
    generator = np.random.SFC64(seed)
    per_word = 64 // bits
    signed = {16: np.int16, 32: np.int32}[bits]
    kept = 0
    for _, q in named:
        n = q.numel()
        words = generator.random_raw((n + per_word - 1) // per_word)
        parts = words.view(signed)[:n]
        keep = torch.from_numpy(parts < round(p * 2 ** bits) - 2 ** (bits - 1)).view(q.shape)
        before = grad if q.shape == grad.shape else torch.ones_like(q)
        expected = before * (keep.float() * (1.0 / p))
        assert torch.equal(q.grad.view(torch.int32), expected.view(torch.int32))
        kept += int(keep.sum())
    assert masker.kept == kept


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("p", [1e-3, 0.1, 0.3, 0.5, 0.9, 0.999, 1 - 2 ** -18])
def test_f_quantised_keep_probability_is_within_the_documented_bound(p, bits):
    masker = ChildTuningF(shapes_model([(4,)]), p=p, seed=0, bits=bits)
    quantised = (masker._threshold + 2 ** (bits - 1)) / 2 ** bits
    assert abs(quantised - p) <= (2 ** -16 if bits == 16 else 2 ** -33)


@pytest.mark.parametrize("chunk", [4, 1000, 1 << 20])
def test_f_16_bit_masks_do_not_depend_on_the_chunk_length(monkeypatch, chunk):
    named = shapes_model([(30_001,), (7, 3)])
    _, reference = draw_masks(named, 0.3, seed=3)
    monkeypatch.setattr(chunking, "CHUNK", chunk)
    _, chunked = draw_masks(shapes_model([(30_001,), (7, 3)]), 0.3, seed=3)
    assert all(torch.equal(a, b) for s1, s2 in zip(reference, chunked) for a, b in zip(s1, s2))


def test_f_16_bit_draws_are_the_default_and_older_configs_keep_32():
    from childtune.method import variants

    assert ChildTuningF(shapes_model([(4,)]), p=0.3, seed=0).bits == 16
    model = torch.nn.Linear(3, 2)
    old = {"name": "child_tuning_f", "mask": "bernoulli", "p": 0.3, "scope": "all"}
    build = lambda v: variants.build(v, model, fisher_loader=None, max_grad_norm=1.0,  # noqa: E731
                                     seed=1, cache_dir=None, cache_parts={})
    assert build(old).masker.bits == 32
    assert build({**old, "draw_bits": 16}).masker.bits == 16


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8])
def test_f_observed_keep_rate_matches_p_within_a_binomial_bound(p):
    named = shapes_model([(700, 300), (300,), (50, 4)])
    masker, steps = draw_masks(named, p, seed=2, steps=5)
    n = 5 * sum(q.numel() for _, q in named)
    assert masker.seen == n
    assert masker.kept == sum(int((g != 0).sum()) for step in steps for g in step)
    assert abs(masker.kept / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_f_kept_entries_are_grad_times_one_over_p_and_masked_are_zero():
    p = 0.3
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(400, 300, generator=g)
    named = shapes_model([(400, 300)])
    _, [[got]] = draw_masks(named, p, seed=4, steps=1, grad=grad)
    kept = got != 0
    assert torch.equal(got[kept], grad[kept] * (1.0 / p))
    assert (got[~kept] == 0).all()


def test_f_chunk_boundaries_do_not_bias_the_draw(monkeypatch):
    """Tensors spanning many chunks (and odd chunk tails) keep the rate of single chunks."""
    monkeypatch.setattr(chunking, "CHUNK", 1001)
    named = shapes_model([(20_003,), (999,), (1,)])
    masker, _ = draw_masks(named, 0.25, seed=5, steps=20)
    n = masker.seen
    assert abs(masker.kept / n - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_f_masks_are_seeded_fresh_per_step_and_thread_count_free():
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(draw_masks(shapes_model([(300_000,), (384,)]), 0.3, seed=9)[1])
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for s1, s2 in zip(runs[0], run) for a, b in zip(s1, s2))
    first, second = runs[0]
    assert not torch.equal(first[0], second[0])
    other = draw_masks(shapes_model([(300_000,), (384,)]), 0.3, seed=10)[1]
    assert not torch.equal(other[0][0], first[0])


def test_f_with_p1_leaves_gradients_untouched_and_counts_them():
    named = shapes_model([(50, 3)])
    grad = torch.randn(50, 3)
    named[0][1].grad = grad
    masker = ChildTuningF(named, p=1.0, seed=0)
    masker.apply()
    assert named[0][1].grad is grad and torch.equal(grad, grad.clone())
    assert masker.kept == masker.seen == 150


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_f_other_dtypes_scale_like_the_reference(dtype):
    p = 0.3
    grad = torch.randn(200, 30).to(dtype)
    named = shapes_model([(200, 30)], dtype=dtype)
    _, [[got]] = draw_masks(named, p, seed=1, steps=1, grad=grad)
    kept = got != 0
    scale = torch.ones(1, dtype=dtype).mul_(1.0 / p)   # keep.to(dtype) * (1/p), as before
    assert torch.equal(got[kept], grad[kept] * scale)
    assert abs(kept.double().mean().item() - p) < 0.05


def test_f_non_contiguous_gradients_are_masked_in_place():
    param = torch.nn.Parameter(torch.zeros(30, 40))
    grad = torch.randn(40, 30).t()
    param.grad = grad
    ChildTuningF([("w", param)], p=0.5, seed=0).apply()
    assert param.grad is grad
    kept = grad != 0
    assert 0.3 < kept.float().mean() < 0.7


# ------------------------------------------------------------------ CT_D and the Fisher pass

@pytest.mark.parametrize("chunk", [7, 1 << 17])
def test_d_masking_equals_grad_times_bool_mask(monkeypatch, chunk):
    monkeypatch.setattr(chunking, "CHUNK", chunk)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Linear(20, 3))
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(q.shape, generator=g) < 0.4 for n, q in model.named_parameters()
             if n != "1.bias"}
    grads = {n: torch.randn(q.shape, generator=g) for n, q in model.named_parameters()}
    grads["0.weight"][0, :5] = torch.tensor([-1.0, math.inf, math.nan, -0.0, 2.0])
    grads["1.weight"] = torch.randn(20, 3, generator=g).t()   # non-contiguous
    for n, q in model.named_parameters():
        q.grad = grads[n].clone()
    ChildTuningD(model, masks).apply()
    for n, q in model.named_parameters():
        expected = grads[n] * masks[n] if n in masks else grads[n]
        bits = lambda t: t.contiguous().view(torch.int32)   # noqa: E731  (NaN, -0.0 included)
        assert torch.equal(bits(q.grad), bits(expected)), n


def tiny_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2))


def random_batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 100, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(n)]


def test_fisher_is_bit_identical_to_the_per_tensor_reference_loop():
    names = encoder_layer_names(tiny_model())
    torch.manual_seed(0)
    got = fisher_information(tiny_model(), random_batches(3), names, max_grad_norm=1.0)
    torch.manual_seed(0)
    expected = reference_fisher(tiny_model(), random_batches(3), names, 1.0)
    assert all(torch.equal(got[n], expected[n]) for n in names)
    clipped = fisher_information(tiny_model(), random_batches(2), names, max_grad_norm=1e-3)
    assert all(torch.isfinite(v).all() for v in clipped.values())
    torch.manual_seed(0)
    tight = fisher_information(tiny_model(), random_batches(3), names, max_grad_norm=1e-3)
    torch.manual_seed(0)
    expected = reference_fisher(tiny_model(), random_batches(3), names, 1e-3)
    assert all(torch.equal(tight[n], expected[n]) for n in names)


@pytest.mark.parametrize("bits", [16, 32])
def test_f_on_a_gpu_draws_the_same_rule_on_the_device(bits):
    """The GPU path of CT_F, run here on CPU tensors: per tensor, 64-bit words from a torch
    generator of the gradient's device seeded by the masker's seed, the same threshold and
    the same float 1/p; the kept count is read back by keep_rate()."""
    p, seed = 0.3, 5
    named = shapes_model([(300, 70), (9,)])
    masker = ChildTuningF(named, p, seed=seed, bits=bits)
    generator = torch.Generator().manual_seed(seed)
    per_word, signed = 64 // bits, {16: torch.int16, 32: torch.int32}[bits]
    kept = 0
    for _, q in named:
        grad = torch.randn(q.shape)
        expected_grad = grad.clone()
        masker._apply_on_device(grad)
        words = torch.empty((q.numel() + per_word - 1) // per_word, dtype=torch.int64)
        words.random_(-2 ** 63, None, generator=generator)
        keep = (words.view(signed)[:q.numel()]
                < round(p * 2 ** bits) - 2 ** (bits - 1)).view(q.shape)
        assert torch.equal(grad, expected_grad * (keep.float() * (1.0 / p)))
        kept += int(keep.sum())
    n = sum(q.numel() for _, q in named)
    assert masker.seen == n and masker.keep_rate() == kept / n
    assert abs(kept / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_d_on_a_gpu_gives_the_same_gradients_as_the_cpu_path():
    """The GPU path of CT_D (one multiply by the bool mask) against the CPU chunked path, run
    here on CPU tensors: the same values, signed zeros included."""
    generator = torch.Generator().manual_seed(1)
    for shape in [(300, 70), (9,)]:
        mask = torch.rand(shape, generator=generator) < 0.3
        grad = torch.randn(shape, generator=generator)
        on_device, cpu = grad.clone(), grad.clone()
        ChildTuningD._apply_on_device(on_device, mask)
        M._multiply_in_chunks(cpu, torch.empty(chunking.CHUNK), lambda out, start:
                              out.copy_(mask.view(-1)[start:start + out.numel()]))
        assert torch.equal(on_device, cpu) and torch.equal(on_device.signbit(), cpu.signbit())


@pytest.mark.parametrize("layout", range(6))
def test_fisher_summary_without_concatenation_equals_the_concatenated_one(layout):
    """The D record's Fisher quantiles and log10 histogram, computed tensor by tensor, are the
    ones the concatenating reference computes (same strided sample, same bins and counts)."""
    from childtune.method import fisher as F

    g = torch.Generator().manual_seed(layout)
    sizes = torch.randint(1, 900, (2 + layout, 2), generator=g).tolist() + [[1 << 20 if layout == 5 else 7]]
    fisher = {}
    for i, shape in enumerate(sizes):
        scale = 10 ** (-6 * torch.rand(1, generator=g).item())
        value = (torch.randn(shape, generator=g) * scale) ** 2
        value[torch.rand(shape, generator=g) < 0.3] = 0.0
        fisher[f"t{i}"] = value
    values = torch.cat([f.flatten() for f in fisher.values()])
    sample = values[torch.linspace(0, values.numel() - 1, min(values.numel(), 1 << 20)).long()]
    quantiles = torch.quantile(sample.double(), torch.tensor([0, .25, .5, .75, 1.0],
                                                            dtype=torch.double)).tolist()
    positive = values[values > 0]
    counts, edges = torch.histogram(positive.log10(), bins=40)
    assert F.quantiles(fisher) == quantiles
    assert F.log10_histogram(fisher) == {"counts": [int(c) for c in counts.tolist()],
                                         "edges": edges.tolist(),
                                         "zeros": values.numel() - positive.numel()}


def test_fisher_histogram_of_all_zeros():
    from childtune.method import fisher as F

    assert F.log10_histogram({"a": torch.zeros(3, 2)}) == {"counts": [], "edges": [], "zeros": 6}
