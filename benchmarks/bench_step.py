"""Question 1: what does Child-Tuning add to a training step?

One MiniLM training step (forward + backward on 16 x 64 tokens, global grad-norm clip, AdamW
step) for: vanilla (the project's AdamW), CT_F and CT_D through the project's maskers, CT_F
with its previous draws (32-bit integers; `previous_ct_f`), and CT_F / CT_D through an official-style optimizer written below (the 2021 HF AdamW loop with the
mask applied per tensor inside it, `Bernoulli(p).sample()` for F), all on one model, alternating.

    python benchmarks/bench_step.py [--quick] [--threads 1]
"""
from __future__ import annotations

import math
import time

import torch
from torch.distributions import Bernoulli

import common

P = 0.3


class OfficialStyleChildTuningAdamW(torch.optim.Optimizer):
    """A re-implementation of the official Child-Tuning optimizer's behaviour, for timing: a
    Python loop over tensors; CT_F multiplies each gradient by a fresh `Bernoulli(p).sample()`
    / p, CT_D by its fixed bool mask; then the 2021 HF AdamW update (bias correction, decoupled
    weight decay after the Adam step). `mask_seconds` accumulates the time spent masking."""

    def __init__(self, params, lr, mode=None, reserve_p=1.0, gradient_mask=None,
                 betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.mode, self.reserve_p, self.gradient_mask = mode, reserve_p, gradient_mask or {}
        self.mask_seconds = 0.0

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                start = time.perf_counter()
                if self.mode == "D" and p in self.gradient_mask:
                    grad *= self.gradient_mask[p]
                elif self.mode == "F":
                    keep = Bernoulli(grad.new_full(grad.size(), self.reserve_p)).sample()
                    grad *= keep / self.reserve_p
                self.mask_seconds += time.perf_counter() - start
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (
                    1.0 - beta1 ** state["step"])
                p.addcdiv_(exp_avg, denom, value=-size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def previous_ct_f(named_params, p: float, seed: int):
    """The project's CT_F masker as it was before issue 15: the same SFC64 stream, one 32-bit
    integer per entry (`bits=32`, what configs without variant.draw_bits still use)."""
    from childtune import ChildTuningF

    return ChildTuningF(named_params, p, seed=seed, bits=32)


class Timed:
    """Wraps a masker's apply() to add up the seconds spent in it."""

    def __init__(self, masker):
        self.masker, self.seconds = masker, 0.0
        inner = masker.apply

        def apply():
            start = time.perf_counter()
            inner()
            self.seconds += time.perf_counter() - start
        masker.apply = apply


def contenders(model, fused: bool):
    from omegaconf import OmegaConf

    from childtune import ChildTuningD, ChildTuningF, top_p_mask
    from childtune.method.scopes import encoder_layer_names
    from childtune.run.optim import build_optimizer, param_groups

    cfg = OmegaConf.create({"optimizer": "adamw_torch", "lr": 1e-6, "weight_decay": 0.01,
                            "adam_betas": [0.9, 0.999], "adam_eps": 1e-8})
    named = dict(model.named_parameters())
    layers = encoder_layer_names(model)
    g = torch.Generator().manual_seed(0)
    fake_fisher = {n: torch.rand(named[n].shape, generator=g) ** 4 for n in layers}
    d_masks = top_p_mask(fake_fisher, P)

    def fused_adamw():   # what `build_optimizer` would give with torch's fused CPU kernel
        return torch.optim.AdamW(param_groups(model, 0.01), lr=1e-6, fused=True)

    optimizers, timers = {}, {}
    for suffix, make in (("", lambda: build_optimizer(model, cfg)),) + (
            (("_fused", fused_adamw),) if fused else ()):
        optimizers["vanilla" + suffix] = make()
        for name, masker in (("ct_f", ChildTuningF(model.named_parameters(), P, seed=1)),
                             ("ct_d", ChildTuningD(model, d_masks)),
                             *((("previous_ct_f", previous_ct_f(model.named_parameters(), P, 1)),)
                               if not suffix else ())):
            optimizers[name + suffix] = make()
            timers[name + suffix] = Timed(masker)
            masker.attach(optimizers[name + suffix])
    official_masks = {named[n]: m for n, m in d_masks.items()}
    optimizers["official_ct_f"] = OfficialStyleChildTuningAdamW(
        param_groups(model, 0.01), lr=1e-6, mode="F", reserve_p=P)
    optimizers["official_ct_d"] = OfficialStyleChildTuningAdamW(
        param_groups(model, 0.01), lr=1e-6, mode="D", gradient_mask=official_masks)
    return optimizers, timers


def run(quick: bool = False, threads: int = 1) -> dict:
    common.setup(threads)
    model = common.minilm()
    model.train()
    batch = common.token_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers, timers = contenders(model, fused=not quick)
    # Warm every optimizer's state with optimizer-only steps on one set of gradients, so that
    # CT_F's entries are no longer "never kept yet" (AdamW's sqrt is slow on exact zeros; see
    # the README) and the timed steps show the steady state of a real run.
    model(**batch).loss.backward()
    grads = [p.grad.clone() for p in params]
    for opt in optimizers.values():
        for _ in range(2 if quick else 8):
            for p, g in zip(params, grads):
                p.grad.copy_(g)
            opt.step()
    parts = {name: {"forward_backward": [], "optimizer_side": [], "mask": []} for name in optimizers}

    def step(name):
        opt = optimizers[name]
        opt.zero_grad(set_to_none=True)
        mask_before = timers[name].seconds if name in timers else getattr(opt, "mask_seconds", 0.0)
        start = time.perf_counter()
        model(**batch).loss.backward()
        middle = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        end = time.perf_counter()
        mask_after = timers[name].seconds if name in timers else getattr(opt, "mask_seconds", 0.0)
        parts[name]["forward_backward"].append(middle - start)
        parts[name]["optimizer_side"].append(end - middle)
        parts[name]["mask"].append(mask_after - mask_before)

    rounds = 3 if quick else 10
    steps = common.interleaved({name: (lambda n=name: step(n)) for name in optimizers}, rounds)
    for name in parts:   # drop the warm-up round's parts, as `interleaved` drops its time
        for key in parts[name]:
            parts[name][key] = parts[name][key][-rounds:]
    med = {name: common.median(t) for name, t in steps.items()}
    fb_all = common.median([t for name in parts for t in parts[name]["forward_backward"]])
    opt_med = {name: common.median(parts[name]["optimizer_side"]) for name in parts}

    def base(name):   # each variant against vanilla with the same AdamW implementation
        return "vanilla_fused" if name.endswith("_fused") else "vanilla"

    def from_parts(name):
        return (fb_all + opt_med[name]) / (fb_all + opt_med[base(name)])

    rows = [[name, med[name] * 1e3, common.median(parts[name]["forward_backward"]) * 1e3,
             opt_med[name] * 1e3, common.median(parts[name]["mask"]) * 1e3,
             med[name] / med[base(name)], from_parts(name)] for name in optimizers]
    keys = {"ct_f_step_ratio": med["ct_f"] / med["vanilla"],
            "ct_d_step_ratio": med["ct_d"] / med["vanilla"],
            "official_ct_f_step_ratio": med["official_ct_f"] / med["vanilla"],
            "official_ct_d_step_ratio": med["official_ct_d"] / med["vanilla"],
            "previous_ct_f_step_ratio": med["previous_ct_f"] / med["vanilla"],
            "ct_f_mask_ms": common.median(parts["ct_f"]["mask"]) * 1e3,
            "previous_ct_f_mask_ms": common.median(parts["previous_ct_f"]["mask"]) * 1e3,
            "ct_f_step_ratio_from_parts": from_parts("ct_f"),
            "ct_d_step_ratio_from_parts": from_parts("ct_d"),
            "official_ct_f_step_ratio_from_parts": from_parts("official_ct_f")}
    if "vanilla_fused" in med:
        keys.update({"ct_f_step_ratio_fused_adamw": med["ct_f_fused"] / med["vanilla_fused"],
                     "ct_d_step_ratio_fused_adamw": med["ct_d_fused"] / med["vanilla_fused"],
                     "fused_adamw_vanilla_step_speedup": med["vanilla"] / med["vanilla_fused"]})
    table = common.markdown_table(
        ["step (16 x 64 tokens)", "step ms", "fwd+bwd ms", "clip+mask+AdamW ms", "mask ms",
         "ratio vs vanilla", "ratio from parts"], rows)
    return {"keys": keys, "table": table, "rounds": rounds,
            "raw_ms": {name: [round(t * 1e3, 1) for t in steps[name]] for name in steps}}


if __name__ == "__main__":
    common.cli(run, __doc__)
