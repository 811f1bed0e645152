"""The diagonal empirical Fisher information of CT_D, by the official recipe.

One pass over a loader (the caller decides train mode, batch size and shuffling); per batch:
forward, backward of the batch-mean loss, each in-scope tensor's gradient clipped to
`max_grad_norm` on its own, then `fisher += grad**2 / n_batches`."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

NON_MODEL_KEYS = ("idx",)


def model_inputs(model: torch.nn.Module, batch: dict) -> dict:
    """The batch without bookkeeping keys (`idx`), on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items() if k not in NON_MODEL_KEYS}


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**model_inputs(model, batch)).loss


def fisher_information(model: torch.nn.Module, loader: Iterable, names: list[str],
                       max_grad_norm: float | None = 1.0,
                       loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = default_loss,
                       progress: bool = False) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared (per-tensor clipped) gradient, for the named params.
    Leaves the model's gradients cleared."""
    params = dict(model.named_parameters())
    scoped = {n: params[n] for n in names}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in scoped.items()}
    n_batches = len(loader)
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="fisher", leave=False)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        with torch.no_grad():
            for name, param in scoped.items():
                if param.grad is None:
                    continue
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(param, max_grad_norm)
                fisher[name] += param.grad.float() ** 2 / n_batches
    model.zero_grad(set_to_none=True)
    return fisher
