"""The diagonal empirical Fisher information of CT_D, by the official recipe.

One pass over a loader (the caller decides batch size and shuffling) with the model in train
mode (dropout on), as the official code; per batch: forward, backward of the batch-mean loss,
each in-scope tensor's gradient clipped to `max_grad_norm` on its own, then
`fisher += grad**2 / n_batches`. The model's own mode is restored afterwards (a model from
`from_pretrained` is in eval mode)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch

from . import chunking

NON_MODEL_KEYS = ("idx",)
FISHER_MODES = ("train", "eval")  # train: dropout on (official); eval: the pre-fix behaviour


def model_inputs(model: torch.nn.Module, batch: dict) -> dict:
    """The batch without bookkeeping keys (`idx`), on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items() if k not in NON_MODEL_KEYS}


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**model_inputs(model, batch)).loss


def fisher_information(model: torch.nn.Module, loader: Iterable, names: list[str],
                       max_grad_norm: float | None = 1.0,
                       loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = default_loss,
                       progress: bool = False, mode: str = "train") -> dict[str, torch.Tensor]:
    """Mean over batches of the squared (per-tensor clipped) gradient, for the named params,
    computed in `mode` ("train": dropout on, the official recipe). Leaves the model's gradients
    cleared and its train/eval mode as it found them."""
    if mode not in FISHER_MODES:
        raise ValueError(f"mode must be one of {FISHER_MODES}, got {mode!r}")
    with _in_mode(model, mode == "train"):
        return _fisher_pass(model, loader, names, max_grad_norm, loss_fn, progress)


@contextmanager
def _in_mode(model: torch.nn.Module, training: bool):
    """Every module in train (or eval) mode inside; each module's own mode restored after."""
    before = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, was in before:
            module.training = was


def _fisher_pass(model, loader, names, max_grad_norm, loss_fn, progress):
    params = dict(model.named_parameters())
    scoped = {n: params[n] for n in names}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in scoped.items()}
    n_batches = len(loader)
    # The bar is only told the count and updated by hand: wrapping the loader (tqdm.auto
    # creates an iterator of it at construction) would draw the shuffle from the loader's
    # generator once more, and the pass would see another batch order.
    from tqdm.auto import tqdm

    bar = tqdm(total=n_batches, desc="fisher", disable=not progress, leave=False)
    largest = max((p.numel() for p in scoped.values()), default=0)
    scratch = torch.empty(min(chunking.CHUNK, largest),
                          device=next(iter(scoped.values())).device if scoped else None)
    for batch in loader:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        with torch.no_grad():
            grads = {n: p.grad for n, p in scoped.items() if p.grad is not None}
            coefs = (_clip_coefficients(list(grads.values()), max_grad_norm) if max_grad_norm
                     else [None] * len(grads))
            for (name, grad), coef in zip(grads.items(), coefs):
                _accumulate(fisher[name], grad, coef, n_batches, scratch)
        bar.update()
    bar.close()
    model.zero_grad(set_to_none=True)
    return fisher


def _clip_coefficients(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Each tensor's `clip_grad_norm_(g, max_norm)` coefficient, bit for bit, from a handful
    of multi-tensor ops instead of a Python call per tensor."""
    if not grads:
        return []
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    totals = torch.linalg.vector_norm(norms.unsqueeze(1), 2.0, dim=1)  # as clip_grad_norm_
    return list(torch.clamp(max_norm / (totals + 1e-6), max=1.0).unbind())


def _accumulate(fisher: torch.Tensor, grad: torch.Tensor, coef: torch.Tensor | None,
                n_batches: int, scratch: torch.Tensor) -> None:
    """grad *= coef (the clip, in place as `clip_grad_norm_` does), then
    fisher += grad.float()**2 / n_batches -- chunk by chunk, in a cached buffer and inline on
    the calling thread. Every step is elementwise, so the numbers are those of the
    whole-tensor expressions."""
    if not grad.is_contiguous():
        if coef is not None:
            grad.mul_(coef)
        grad, coef = grad.contiguous(), None
    flat, out = grad.view(-1), fisher.view(-1)
    for start in range(0, flat.numel(), chunking.CHUNK):
        chunk = flat[start:start + chunking.CHUNK]
        if coef is not None:
            chunk.mul_(coef)
        chunk = chunk.float()
        square = torch.mul(chunk, chunk, out=scratch[:chunk.numel()])
        out[start:start + chunking.CHUNK] += square.div_(n_batches)   # grad**2 / n_batches
