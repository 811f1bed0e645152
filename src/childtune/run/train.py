"""One fine-tuning run: (model, task, variant, seed) -> one run record.

    python -m childtune.train task=rte variant=child_tuning_d seed=1 data.n_train=1000

This module only composes the steps; each step lives in its own module."""
from __future__ import annotations

import random
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import (data, distributed, guard, loop, memory, models, optim, prune, reference_rows,
               tokens, transfer, validate)
from . import metrics as metrics_
from .tasks import get_task
from .. import loggers, records
from ..errors import UserError, resolving
from ..method import regularizers, variants


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rerun_command() -> str:
    """The single-run command line that reproduces this run (also inside a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (called from Python)
        overrides = sys.argv[1:]
    return "python -m childtune.train " + " ".join(shlex.quote(o) for o in overrides)


check_config = validate.check_config  # the config alone (validate.validate adds the environment)


def show_progress(cfg: DictConfig) -> bool:
    """Progress bars for a single run only: a multirun's jobs, side by side, would draw over
    each other's bars (each job's train.log and final line tell how it went, sweep.py)."""
    return bool(cfg.runtime.progress) and not guard.in_multirun()


def run(cfg: DictConfig) -> Path:
    config = resolving(lambda: OmegaConf.to_container(cfg, resolve=True))
    validate.validate(config)  # the one validation pass, before any work (bad input: UserError)
    ident = records.identity(config)
    out = records.record_path(cfg.results_dir, ident)
    if out.exists() and not cfg.force and not transfer.needs_encoder(cfg, ident):
        print(f"skip: {out} exists (force=true reruns it)")
        return out
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    memory.keep_freed_memory()  # the next step reuses what one frees (no arithmetic changes)

    task = get_task(cfg.task.name)
    if config["variant"].get("reference"):  # the tables' reference rows: nothing is trained
        seed_everything(cfg.seed)
        record = reference_rows.record(cfg, config, ident, task)
        record.update(environment=records.environment(), command=rerun_command(),
                      finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return records.write_record(cfg.results_dir, record)
    data_dir = data.resolve_data_dir(cfg.data.dir)
    splits = data.load_splits(task, data_dir, cfg.data.n_train, cfg.data.subsample_seed)
    data_info = data.describe(task, data_dir, splits)
    tokenizer = models.load_tokenizer(cfg.model)
    token_cache = Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else None
    encoded = {name: data.Encoded(split, tokenizer, cfg.data.max_seq_length, task.is_regression,
                                  tokens.cached_features(split, tokenizer, cfg.data.max_seq_length,
                                                         token_cache, f"{task.name}-{name}"))
               for name, split in splits.items()}

    seed_everything(cfg.seed)
    model = models.load_model(cfg.model, task.num_labels).to(models.device(cfg.runtime.device))
    source = transfer.start_from_source(cfg, model)  # task transfer: the source run's encoder
    child = distributed.build_child(lambda: variants.build(
        config["variant"], model,
        fisher_loader=lambda s: data.make_loader(encoded["train"], cfg.trainer.batch_size, s),
        max_grad_norm=cfg.trainer.max_grad_norm, seed=cfg.seed,
        cache_dir=Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else None,
        cache_parts={"model": config["model"], "task": task.name, "data": {
            k: v for k, v in config["data"].items() if k not in ("dir", "group_by_length")},
            "train_sha256": data_info["sha256"]["train"],  # the examples the mask is built on
            "batch_size": cfg.trainer.batch_size} | transfer.mask_cache_parts(source),
        progress=show_progress(cfg)), config["variant"], model)  # DDP: rank 0's mask
    # after the Fisher pass, which thus sees the plain model and the plain task loss
    regularizer = regularizers.build(config.get("regularizer"), model, seed=cfg.seed)
    ct_d = prune.ct_d_run(config)  # variant=prune: the CT_D run it prunes (None otherwise)

    train_loader = distributed.shard_batches(
        data.make_loader(encoded["train"], cfg.trainer.batch_size, cfg.seed,
                         group_by_length=cfg.data.get("group_by_length", False)))
    eval_loaders = {name: data.make_eval_loader(encoded[name], cfg.trainer.eval_batch_size)
                    for name in task.eval_splits}
    total_steps = cfg.trainer.epochs * len(train_loader)
    warmup = optim.warmup_steps(total_steps, cfg.trainer.warmup_ratio)
    if cfg.trainer.official_warmup and child.masker is not None:
        warmup = 0  # the official CT trainers drop warmup_ratio (see README)
    optimizer = optim.build_optimizer(model, cfg.trainer,
                                      cfg.model.get("no_decay", optim.OFFICIAL_NO_DECAY))
    scheduler = optim.linear_schedule(optimizer, total_steps, warmup)
    regularizer.attach(optimizer)  # before the masker: its step hooks run first
    if child.masker is not None:
        child.masker.attach(optimizer)
        distributed.check_masks_reach_optimizer(child.masker, optimizer)

    logger = (loggers.build_logger(cfg.logger, config, ident) if distributed.is_main()
              else loggers.NullLogger())  # under DDP, rank 0 alone logs
    failed = True
    try:
        record = _train_and_evaluate(cfg, config, ident, task, model, child, regularizer,
                                     train_loader, eval_loaders, optimizer, scheduler, warmup,
                                     logger, ct_d)
        if record is None:  # a DDP rank other than 0: rank 0 evaluates and writes the record
            failed = False
            return None
        record.update(transfer.finish(cfg, ident, task, model, tokenizer, data_dir, source))
        prune.keep(config, ident, model)  # a CT_D run asked to keep its model for prune
        record["data"] = data_info  # by file names and content, not the machine's path
        logger.log_record(record)
        record["logger"] = logger.info()
        path = records.write_record(cfg.results_dir, record)
        failed = False
    finally:
        logger.close(failed)
    value = record["headline"]["value"]
    shown = ident["variant"] + ("" if regularizer.name == "none" else f"+{regularizer.name}")
    print(f"{ident['model']} {ident['task']} {shown} seed={ident['seed']}: "
          f"{task.headline}={'n/a' if value is None else f'{value:.4f}'} "
          f"train {record['timings']['train_seconds']:.1f}s "
          f"eval {record['timings']['eval_seconds']:.1f}s -> {path}")
    return path


def _train_and_evaluate(cfg, config, ident, task, model, child, regularizer, train_loader,
                        eval_loaders, optimizer, scheduler, warmup, logger, ct_d) -> dict | None:
    precision = loop.Precision(cfg.trainer.precision, next(model.parameters()).device)
    progress, every = show_progress(cfg), cfg.trainer.get("eval_every")
    total_steps, curve = cfg.trainer.epochs * len(train_loader), loop.EvalCurve()

    def evaluate():
        return loop.evaluate(model, eval_loaders, task.is_regression, task.metrics, precision,
                             progress)

    def on_step(values: dict) -> None:
        logger.log_step({**values, "epoch": values["step"] / len(train_loader)})
        step = values["step"]
        if every and step % every == 0 and step < total_steps and distributed.is_main():
            with loop.between_steps(model):  # training goes on as if nothing happened
                metrics, losses, _ = evaluate()
            curve.add(step, metrics, losses)
            logger.log_eval(step, metrics, losses)

    if ct_d is not None and ct_d.model_path is not None:
        trained = prune.load_trained(model, ct_d)  # prune: CT_D's kept model, no training
    else:
        trained = loop.train(distributed.wrap(model, cfg.seed), train_loader, optimizer,
                             scheduler, cfg.trainer.epochs, cfg.trainer.max_grad_norm,
                             progress=progress, on_step=on_step, loss_fn=regularizer.loss,
                             precision=precision)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise metrics_.NotFinite("the trained weights hold NaN or inf (they blew up after the "
                                 "last loss check)")
    in_sync = distributed.check_in_sync(model, child.masks)  # {} unless under torchrun
    if not distributed.is_main():
        return None
    metrics, losses, eval_seconds = evaluate()
    logger.log_eval(trained["steps"], metrics, losses)
    if every:
        curve.add(trained["steps"], metrics, losses)
    history = {"train": trained.get("history"), "eval": curve.points if every else None}
    result = {"metrics": metrics, "eval_loss": losses}
    if ct_d is not None:
        variants.M.prune_(model, child.masks)
        result = {"metrics_before_prune": metrics, "prune": prune.summary(ct_d, metrics)}
        result["metrics"], result["eval_loss"], pruned_seconds = evaluate()
        eval_seconds += pruned_seconds

    metrics_.check_finite(result["metrics"])
    mask_info = child.info
    if isinstance(child.masker, variants.M.ChildTuningF):
        mask_info["observed_keep_rate"] = child.masker.keep_rate()
    headline_split = task.eval_splits[0]
    return {
        "status": "success",
        "identity": ident,
        "config": config,
        **result,
        "headline": {"metric": task.headline, "split": headline_split,
                     "value": result["metrics"][headline_split][task.headline]},
        "mask": mask_info,
        "parameters": variants.parameter_counts(model, child),
        "history": {k: v for k, v in history.items() if v is not None},
        "regularizer": regularizer.info(),
        **in_sync,
        "train": {k: trained[k] for k in ("steps", "skipped_steps", "examples", "last_loss",
                                          "batch_order_sha256")} | {"warmup_steps": warmup},
        "timings": {"train_seconds": trained["seconds"], "eval_seconds": eval_seconds,
                    "fisher_seconds": mask_info.get("fisher_seconds", 0.0),
                    "train_examples_per_s": trained["examples_per_s"]},
        "environment": records.environment(),
        "command": rerun_command(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config",
            version_base="1.3")
def _main(cfg: DictConfig) -> None:
    distributed.setup(cfg)  # joins torchrun's process group, if any
    guard.guarded_run(cfg, run, rerun_command)  # error/failure records, exit codes
    distributed.teardown()  # reached when every rank succeeded; else the process exits anyway


def main() -> None:
    try:
        validate.check_overrides(sys.argv[1:])  # before Hydra, which shows a traceback for them
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    _main()


if __name__ == "__main__":
    main()
