"""The optimizers (trainer.optimizer), the no-decay lists (model.no_decay) and the precision of
the training step (trainer.precision), each against an independent statement of the rule."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from childtune import ChildTuningD, ChildTuningF, encoder_layer_names, random_mask
from childtune.run.loop import Precision, train
from childtune.run.optim import OFFICIAL_NO_DECAY, AdamWHF2021, build_optimizer, param_groups

from conftest import CONF, compose, random_batches, tiny_model

LR, WD, EPS, BETAS = 1e-3, 0.01, 1e-8, (0.9, 0.999)


def trainer_cfg(optimizer: str, **overrides):
    return OmegaConf.create({"optimizer": optimizer, "lr": LR, "weight_decay": WD,
                             "adam_eps": EPS, "adam_betas": list(BETAS), "momentum": 0.0,
                             **overrides})


def batches(n=4, seed=1):
    return [b | {"idx": torch.arange(len(b["labels"]))} for b in random_batches(n, seed=seed)]


def gradients(model, batch):
    """The gradients of one batch, computed once, so that every optimizer sees the same ones."""
    model.zero_grad(set_to_none=True)
    model(**{k: v for k, v in batch.items() if k != "idx"}).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


class Hf2021Reference:
    """The 2021 HF AdamW (transformers 4.7.0, correct_bias=True), written again as that file
    writes it: one parameter at a time, state['step'] an int."""

    def __init__(self, groups, lr, betas, eps):
        self.groups, self.lr, self.betas, self.eps = groups, lr, betas, eps
        self.state: dict = {}

    @torch.no_grad()
    def step(self):
        for group in self.groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.setdefault(p, {})
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = self.betas
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(self.eps)
                step_size = self.lr
                bias_correction1 = 1.0 - beta1 ** state["step"]
                bias_correction2 = 1.0 - beta2 ** state["step"]
                step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-self.lr * group["weight_decay"])


def run_on_same_gradients(make_optimizer, steps=5, drop=None):
    """Trains a tiny model's copy with `make_optimizer(model)` on fixed gradients; `drop` names
    a parameter whose gradient is missing on step 2 (its step count must not advance)."""
    source = tiny_model()
    grads = [gradients(source, b) for b in batches(steps)]
    model = tiny_model()
    optimizer = make_optimizer(model)
    for i, g in enumerate(grads):
        for n, p in model.named_parameters():
            p.grad = None if (n == drop and i == 2) else g[n].clone()
        optimizer.step()
    return model


# ---------------------------------------------------------------- adamw_hf2021

def test_hf2021_equals_the_2021_formula_bit_for_bit_with_decay_and_no_decay_groups():
    drop = "bert.encoder.layer.1.output.dense.weight"
    ours = run_on_same_gradients(lambda m: build_optimizer(m, trainer_cfg("adamw_hf2021")),
                                 drop=drop)
    reference = run_on_same_gradients(
        lambda m: Hf2021Reference(param_groups(m, WD), LR, BETAS, EPS), drop=drop)
    groups = param_groups(tiny_model(), WD)
    assert groups[0]["params"] and groups[1]["params"]  # both groups are exercised
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    torch_adamw = run_on_same_gradients(lambda m: build_optimizer(m, trainer_cfg("adamw_torch")),
                                        drop=drop)
    assert any(not torch.equal(a, b) for a, b in zip(torch_adamw.parameters(),
                                                      reference.parameters()))


def test_hf2021_adds_eps_to_the_uncorrected_root_and_decays_after_the_update():
    """One step on one entry, by hand: update lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps), then decay of
    the updated value. (torch's AdamW decays first and adds eps to the corrected root.)"""
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    p.grad = torch.tensor([1e-7], dtype=torch.float64)   # small: eps matters
    AdamWHF2021([p], lr=0.1, eps=1e-6, weight_decay=0.5).step()
    m, v = 0.1 * 1e-7, 0.001 * 1e-14
    moved = 2.0 - 0.1 * math.sqrt(0.001) / 0.1 * m / (math.sqrt(v) + 1e-6)
    assert p.item() == pytest.approx(moved * (1 - 0.1 * 0.5), rel=1e-14)
    q = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    q.grad = p.grad.clone()
    torch.optim.AdamW([q], lr=0.1, eps=1e-6, weight_decay=0.5).step()
    assert q.item() == pytest.approx(2.0 * (1 - 0.05) - 0.1 * (m / 0.1) / (math.sqrt(v / 0.001) + 1e-6),
                                     rel=1e-14)
    assert abs(p.item() - q.item()) > 1e-3   # first order in lr at this gradient size


def ct_d_run(make_optimizer, freeze_exactly=False, fill=True, steps=4):
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_mask({n: p.shape for n, p in model.named_parameters()
                         if n in encoder_layer_names(model)}, 0.3, 0)
    optimizer = make_optimizer(model)
    ChildTuningD(model, masks, freeze_exactly=freeze_exactly).attach(
        optimizer, fill_frozen_moments=fill)
    torch.manual_seed(123)
    train(model, batches(steps), optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0), epochs=1, max_grad_norm=1.0, progress=False)
    return model, masks, initial, optimizer


