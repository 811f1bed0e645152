"""The plain training loop and evaluation. The optimizer step is ours: gradients are clipped,
then `optimizer.step()` runs its pre-hooks (the Child-Tuning masker) and the update.

Precision (`trainer.precision`): the parameters, their gradients and the optimizer state are
float32 under every precision; bf16 and fp16 run the forward passes (training and evaluation)
under `torch.autocast`. fp16 also scales the loss (GradScaler), and the step is

    backward(scaled loss) -> unscale -> clip -> optimizer.step() (masker pre-hook, update)
    -> scaler.update()

so clipping and the masks act on the true gradients, exactly as in fp32. A step whose
unscaled gradients are not finite is skipped whole: `optimizer.step()` is not called, so no
step hook runs -- CT_F draws no mask (its stream is indexed by the updates actually applied,
the k-th update always uses the k-th draws), a regularizer does not step. The learning-rate
schedule still advances per batch. The record counts `skipped_steps`."""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from .fisher import default_loss, model_inputs


PRECISIONS = ("fp32", "bf16", "fp16")


class TrainingDiverged(RuntimeError):
    pass


class Precision:
    """`trainer.precision` on one device type: the autocast context of forward passes and, for
    fp16, the gradient scaler (GradScaler works on the CPU too; the run config allows fp16 on
    CUDA only, see validate.check_device_support)."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss, optimizer, params, max_grad_norm) -> tuple:
        """(gradient norm before clipping or None, whether the optimizer stepped)."""
        if self.scaler is None:
            loss.backward()
            grad_norm = clip_grad_norm(params, max_grad_norm) if max_grad_norm else None
            optimizer.step()
            return grad_norm, True
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)   # the true gradients, before clipping and masking
        grad_norm = (clip_grad_norm(params, max_grad_norm) if max_grad_norm
                     else torch.nn.utils.get_total_norm([p.grad for p in params
                                                         if p.grad is not None]))
        stepped = math.isfinite(float(grad_norm))   # not finite <=> some gradient is inf/NaN
        if stepped:
            optimizer.step()   # not scaler.step: gradients are unscaled, hooks see them as is
        self.scaler.update()   # lowers the scale after a non-finite step (unscale_ saw it)
        return grad_norm, stepped


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_(params, max_norm)`, bit for bit, minus its no-op: torch
    multiplies every gradient by min(max_norm / (norm + 1e-6), 1) even when that factor is 1.0,
    a full pass over the gradients (MiniLM: 22.7M values, ~10 ms). On the CPU that pass is
    skipped when the factor, computed as torch does, is 1.0: x * 1.0 is x bit for bit (-0.0
    and subnormals included; torch never flushes denormals unless told to), and a NaN or
    infinite gradient makes the norm NaN or inf, whose factor is not 1.0. On other devices
    reading the factor would wait for the device, so the multiply always runs there."""
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if total.device.type != "cpu" or not float(max_norm / (total + 1e-6)) >= 1.0:  # torch's factor
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def train(model, loader, optimizer, scheduler, epochs: int, max_grad_norm: float | None,
          progress: bool = True, on_step: Callable[[dict], None] | None = None,
          loss_fn: Callable = default_loss, precision: Precision | None = None) -> dict:
    """Returns what the record keeps: steps, seconds, examples/s, last loss, skipped steps
    (fp16) and a digest of the batch order (equal digests = the same examples in the same
    batches in the same order). `loss_fn(model, batch)` gives the training loss (regularizers
    wrap the default)."""
    from tqdm.auto import tqdm

    precision = precision or Precision()
    order = hashlib.sha256()
    params = [p for p in model.parameters() if p.requires_grad]
    steps, skipped, examples, loss_value = 0, 0, 0, float("nan")
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=epochs * len(loader), desc="train", disable=not progress, leave=False)
    for epoch in range(epochs):
        for batch in loader:
            order.update(batch["idx"].numpy().tobytes())
            with precision.autocast():
                loss = loss_fn(model, batch)
            grad_norm, stepped = precision.backward_and_step(loss, optimizer, params,
                                                             max_grad_norm)
            if stepped:
                scheduler.step()
            else:   # the schedule advances per batch (a skipped first step makes torch warn)
                skipped += 1
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
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
    return {"steps": steps, "skipped_steps": skipped, "examples": examples, "seconds": seconds,
            "examples_per_s": examples / seconds if seconds else None,
            "last_loss": loss_value, "batch_order_sha256": order.hexdigest()}


@torch.no_grad()
def predict(model, loader, regression: bool,
            precision: Precision | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels in the dataset's order, whatever order the loader's batches take
    (each batch's `idx` says where its examples go; e.g. `data.make_eval_loader` sorts them by
    length)."""
    model.eval()
    precision = precision or Precision()
    preds, labels, where = [], [], []
    for batch in loader:
        inputs = model_inputs(model, batch)
        inputs.pop("labels")
        with precision.autocast():
            logits = model(**inputs).logits.float()
        preds.append((logits.squeeze(-1) if regression else logits.argmax(-1)).cpu())
        labels.append(batch["labels"])
        where.append(batch["idx"])
    order = torch.cat(where).argsort()
    return torch.cat(preds)[order].numpy(), torch.cat(labels)[order].numpy()


def evaluate(model, loaders: dict, regression: bool, metric_names,
             precision: Precision | None = None) -> tuple[dict, float]:
    """Metrics per eval split with the current (last) weights, and the seconds it took."""
    from .metrics import compute

    start = time.perf_counter()
    results = {split: compute(metric_names, *predict(model, loader, regression, precision))
               for split, loader in loaders.items()}
    return results, time.perf_counter() - start
