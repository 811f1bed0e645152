"""Transfer studies, the training side (validate calls `check`; `TransferHook` plugs the rest
into the run, hooks.py).

Task transfer (`transfer.source_task=A`): the run starts from the encoder of the run that is the
same in every setting (model, variant, seed, protocol, ...) but trained on task A; the new task's
head is freshly initialised. That source run keeps its encoder when asked
(`runtime.save_encoder=true`) under `<runtime.cache_dir>/encoders/`, named by the source run's
identity (jobs.encoder_path). A run whose source encoder is missing trains the source run first,
as an ordinary run in a subprocess (which also writes the source's record).

Domain transfer (`transfer.eval_tasks=[...]`): after training, the model is also evaluated on
the other NLI tasks listed (its own task is skipped), on their labelled test split if they have
one, else their first eval split. Predictions and gold labels are mapped to a common label
space: entailment / neutral / contradiction when both tasks have those three classes, else
entailment / not-entailment (neutral and contradiction count as not-entailment)."""
from __future__ import annotations

import fcntl
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from .hooks import RunHook
from .tasks import Task, get_task
from .. import checkpoints, jobs, records
from ..errors import UserError

HEAD_PREFIXES = ("classifier.", "logits_proj.", "sequence_summary.", "score.")
THREE_WAY = ("entailment", "neutral", "contradiction")
BINARY = ("entailment", "not_entailment")


# ---------------------------------------------------------------- label spaces

def label_space(source: Task, target: Task) -> tuple[str, ...]:
    """The common label space of a model trained on `source` evaluated on `target`."""
    for task in (source, target):
        if task.labels is None or "entailment" not in {n.lower() for n in task.labels}:
            raise UserError(f"domain transfer maps entailment labels, but task {task.name!r} "
                            f"has none; list only NLI tasks (rte, sick, mnli, qnli) in "
                            f"transfer.eval_tasks")
    both_three_way = all(set(THREE_WAY) <= {n.lower() for n in t.labels} for t in (source, target))
    return THREE_WAY if both_three_way else BINARY


def to_space(task: Task, space: tuple[str, ...]) -> list[int]:
    """Index in `space` of each of the task's label ids."""
    names = [n.lower() for n in task.labels]
    if space == BINARY:
        names = [n if n == "entailment" else "not_entailment" for n in names]
    return [space.index(n) for n in names]


def check(config: dict) -> None:
    """Bad transfer settings fail before any data is read or model loaded."""
    settings = config.get("transfer") or {}
    task = get_task(config["task"]["name"])
    source = settings.get("source_task")
    if source:
        get_task(source)
        if source == task.name:
            raise UserError(f"transfer.source_task={source} is the run's own task; name another "
                            f"task (or null)")
    eval_tasks = settings.get("eval_tasks") or []
    if isinstance(eval_tasks, str):
        raise UserError(f"transfer.eval_tasks must be a list, e.g. [rte,sick]; got {eval_tasks!r}")
    for name in eval_tasks:
        label_space(task, get_task(name))


# ---------------------------------------------------------------- task transfer

def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        raise UserError("task transfer finds its source run from the command line; run it with "
                        "python -m childtune.train") from None


@contextmanager
def _locked(path: Path):
    """One process at a time trains a given source run (parallel jobs may share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def save_encoder(model, path: Path, ident: dict) -> None:
    checkpoints.save(model, path, ident, keep=lambda name: not _is_head(name))


def load_encoder(model, path: Path) -> None:
    misfit = checkpoints.load(model, path, keep=lambda name: not _is_head(name))
    if misfit:
        raise UserError(f"the source encoder {path} does not fit this model ({misfit[:3]}); "
                        f"delete it to retrain the source run")


def needs_encoder(cfg, ident: dict) -> bool:
    """A run asked to keep its encoder runs again (even with a record) if the encoder is gone."""
    if not OmegaConf.select(cfg, "runtime.save_encoder", default=False):
        return False
    return not jobs.encoder_path(cfg.runtime.cache_dir, ident).exists()


def start_from_source(cfg, model) -> dict | None:
    """Task transfer: load the source run's encoder into `model`, training it first if needed."""
    source_task = OmegaConf.select(cfg, "transfer.source_task", default=None)
    if not source_task:
        return None
    job = jobs.source_job(_job_overrides(), source_task)
    ident = records.identity(jobs.resolved(job))
    path = jobs.encoder_path(cfg.runtime.cache_dir, ident)
    with _locked(path):
        if not path.exists():
            command = [sys.executable, "-m", "childtune.train", *job, "runtime.save_encoder=true"]
            print("task transfer: training the source run first: python -m childtune.train "
                  + " ".join(shlex.quote(c) for c in command[3:]), flush=True)
            if subprocess.run(command).returncode != 0 or not path.exists():
                raise UserError(f"the source run of task {source_task!r} failed; run it alone: "
                                + " ".join(shlex.quote(c) for c in command[1:]))
    load_encoder(model, path)
    return {"source_task": source_task, "source_identity": ident,
            "source_record": str(records.record_path("", ident))}