HF2021 = lambda m: build_optimizer(m, trainer_cfg("adamw_hf2021"))  # noqa: E731


def test_hf2021_ct_d_frozen_entries_move_only_by_decay_or_not_at_all():
    steps = 4
    decaying, masks, initial, optimizer = ct_d_run(HF2021, steps=steps)
    exempt = {id(p) for p in optimizer.param_groups[1]["params"]}
    params = dict(decaying.named_parameters())
    for name, mask in masks.items():
        expected = initial[name].clone()
        if id(params[name]) not in exempt:
            for _ in range(steps):   # the official decay: p <- p + (-lr wd) p, every step
                expected.add_(expected, alpha=-LR * WD)
        assert torch.equal(params[name][~mask], expected[~mask]), name
    frozen, masks, initial, _ = ct_d_run(HF2021, freeze_exactly=True)
    for name, p in frozen.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], initial[name][~masks[name]]), name
            assert not torch.equal(p[masks[name]], initial[name][masks[name]]), name


@pytest.mark.parametrize("optimizer", ["adamw_hf2021", "adamw_fused"])
def test_frozen_moment_fill_is_exact_with_hf2021_and_fused(optimizer):
    make = lambda m: build_optimizer(m, trainer_cfg(optimizer))  # noqa: E731
    plain, masks, _, opt_plain = ct_d_run(make, fill=False)
    filled, _, _, opt_filled = ct_d_run(make, fill=True)
    for (name, a), b in zip(plain.named_parameters(), filled.parameters()):
        assert torch.equal(a, b), name
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    v = opt_filled.state[dict(filled.named_parameters())[name]]["exp_avg_sq"]
    assert (v[~masks[name]] > 1e30).all()   # the fill did happen


# ---------------------------------------------------------------- the default: fused AdamW

def test_the_default_optimizer_is_torch_fused_adamw():
    cfg = compose()
    assert cfg.trainer.optimizer == "adamw_fused"
    optimizer = build_optimizer(tiny_model(), cfg.trainer, cfg.model.no_decay)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    assert build_optimizer(tiny_model(), trainer_cfg("adamw_torch")).defaults["fused"] is None
    assert compose("protocol=paper").trainer.optimizer == "adamw_hf2021"


# ---------------------------------------------------------------- no-decay lists

def test_xlnet_layer_norm_weights_are_decayed_as_in_the_official_code():
    from transformers import XLNetConfig, XLNetForSequenceClassification

    model = XLNetForSequenceClassification(XLNetConfig(
        vocab_size=50, d_model=16, n_layer=2, n_head=2, d_inner=32, num_labels=2))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, exempt = ({names[id(p)] for p in g["params"]} for g in param_groups(model, WD))
    official_exempt = {n for n in names.values() if "bias" in n or "LayerNorm.weight" in n}
    assert exempt == official_exempt and decay == set(names.values()) - official_exempt
    assert "transformer.layer.0.rel_attn.layer_norm.weight" in decay
    assert "transformer.layer.0.ff.layer_norm.bias" in exempt
    switched = param_groups(model, WD, no_decay=[*OFFICIAL_NO_DECAY, "layer_norm.weight"])
    assert "transformer.layer.0.rel_attn.layer_norm.weight" in {
        names[id(p)] for p in switched[1]["params"]}


def test_every_model_config_names_the_official_no_decay_list():
    for path in sorted((CONF / "model").glob("*.yaml")):
        assert tuple(OmegaConf.load(path).no_decay) == OFFICIAL_NO_DECAY, path.name


# ---------------------------------------------------------------- precision

def loop_run(precision, masker_kind=None, steps=4, max_grad_norm=1.0, spy=None,
             make_optimizer=None):
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = (make_optimizer or (lambda m: build_optimizer(m, trainer_cfg("adamw_fused"))))(model)
    masks, masker = None, None
    if masker_kind == "ct_d_frozen":
        masks = random_mask({n: p.shape for n, p in model.named_parameters()
                             if n in encoder_layer_names(model)}, 0.3, 0)
        masker = ChildTuningD(model, masks, freeze_exactly=True)
    elif masker_kind and masker_kind.startswith("ct_f"):
        masker = ChildTuningF(model.named_parameters(), p=float(masker_kind[4:]), seed=3)
    if masker is not None:
        masker.attach(optimizer)
    if spy is not None:
        optimizer.register_step_pre_hook(lambda *_: spy(model))   # after the masker's hook
    torch.manual_seed(123)
    out = train(model, batches(steps), optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0), epochs=1, max_grad_norm=max_grad_norm, progress=False,
        precision=precision)
    return model, masks, initial, masker, out


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_frozen_entries_stay_exactly_frozen_under_every_precision(name):
    """fp16 runs here with torch's CPU GradScaler: the same code path as on CUDA."""
    model, masks, initial, _, out = loop_run(Precision(name), "ct_d_frozen")
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32
        if n in masks:
            assert torch.equal(p[~masks[n]], initial[n][~masks[n]]), n
            assert not torch.equal(p[masks[n]], initial[n][masks[n]]), n
    assert out["skipped_steps"] == 0 and out["steps"] == 4


