"""Optimizer and schedule of the paper protocol: AdamW (or SGD) with no weight decay on the
parameters the model's no-decay list names, linear decay with warmup.

`trainer.optimizer` picks the update rule (each a different run identity):

    adamw_fused    torch's AdamW, fused kernel (the default; the fastest exact step, as the HF
                   Trainer's default): decay p <- p(1 - lr wd) first, then
                   p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    adamw_torch    the same rule through torch's default (per-tensor / foreach) kernels
    adamw_hf2021   the AdamW of transformers 4.7.0 that the official Child-Tuning code uses:
                   p <- p - lr sqrt(bc2)/bc1 * m / (sqrt(v) + eps), then p <- p - lr wd p
    sgd            torch's SGD (with `trainer.momentum`)

The two AdamW families differ at first order for small gradients: eps is added to the
uncorrected sqrt(v) (hf2021) instead of the corrected one, i.e. an effective eps larger by
1/sqrt(bc2) (31.6x at step 1). See README ("Where we differ from the official code")."""
from __future__ import annotations

import math

import torch

# The official code's list (run_glue.py); XLNet's `layer_norm.weight` is therefore decayed.
OFFICIAL_NO_DECAY = ("bias", "LayerNorm.weight")


def param_groups(model: torch.nn.Module, weight_decay: float,
                 no_decay=OFFICIAL_NO_DECAY) -> list[dict]:
    """Two groups, as the official code: no decay for parameters whose name contains any entry
    of `no_decay`, `weight_decay` for the rest."""
    decay, exempt = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (exempt if any(k in name for k in no_decay) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]


class AdamWHF2021(torch.optim.Optimizer):
    """The AdamW of transformers 4.7.0 (`transformers.optimization.AdamW`, correct_bias=True),
    which the official Child-Tuning optimizer copies. Per parameter, with t its step count:

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g*g
        p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
        p <- p - lr * wd * p                       (decoupled decay, after the update)

    Written from that formula with the same tensor operations in the same order (foreach
    lists: on the CPU these run the per-tensor kernels, so the parameters equal the 2021 loop
    bit for bit; tested). Parameters without a gradient are skipped (their step count too).
    With a zero first moment an entry's Adam update is exactly 0 whatever v is, so
    ChildTuningD's frozen-moment fill is exact here too (`zero_first_moment_is_no_update`)."""

    zero_first_moment_is_no_update = True

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamWHF2021 does not support sparse gradients")
            beta1, beta2 = group["betas"]
            grads, exp_avgs, exp_avg_sqs, step_sizes = [], [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                bias_correction1 = 1.0 - beta1 ** state["step"]
                bias_correction2 = 1.0 - beta2 ** state["step"]
                step_sizes.append(-(group["lr"] * math.sqrt(bias_correction2) / bias_correction1))
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
            torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)
            if group["weight_decay"] > 0.0:
                torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])
        return loss


def fused_adamw_supported(device: torch.device | str) -> bool:
    """Whether torch has a fused AdamW kernel for parameters on `device`."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.AdamW([probe], fused=True)
    except RuntimeError:
        return False
    return True


def _adam(cfg) -> dict:
    return {"lr": cfg.lr, "betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}


# trainer.optimizer -> its optimizer, from the parameter groups and the trainer config.
BUILDERS = {
    "adamw_fused": lambda groups, cfg: torch.optim.AdamW(groups, **_adam(cfg), fused=True),
    "adamw_torch": lambda groups, cfg: torch.optim.AdamW(groups, **_adam(cfg)),
    "adamw_hf2021": lambda groups, cfg: AdamWHF2021(groups, **_adam(cfg)),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum),
}
OPTIMIZERS = tuple(BUILDERS)   # adamw_fused, adamw_torch, adamw_hf2021, sgd


def build_optimizer(model: torch.nn.Module, trainer_cfg,
                    no_decay=OFFICIAL_NO_DECAY) -> torch.optim.Optimizer:
    """`trainer_cfg.optimizer` is one of OPTIMIZERS: validate.py refuses any other name (with
    a UserError) before a run builds anything."""
    groups = param_groups(model, trainer_cfg.weight_decay, no_decay)
    return BUILDERS[trainer_cfg.optimizer](groups, trainer_cfg)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int):
    """HF's get_linear_schedule_with_warmup: 0 -> lr over `warmup` steps, then linearly to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