def mask_cache_parts(source: dict | None) -> dict:
    """A fixed mask computed from a source encoder differs from one computed from the pretrained
    model: its cache key names the source run (nothing is added without transfer)."""
    return {"start_from": source["source_identity"]} if source else {}


# ---------------------------------------------------------------- domain transfer

def _eval_split(target: Task) -> str:
    return "test" if "test" in target.eval_splits else target.eval_splits[0]


def evaluate_on(cfg, task: Task, target: Task, model, tokenizer, data_dir) -> dict:
    """Accuracy of the trained model on another NLI task, in the common label space."""
    import numpy as np

    from . import data, loop

    space = label_space(task, target)
    split_name = _eval_split(target)
    split = data.read_split(target, data_dir, split_name)
    encoded = data.Encoded(split, tokenizer, cfg.data.max_seq_length, regression=False)
    loader = data.make_eval_loader(encoded, cfg.trainer.eval_batch_size)
    precision = loop.Precision(cfg.trainer.precision, next(model.parameters()).device)
    preds, labels = loop.predict(model, loader, regression=False, precision=precision)
    predicted = np.asarray(to_space(task, space))[preds]
    gold = np.asarray(to_space(target, space))[labels]
    return {"split": split_name, "accuracy": float((predicted == gold).mean()),
            "label_space": list(space), "examples": len(split),
            "file": data.source_file(target, data_dir, split_name),
            "sha256": data.fingerprint(split)}


def finish(cfg, ident: dict, task: Task, model, tokenizer, data_dir, source: dict | None) -> dict:
    """After training: keep the encoder if asked; evaluate on other tasks. Returns what the
    record adds ({} when transfer is off)."""
    if OmegaConf.select(cfg, "runtime.save_encoder", default=False):
        path = jobs.encoder_path(cfg.runtime.cache_dir, ident)
        save_encoder(model, path, ident)
        print(f"encoder kept for task transfer -> {path}")
    out = dict(source or {})
    eval_tasks = [n for n in OmegaConf.select(cfg, "transfer.eval_tasks", default=None) or []
                  if n != task.name]
    if eval_tasks:
        start = time.perf_counter()
        out["eval"] = {name: evaluate_on(cfg, task, get_task(name), model, tokenizer, data_dir)
                       for name in eval_tasks}
        out["eval_seconds"] = time.perf_counter() - start
    return {"transfer": out} if out else {}


# ---------------------------------------------------------------- the run's hook

class TransferHook(RunHook):
    """Transfer at the run's points (hooks.py): the source run's encoder before anything is
    built from the model (and named in the mask's cache key); after the record, the encoder
    kept and the other tasks evaluated."""

    source: dict | None = None

    def reruns(self, ctx) -> bool:
        return needs_encoder(ctx.cfg, ctx.ident)

    def after_model(self, ctx) -> None:
        self.source = start_from_source(ctx.cfg, ctx.model)
        ctx.mask_cache_parts.update(mask_cache_parts(self.source))

    def after_record(self, ctx) -> dict:
        return finish(ctx.cfg, ctx.ident, ctx.task, ctx.model, ctx.tokenizer, ctx.data_dir,
                      self.source)


def hook(config: dict) -> TransferHook | None:
    """The transfer hook when the run starts from a source run, is evaluated on other tasks or
    keeps its encoder; None otherwise."""
    settings = config.get("transfer") or {}
    wanted = settings.get("source_task") or settings.get("eval_tasks") \
        or (config.get("runtime") or {}).get("save_encoder")
    return TransferHook() if wanted else None
