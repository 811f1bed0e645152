"""One fine-tuning run: (model, task, variant, seed) -> one run record.

    python -m childtune.train task=rte variant=child_tuning_d seed=1 data.n_train=1000

This module only composes: the run's objects live in one context (context.py), the steps
that build and use them in steps.py, and task transfer, prune and DDP plug in as hooks at
named points (hooks.py) chosen from the config (chosen_hooks)."""
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

from . import distributed, guard, memory, prune, reference_rows, steps, transfer, validate
from .context import RunContext
from .hooks import Hooks
from .tasks import get_task
from .. import records
from ..errors import UserError, resolving
from ..method import regularizers, variants
from ..method.masks import ChildTuningF


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


def chosen_hooks(config: dict) -> Hooks:
    """The hooks of this run, in their order at every point: DDP (under torchrun), transfer
    and prune (when the config asks for them)."""
    return Hooks(hook for hook in (distributed.hook(), transfer.hook(config), prune.hook(config))
                 if hook is not None)


def run(cfg: DictConfig) -> Path | None:
    config = resolving(lambda: OmegaConf.to_container(cfg, resolve=True))
    validate.validate(config)  # the one validation pass, before any work (bad input: UserError)
    ctx = RunContext(cfg, config, records.identity(config), get_task(cfg.task.name),
                     chosen_hooks(config), progress=show_progress(cfg))
    out = records.record_path(cfg.results_dir, ctx.ident)
    if out.exists() and not cfg.force and not ctx.hooks.any("reruns", ctx):
        print(f"skip: {out} exists (force=true reruns it)")
        return out
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    memory.keep_freed_memory()  # the next step reuses what one frees (no arithmetic changes)
    if config["variant"].get("reference"):  # the tables' reference rows: nothing is trained
        return write_reference_record(ctx)

    steps.load_data(ctx)
    seed_everything(cfg.seed)
    steps.load_model(ctx)
    ctx.hooks.run("after_model", ctx)  # transfer: the source run's encoder
    ctx.child = steps.build_child(ctx) if ctx.hooks.all("builds_child", ctx) else None
    ctx.hooks.run("after_child", ctx)  # DDP: rank 0's fixed mask on every rank
    # after the Fisher pass, which thus sees the plain model and the plain task loss
    ctx.regularizer = regularizers.build(config.get("regularizer"), ctx.model, seed=cfg.seed)
    steps.make_loaders(ctx)
    ctx.hooks.run("after_loaders", ctx)  # DDP: this rank's slice of every batch
    steps.build_optimizer(ctx)
    with steps.open_logger(ctx):
        steps.train(ctx)  # prune: CT_D's kept model instead; DDP: the ranks compared after
        if not ctx.writes:  # a DDP rank other than 0: rank 0 writes
            return None
        steps.evaluate(ctx)  # prune: evaluated again, pruned
        path, record = write_record(ctx)
    print(done_line(ctx, record, path))
    return path


def write_reference_record(ctx: RunContext) -> Path:
    cfg, config, ident, task = ctx.cfg, ctx.config, ctx.ident, ctx.task
    seed_everything(cfg.seed)
    record = reference_rows.record(cfg, config, ident, task).adding(
        environment=records.environment(), command=rerun_command(),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return records.write_record(cfg.results_dir, record)


def write_record(ctx: RunContext) -> tuple[Path, records.RunRecord]:
    record = build_record(ctx).adding(**ctx.hooks.merged("after_record", ctx))  # transfer, prune
    record = record.adding(data=ctx.data_info)  # by file names and content, not machine paths
    ctx.logger.log_record(record)
    record = record.adding(logger=ctx.logger.info())
    return records.write_record(ctx.cfg.results_dir, record), record


def done_line(ctx: RunContext, record: records.RunRecord, path: Path) -> str:
    ident, regularizer = ctx.ident, ctx.regularizer
    value = record.headline.value
    shown = ident["variant"] + ("" if regularizer.name == "none" else f"+{regularizer.name}")
    return (f"{ident['model']} {ident['task']} {shown} seed={ident['seed']}: "
            f"{ctx.task.headline}={'n/a' if value is None else f'{value:.4f}'} "
            f"train {record.timings['train_seconds']:.1f}s "
            f"eval {record.timings['eval_seconds']:.1f}s -> {path}")


def build_record(ctx: RunContext) -> records.RunRecord:
    """The success record of a trained and evaluated run."""
    ident, config, task, model, child = ctx.ident, ctx.config, ctx.task, ctx.model, ctx.child
    result, trained, warmup, eval_seconds = ctx.result, ctx.trained, ctx.warmup, ctx.eval_seconds
    regularizer, in_sync = ctx.regularizer, ctx.in_sync
    history = {"train": trained.get("history"),
               "eval": ctx.curve.points if ctx.cfg.trainer.get("eval_every") else None}
    mask_info = child.info
    if isinstance(child.masker, ChildTuningF):
        mask_info["observed_keep_rate"] = child.masker.keep_rate()
    return records.build(
        "success", ident, config, **result, headline=(task.headline, task.eval_splits[0]),
        mask=mask_info,
        parameters=variants.parameter_counts(model, child),
        history={k: v for k, v in history.items() if v is not None},
        regularizer=regularizer.info(),
        **in_sync,
        train={k: trained[k] for k in ("steps", "skipped_steps", "examples", "last_loss",
                                       "batch_order_sha256")} | {"warmup_steps": warmup},
        timings={"train_seconds": trained["seconds"], "eval_seconds": eval_seconds,
                 "fisher_seconds": mask_info.get("fisher_seconds", 0.0),
                 "train_examples_per_s": trained["examples_per_s"]},
        environment=records.environment(),
        command=rerun_command(),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


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
