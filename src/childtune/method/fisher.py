"""The diagonal empirical Fisher information of CT_D, by the official recipe.

One pass over a loader (the caller decides batch size and shuffling) with the model in train
mode (dropout on), as the official code; per batch: forward, backward of the batch-mean loss,
each in-scope tensor's gradient clipped to `max_grad_norm` on its own, then
`fisher += grad**2 / n_batches`. The model's own mode is restored afterwards (a model from
`from_pretrained` is in eval mode). `statistics` is what the record keeps of a pass."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch

from . import chunking
from .batches import default_loss

FISHER_MODES = ("train", "eval")  # train: dropout on (official); eval: the pre-fix behaviour
STATISTICS = ("fisher_quantiles", "fisher_log10_histogram")  # the keys `statistics` gives


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


# ---------------------------------------------------------------- what the record keeps

def statistics(fisher: dict[str, torch.Tensor]) -> dict:
    """The quantiles and the log10 histogram of a pass's values (the record's `mask`)."""
    return {"fisher_quantiles": dict(zip(["min", "q25", "median", "q75", "max"],
                                         quantiles(fisher))),
            "fisher_log10_histogram": log10_histogram(fisher)}


def quantiles(fisher: dict[str, torch.Tensor]) -> list[float]:
    """Quantiles of an evenly strided sample (at most 2**20 values) of all Fisher values in
    dict order, gathered tensor by tensor (no concatenated copy of the values)."""
    flats = [f.reshape(-1) for f in fisher.values()]
    n = sum(f.numel() for f in flats)
    index = torch.linspace(0, n - 1, min(n, 1 << 20)).long()
    sample = torch.empty(index.numel(), dtype=flats[0].dtype, device=flats[0].device)
    start = 0
    for flat in flats:
        inside = (index >= start) & (index < start + flat.numel())
        sample[inside.to(sample.device)] = flat[(index[inside] - start).to(flat.device)]
        start += flat.numel()
    return torch.quantile(sample.double().cpu(),
                          torch.tensor([0, .25, .5, .75, 1.0], dtype=torch.double)).tolist()


def log10_histogram(fisher: dict[str, torch.Tensor], bins: int = 40) -> dict:
    """Counts of log10(Fisher) over `bins` equal bins between the smallest and largest positive
    value (edges has bins + 1 entries); exact zeros cannot be logged and are counted apart.
    Two passes, tensor by tensor: no concatenated copy of the values."""
    def logs():
        for f in fisher.values():
            yield f[f > 0].log10().cpu()

    total = sum(f.numel() for f in fisher.values())
    positive, low, high = 0, math.inf, -math.inf
    for x in logs():
        if x.numel():
            positive += x.numel()
            low, high = min(low, float(x.min())), max(high, float(x.max()))
    if positive == 0:
        return {"counts": [], "edges": [], "zeros": total}
    counts = torch.zeros(bins)
    for x in logs():
        part, edges = torch.histogram(x, bins=bins, range=(low, high))
        counts += part
    return {"counts": [int(c) for c in counts.tolist()], "edges": edges.tolist(),
            "zeros": total - positive}
