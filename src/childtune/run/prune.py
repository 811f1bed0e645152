"""The prune ablation's model: CT_D's trained model, kept by the CT_D run, reused by prune.

A prune run (variant=prune) is the CT_D run of the same settings and seed, evaluated as trained
and again with every in-scope non-child weight zeroed: it needs CT_D's trained model, not a
training of its own. With `runtime.keep_for_prune=true` (experiment=main and experiment=ablation
set it) a CT_D run keeps its trained model under `<runtime.cache_dir>/models/`
(checkpoints.py), and the prune run of the same seed loads it and trains nothing. When the kept
model or the CT_D record is missing, the prune run trains the CT_D model itself: the same
numbers (runs are deterministic), at the cost of one training.

Either way the prune record says where its model came from and whether its scores before
pruning equal the CT_D record's (section `prune`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoints, records
from ..errors import UserError
from ..mask_kinds import CT_D
from ..method.masks import prune_
from .hooks import RunHook

MODELS = "models"


@dataclass
class CtdRun:
    ident: dict                # the identity of the CT_D run that a prune run prunes
    record: records.RunRecord | None  # its success record, if written
    model_path: Path | None    # its kept trained model, when both exist


def _keeps(config: dict) -> bool:
    variant = config["variant"]
    return bool((config.get("runtime") or {}).get("keep_for_prune")) \
        and variant["mask"] == CT_D and not variant.get("prune")


def check(config: dict) -> None:
    if _keeps(config) and not config["runtime"].get("cache_dir"):
        raise UserError("runtime.keep_for_prune=true keeps CT_D models under "
                        "runtime.cache_dir; set it (or keep_for_prune=false)")


def ct_d_config(config: dict) -> dict:
    """The config of the CT_D run a prune run prunes: the same except the variant's name and
    prune flag."""
    return {**config, "variant": {**config["variant"], "name": "child_tuning_d", "prune": False}}


def ct_d_run(config: dict) -> CtdRun | None:
    """None unless `config` is a prune run."""
    if not config["variant"].get("prune"):
        return None
    ident = records.identity(ct_d_config(config))
    record_file = records.record_path(config["results_dir"], ident)
    record = records.read_record(record_file) if record_file.exists() else None
    if record is not None and not record.succeeded:
        record = None
    cache_dir = config["runtime"].get("cache_dir")
    model_path = checkpoints.path(cache_dir, MODELS, ident) if cache_dir else None
    usable = record is not None and model_path is not None and model_path.exists()
    return CtdRun(ident, record, model_path if usable else None)


def keep(config: dict, ident: dict, model) -> None:
    """After a CT_D run asked to keep its trained model (runtime.keep_for_prune)."""
    if _keeps(config):
        path = checkpoints.path(config["runtime"]["cache_dir"], MODELS, ident)
        checkpoints.save(model, path, ident)
        print(f"model kept for the prune ablation -> {path}")


def load_trained(model, ct_d: CtdRun) -> dict:
    """Loads the kept CT_D model into `model`; returns the training summary that loop.train
    would have (the CT_D record's; no seconds spent here)."""
    misfit = checkpoints.load(model, ct_d.model_path)
    if misfit:
        raise UserError(f"the kept CT_D model {ct_d.model_path} does not fit this model "
                        f"({misfit[:3]}); delete it (the prune run then trains its own)")
    train = ct_d.record.train
    return {**{k: train[k] for k in ("steps", "examples", "last_loss", "batch_order_sha256")},
            "skipped_steps": train.get("skipped_steps", 0), "seconds": 0.0,
            "examples_per_s": None, "history": ct_d.record.train_curve}


def summary(ct_d: CtdRun, metrics_before_prune: dict) -> dict:
    """What the prune record says about its model."""
    as_written = json.loads(json.dumps(records.clean_json(metrics_before_prune)))
    same = None if ct_d.record is None else as_written == ct_d.record.metrics
    return {"ct_d_record": str(records.record_path("", ct_d.ident)),
            "model": "kept CT_D model" if ct_d.model_path else "trained here",
            "before_prune_equals_ct_d_record": same}


# ---------------------------------------------------------------- the run's hooks

class PruneRun(RunHook):
    """variant=prune at the run's points (hooks.py): CT_D's kept model instead of a training,
    then the evaluation again with every in-scope non-child weight zeroed."""

    ct_d: CtdRun | None = None

    def replaces_training(self, ctx) -> dict | None:
        self.ct_d = ct_d_run(ctx.config)
        return load_trained(ctx.model, self.ct_d) if self.ct_d.model_path is not None else None

    def after_evaluation(self, ctx) -> None:
        metrics = ctx.result["metrics"]
        prune_(ctx.model, ctx.child.masks)
        ctx.result = {"metrics_before_prune": metrics, "prune": summary(self.ct_d, metrics)}
        ctx.result["metrics"], ctx.result["eval_loss"], pruned_seconds = ctx.evaluate()
        ctx.eval_seconds += pruned_seconds


class KeepsModel(RunHook):
    """A CT_D run asked to keep its trained model for prune (runtime.keep_for_prune)."""

    def after_record(self, ctx) -> dict:
        keep(ctx.config, ctx.ident, ctx.model)
        return {}


def hook(config: dict) -> RunHook | None:
    if config["variant"].get("prune"):
        return PruneRun()
    return KeepsModel() if _keeps(config) else None
