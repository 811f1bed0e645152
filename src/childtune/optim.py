"""Optimizer and schedule of the paper protocol: AdamW (or SGD) with no weight decay on biases
and LayerNorm weights, linear decay with warmup."""
from __future__ import annotations

import math

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, trainer_cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, trainer_cfg.weight_decay)
    if trainer_cfg.optimizer == "adamw":
        # fused: one kernel per step, ~10% faster steps on CPU (benchmarks/), other rounding
        return torch.optim.AdamW(groups, lr=trainer_cfg.lr, betas=tuple(trainer_cfg.adam_betas),
                                 eps=trainer_cfg.adam_eps,
                                 fused=True if trainer_cfg.get("fused") else None)
    if trainer_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=trainer_cfg.lr, momentum=trainer_cfg.momentum)
    raise ValueError(f"trainer.optimizer must be adamw or sgd, got {trainer_cfg.optimizer!r}")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int):
    """HF's get_linear_schedule_with_warmup: 0 -> lr over `warmup` steps, then linearly to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
