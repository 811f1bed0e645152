"""The steps of one run, each filling or using the run's context (context.RunContext);
train.run calls them in order, with the hooks' points between them (hooks.py)."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from . import data, distributed, loop, models, optim, tokens
from .. import loggers
from ..method import variants
from .metrics import NotFinite, check_finite


# ---------------------------------------------------------------- before training

def load_data(ctx) -> None:
    """The task's splits (subsampled), described for the record, and tokenized."""
    cfg, task = ctx.cfg, ctx.task
    ctx.data_dir = data.resolve_data_dir(cfg.data.dir)
    splits = data.load_splits(task, ctx.data_dir, cfg.data.n_train, cfg.data.subsample_seed)
    ctx.data_info = data.describe(task, ctx.data_dir, splits)
    ctx.tokenizer = tokenizer = models.load_tokenizer(cfg.model)
    length = cfg.data.max_seq_length
    ctx.encoded = {name: data.Encoded(split, tokenizer, length, task.is_regression,
                                      tokens.cached_features(split, tokenizer, length,
                                                             ctx.cache_dir, f"{task.name}-{name}"))
                   for name, split in splits.items()}


def load_model(ctx) -> None:
    cfg = ctx.cfg
    ctx.model = models.load_model(cfg.model, ctx.task.num_labels).to(
        models.device(cfg.runtime.device))
    ctx.module = ctx.model


def mask_cache_parts(ctx) -> dict:
    """What, besides the variant, a fixed mask depends on: its cache key's parts (model, task,
    data, batch size, and what the hooks add)."""
    config = ctx.config
    return {"model": config["model"], "task": ctx.task.name, "data": {
        k: v for k, v in config["data"].items() if k not in ("dir", "group_by_length")},
        "train_sha256": ctx.data_info["sha256"]["train"],  # the examples the mask is built on
        "batch_size": ctx.cfg.trainer.batch_size} | ctx.mask_cache_parts


def build_child(ctx) -> variants.ChildNetwork:
    """The variant's child network: its masker and, for a fixed mask, the masks (computed by
    a Fisher pass over the training set, or read from the mask cache)."""
    cfg, train = ctx.cfg, ctx.encoded["train"]
    return variants.build(
        ctx.config["variant"], ctx.model,
        fisher_loader=lambda seed: data.make_loader(train, cfg.trainer.batch_size, seed),
        max_grad_norm=cfg.trainer.max_grad_norm, seed=cfg.seed,
        cache_dir=ctx.cache_dir,
        cache_parts=mask_cache_parts(ctx), progress=ctx.progress)


def make_loaders(ctx) -> None:
    cfg = ctx.cfg
    ctx.train_loader = data.make_loader(ctx.encoded["train"], cfg.trainer.batch_size, cfg.seed,
                                        group_by_length=cfg.data.get("group_by_length", False))
    ctx.eval_loaders = {name: data.make_eval_loader(ctx.encoded[name], cfg.trainer.eval_batch_size)
                        for name in ctx.task.eval_splits}


def build_optimizer(ctx) -> None:
    """The schedule, sized by the train loader, the optimizer, and the step hooks on it."""
    cfg, masker = ctx.cfg, ctx.child.masker
    ctx.total_steps = cfg.trainer.epochs * len(ctx.train_loader)
    ctx.warmup = optim.warmup_steps(ctx.total_steps, cfg.trainer.warmup_ratio)
    if cfg.trainer.official_warmup and masker is not None:
        ctx.warmup = 0  # the official CT trainers drop warmup_ratio (see README)
    ctx.optimizer = optim.build_optimizer(ctx.model, cfg.trainer,
                                          cfg.model.get("no_decay", optim.OFFICIAL_NO_DECAY))
    ctx.scheduler = optim.linear_schedule(ctx.optimizer, ctx.total_steps, ctx.warmup)
    ctx.regularizer.attach(ctx.optimizer)  # before the masker: its step hooks run first
    if masker is not None:
        masker.attach(ctx.optimizer)
        distributed.check_masks_reach_optimizer(masker, ctx.optimizer)


@contextmanager
def open_logger(ctx):
    """The run's logger (a NullLogger where the hooks say this process does not write),
    closed on every exit, told whether the run failed."""
    ctx.logger = (loggers.build_logger(ctx.cfg.logger, ctx.config, ctx.ident)
                  if ctx.writes else loggers.NullLogger())
    failed = True
    try:
        yield ctx.logger
        failed = False
    finally:
        ctx.logger.close(failed)


# ---------------------------------------------------------------- training and evaluation

def train(ctx) -> None:
    """The training loop (unless a hook supplies the trained model), evaluating between steps
    every `trainer.eval_every` steps."""
    cfg, model = ctx.cfg, ctx.model
    ctx.precision = loop.Precision(cfg.trainer.precision, next(model.parameters()).device)
    every, steps_per_epoch = cfg.trainer.get("eval_every"), len(ctx.train_loader)
    writes = ctx.writes

    def on_step(values: dict) -> None:
        ctx.logger.log_step({**values, "epoch": values["step"] / steps_per_epoch})
        step = values["step"]
        if every and step % every == 0 and step < ctx.total_steps and writes:
            with loop.between_steps(model):  # training goes on as if nothing happened
                metrics, losses, _ = ctx.evaluate()
            ctx.curve.add(step, metrics, losses)
            ctx.logger.log_eval(step, metrics, losses)

    ctx.trained = ctx.hooks.first("replaces_training", ctx)
    if ctx.trained is None:
        ctx.hooks.run("before_training", ctx)
        ctx.trained = loop.train(ctx.module, ctx.train_loader, ctx.optimizer, ctx.scheduler,
                                 cfg.trainer.epochs, cfg.trainer.max_grad_norm,
                                 progress=ctx.progress, on_step=on_step,
                                 loss_fn=ctx.regularizer.loss, precision=ctx.precision)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NotFinite("the trained weights hold NaN or inf (they blew up after the last loss "
                        "check)")
    ctx.hooks.run("after_training", ctx)


def evaluate(ctx) -> None:
    """The final evaluation on the dev sets (then the hooks'), whose metrics must be finite."""
    metrics, losses, ctx.eval_seconds = ctx.evaluate()
    ctx.logger.log_eval(ctx.trained["steps"], metrics, losses)
    if ctx.cfg.trainer.get("eval_every"):
        ctx.curve.add(ctx.trained["steps"], metrics, losses)
    ctx.result = {"metrics": metrics, "eval_loss": losses}
    ctx.hooks.run("after_evaluation", ctx)
    check_finite(ctx.result["metrics"])