def test_bf16_ct_f_with_p1_equals_vanilla_and_differs_from_fp32():
    vanilla = loop_run(Precision("bf16"))[0]
    f1 = loop_run(Precision("bf16"), "ct_f1.0")[0]
    fp32 = loop_run(Precision("fp32"))[0]
    for (name, a), b in zip(vanilla.named_parameters(), f1.parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(vanilla.parameters(), fp32.parameters()))


def test_fp16_masks_see_the_unscaled_clipped_gradients():
    """Order: backward(scaled) -> unscale -> clip -> masker -> update. A hook after the masker
    sees gradients of norm <= max_grad_norm (scaled ones would be ~65536x larger)."""
    norms = []

    def spy(model):
        norms.append(float(torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters() if p.grad is not None])))

    loop_run(Precision("fp32"), spy=spy, max_grad_norm=None)
    fp32_norms = list(norms)
    assert min(fp32_norms) > 0.1
    norms.clear()
    loop_run(Precision("fp16"), "ct_f1.0", max_grad_norm=0.05, spy=spy)
    assert norms == pytest.approx([0.05] * 4, rel=1e-4)   # clipped after unscaling
    norms.clear()
    loop_run(Precision("fp16"), spy=spy, max_grad_norm=None)   # unclipped: the true norm
    assert norms == pytest.approx(fp32_norms, rel=0.05)


def test_fp16_a_non_finite_step_is_skipped_whole():
    """The step with an inf gradient changes no parameter, draws no CT_F mask (the k-th applied
    update uses the k-th draws) and lowers the loss scale."""
    precision = Precision("fp16")
    backward = {"n": 0}

    def poison(grad):   # the second batch's gradient is not finite
        backward["n"] += 1
        return grad * math.inf if backward["n"] == 2 else grad

    model = tiny_model()
    model.bert.encoder.layer[0].output.dense.weight.register_hook(poison)
    optimizer = build_optimizer(model, trainer_cfg("adamw_fused"))
    masker = ChildTuningF(model.named_parameters(), p=0.5, seed=3)
    masker.attach(optimizer)
    snapshots = []
    optimizer.register_step_post_hook(lambda *_: snapshots.append(
        [p.detach().clone() for p in model.parameters()]))
    scale = precision.scaler.get_scale()
    torch.manual_seed(123)
    out = train(model, batches(3), optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0), epochs=1, max_grad_norm=1.0, progress=False,
        precision=precision)
    n_params = sum(p.numel() for p in model.parameters())
    assert out["steps"] == 3 and out["skipped_steps"] == 1
    assert len(snapshots) == 2 and masker.seen == 2 * n_params   # two updates, two draws
    assert precision.scaler.get_scale() < scale
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_predictions_are_float_arrays():
    from childtune.run.loop import predict

    preds, labels = predict(tiny_model(num_labels=1), [
        b | {"labels": b["labels"].float()} for b in batches(2)], regression=True,
        precision=Precision("bf16"))
    assert preds.dtype.kind == "f" and preds.shape == labels.shape


def test_precision_is_part_of_the_run_identity():
    from childtune import jobs, records

    def config_hash(*overrides):
        return records.identity(jobs.resolved(list(overrides)))["config_hash"]

    hashes = {config_hash(f"trainer.precision={p}") for p in ("fp32", "bf16", "fp16")}
    assert len(hashes) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_keeps_frozen_entries_frozen():
    model = tiny_model().cuda()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_mask({n: p.shape for n, p in model.named_parameters()
                         if n in encoder_layer_names(model)}, 0.3, 0)
    optimizer = build_optimizer(model, trainer_cfg("adamw_fused"))
    ChildTuningD(model, masks, freeze_exactly=True).attach(optimizer)
    out = train(model, batches(4), optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0), epochs=1, max_grad_norm=1.0, progress=False,
        precision=Precision("fp16", "cuda"))
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p[~masks[n]], initial[n][~masks[n]]), n
    assert out["steps"] == 4


@pytest.mark.parametrize("overrides", [
    ("trainer.precision=bf16", "variant=child_tuning_d", "variant.decay_frozen=false"),
    ("trainer.optimizer=adamw_hf2021", "variant=child_tuning_d"),
    ("trainer.optimizer=adamw_hf2021", "trainer.precision=bf16", "variant=child_tuning_f")])
def test_runs_with_each_optimizer_and_precision_write_records_of_their_own(run_tiny, overrides):
    record = run_tiny(*overrides)
    default = run_tiny(*(o for o in overrides if o.startswith("variant")))
    assert record["status"] == "success" and record["train"]["skipped_steps"] == 0
    assert record["identity"]["config_hash"] != default["identity"]["config_hash"]
    assert record["metrics"] != default["metrics"] or record["train"]["last_loss"] != \
        default["train"]["last_loss"]
