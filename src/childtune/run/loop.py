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
import random
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ..method.batches import default_loss, model_inputs
from ..records import compact_number


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
    a full pass over the gradients (benchmarks/profile_phases.py times it). On the CPU that
    pass is skipped when the factor, computed as torch does, is 1.0: x * 1.0 is x bit for bit
    (-0.0 and subnormals included; torch never flushes denormals unless told to), and a NaN or
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
    (fp16), a digest of the batch order (equal digests = the same examples in the same
    batches in the same order) and the per-step `history`: the training loss and the learning
    rate each optimizer step used, step 1 first (6 significant digits). `loss_fn(model, batch)`
    gives the training loss (regularizers wrap the default). `on_step` runs between steps (it
    may evaluate: `between_steps`)."""
    from tqdm.auto import tqdm

    precision = precision or Precision()
    order = hashlib.sha256()
    params = [p for p in model.parameters() if p.requires_grad]
    steps, skipped, examples, loss_value = 0, 0, 0, float("nan")
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=epochs * len(loader), desc="train", disable=not progress, leave=False)
    for epoch in range(epochs):
        for batch in loader:
            order.update(batch["idx"].numpy().tobytes())
            with precision.autocast():
                loss = loss_fn(model, batch)
            lr = optimizer.param_groups[0]["lr"]   # what this step's update uses
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
            history["loss"].append(compact_number(loss_value))
            history["lr"].append(compact_number(lr))
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if on_step:
                on_step({"step": steps, "epoch": epoch, "loss": loss_value, "lr": lr,
                         "grad_norm": float(grad_norm) if grad_norm is not None else None})
    bar.close()
    seconds = time.perf_counter() - start
    return {"steps": steps, "skipped_steps": skipped, "examples": examples, "seconds": seconds,
            "examples_per_s": examples / seconds if seconds else None,
            "last_loss": loss_value, "batch_order_sha256": order.hexdigest(), "history": history}


def predict(model, loader, regression: bool, precision: Precision | None = None,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels in the dataset's order, whatever order the loader's batches take
    (each batch's `idx` says where its examples go; e.g. `data.make_eval_loader` sorts them by
    length)."""
    return _predict(model, loader, regression, precision, progress, with_loss=False)[:2]


@torch.no_grad()
def _predict(model, loader, regression: bool, precision: Precision | None, progress: bool,
             with_loss: bool) -> tuple[np.ndarray, np.ndarray, float | None]:
    """predict(), and with `with_loss` the mean loss per example of the model's own head:
    cross-entropy, or squared error for regression (the task loss training minimises, without
    a regularizer's terms)."""
    from tqdm.auto import tqdm

    model.eval()
    precision = precision or Precision()
    preds, labels, where, loss_sum = [], [], [], 0.0
    # counted by hand, as the Fisher pass's bar: wrapping the loader would iterate it once more
    bar = tqdm(total=len(loader), desc="eval", disable=not progress, leave=False)
    for batch in loader:
        inputs = model_inputs(model, batch)
        inputs.pop("labels")
        with precision.autocast():
            logits = model(**inputs).logits.float()
        if with_loss:
            loss_sum += float(_loss_sum(logits, batch["labels"].to(logits.device),
                                        regression))
        preds.append((logits.squeeze(-1) if regression else logits.argmax(-1)).cpu())
        labels.append(batch["labels"])
        where.append(batch["idx"])
        bar.update()
    bar.close()
    order = torch.cat(where).argsort()
    loss = loss_sum / len(order) if with_loss and len(order) else None
    return torch.cat(preds)[order].numpy(), torch.cat(labels)[order].numpy(), loss


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype),
                                            reduction="sum")
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def evaluate(model, loaders: dict, regression: bool, metric_names,
             precision: Precision | None = None,
             progress: bool = False) -> tuple[dict, dict, float]:
    """Metrics and mean loss per eval split with the current (last) weights, and the seconds
    it took."""
    from .metrics import compute

    start = time.perf_counter()
    results, losses = {}, {}
    for split, loader in loaders.items():
        preds, labels, losses[split] = _predict(model, loader, regression, precision, progress,
                                                with_loss=True)
        results[split] = compute(metric_names, preds, labels)
    return results, losses, time.perf_counter() - start


@contextlib.contextmanager
def between_steps(model):
    """For an evaluation between training steps (`trainer.eval_every`): afterwards every
    module is back in its own train/eval mode (dropout active again) and every random stream
    is where it was -- torch's CPU and CUDA generators (iterating a DataLoader draws a seed
    from torch's), Python's and numpy's -- so training draws what it would have drawn without
    the evaluation, and the run's numbers are those of a run without it. (CT_F's masks and the
    regularizers' noise use streams that only a training step advances.)"""
    modes = [(m, m.training) for m in model.modules()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())
                                   if torch.cuda.is_initialized() else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for module, was in modes:
            module.training = was


class EvalCurve:
    """The record's eval curve (`history.eval`, with `trainer.eval_every`): the step of each
    evaluation, and per eval split the loss and each metric, a list a key."""

    def __init__(self):
        self.points: dict = {"step": []}

    def add(self, step: int, metrics: dict, losses: dict) -> None:
        self.points["step"].append(step)
        for split, values in metrics.items():
            into = self.points.setdefault(split, {})
            for name, value in {"loss": losses.get(split), **values}.items():
                into.setdefault(name, []).append(
                    None if value is None else compact_number(value))
