"""The plain training loop and evaluation. The optimizer step is ours: gradients are clipped,
then `optimizer.step()` runs its pre-hooks (the Child-Tuning masker) and the update."""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .fisher import default_loss, model_inputs


class TrainingDiverged(RuntimeError):
    pass


def train(model, loader, optimizer, scheduler, epochs: int, max_grad_norm: float | None,
          progress: bool = True, on_step: Callable[[dict], None] | None = None,
          loss_fn: Callable = default_loss) -> dict:
    """Returns what the record keeps: steps, seconds, examples/s, last loss and a digest of the
    batch order (equal digests = the same examples in the same batches in the same order).
    `loss_fn(model, batch)` gives the training loss (regularizers wrap the default)."""
    from tqdm.auto import tqdm

    order = hashlib.sha256()
    params = [p for p in model.parameters() if p.requires_grad]
    steps, examples, loss_value = 0, 0, float("nan")
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=epochs * len(loader), desc="train", disable=not progress, leave=False)
    for epoch in range(epochs):
        for batch in loader:
            order.update(batch["idx"].numpy().tobytes())
            loss = loss_fn(model, batch)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                         if max_grad_norm else None)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss is {loss_value} at step {steps + 1}")
            steps += 1
            examples += len(batch["idx"])
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if on_step:
                on_step({"step": steps, "epoch": epoch, "loss": loss_value,
                         "lr": scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm) if grad_norm is not None else None})
    bar.close()
    seconds = time.perf_counter() - start
    return {"steps": steps, "examples": examples, "seconds": seconds,
            "examples_per_s": examples / seconds if seconds else None,
            "last_loss": loss_value, "batch_order_sha256": order.hexdigest()}


@torch.no_grad()
def predict(model, loader, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels in the dataset's order, whatever order the loader's batches take
    (each batch's `idx` says where its examples go; e.g. `data.make_eval_loader` sorts them by
    length)."""
    model.eval()
    preds, labels, where = [], [], []
    for batch in loader:
        inputs = model_inputs(model, batch)
        inputs.pop("labels")
        logits = model(**inputs).logits
        preds.append((logits.squeeze(-1) if regression else logits.argmax(-1)).cpu())
        labels.append(batch["labels"])
        where.append(batch["idx"])
    order = torch.cat(where).argsort()
    return torch.cat(preds)[order].numpy(), torch.cat(labels)[order].numpy()


def evaluate(model, loaders: dict, regression: bool, metric_names) -> tuple[dict, float]:
    """Metrics per eval split with the current (last) weights, and the seconds it took."""
    from .metrics import compute

    start = time.perf_counter()
    results = {split: compute(metric_names, *predict(model, loader, regression))
               for split, loader in loaders.items()}
    return results, time.perf_counter() - start
