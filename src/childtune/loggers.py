"""Experiment loggers. `logger=none` (the default) logs nothing and imports nothing;
`logger=wandb` writes a Weights & Biases run, offline unless told otherwise (docs/wandb.md).

A logger never breaks a run: a failing wandb call is reported once on stderr and logging stops,
and `close` finishes the wandb run on every exit path so one failed job leaves the next job of
a multirun a clean process."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError
from .records import RunRecord

WANDB_MODES = ("offline", "online", "disabled")


class NullLogger:
    """The interface every logger implements; train.py calls these in this order."""

    def log_step(self, values: dict) -> None:
        """Per optimizer step: step, epoch, loss, lr, grad_norm."""

    def log_eval(self, step: int, metrics: dict, losses: dict) -> None:
        """After an evaluation (every `trainer.eval_every` steps, and the final one): metrics
        and mean loss per eval split."""

    def log_record(self, record: RunRecord) -> None:
        """Once, with the finished record (metrics, mask statistics, timings)."""

    def info(self) -> dict | None:
        """What the record stores about the logger run (e.g. its id and directory)."""
        return None

    def close(self, failed: bool) -> None:
        """Always called, on success and on every failure path."""


def build_logger(logger_cfg, config: dict, ident: dict) -> NullLogger:
    if logger_cfg.name == "none":
        return NullLogger()
    if logger_cfg.name == "wandb":
        return WandbLogger(logger_cfg, config, ident)
    raise UserError(f"logger must be none or wandb, got {logger_cfg.name!r}")


def run_name(ident: dict) -> str:
    """A name no other run shares: task and variant, the identity fields that are set (p,
    regularizer, n_train), lr and seed, then the config hash's first characters (settings that
    differ elsewhere still differ)."""
    parts = [ident["task"], ident["variant"]]
    if ident.get("p") is not None:
        parts.append(f"p{ident['p']:g}")
    if ident.get("regularizer") not in (None, "none"):
        parts.append(ident["regularizer"])
    if ident.get("n_train") is not None:
        parts.append(f"n{ident['n_train']}")
    if ident.get("lr") is not None:
        parts.append(f"lr{ident['lr']:g}")
    parts += [f"seed{ident['seed']}", ident["config_hash"][:6]]
    return "-".join(parts)


def run_names(ident: dict, project: str, tags=()) -> dict:
    """Where a run appears on the dashboard: one project, the study as a tag, one group per
    table cell (the seeds of one config share its hash, as they share a folder under runs/)."""
    cell = (ident["model"], ident["task"], ident["variant"])
    return {
        "project": project,
        "group": "/".join((*cell, ident["config_hash"])),
        "job_type": ident["variant"],
        "name": run_name(ident),
        "tags": [ident["study"], *cell, f"seed{ident['seed']}", *tags],
    }


def record_values(record: RunRecord) -> dict:
    """The finished record as flat wandb keys (its numbers, named by their place in the
    record), plus the Fisher histogram as a (counts, edges) pair."""
    out = {}
    sections = {"eval_before_prune": "metrics_before_prune", "mask": "mask", "time": "timings",
                "train": "train", "parameters": "parameters"}
    for prefix, key in sections.items():
        _flatten(prefix, record.section(key) or {}, out)
    out.update(eval_values(record.metrics, record.eval_loss))
    if record.headline_value() is not None:
        out[f"headline/{record.headline.metric}"] = record.headline.value
    histogram = record.fisher_histogram
    if histogram and histogram["counts"]:
        out["fisher/log10_histogram"] = (histogram["counts"], histogram["edges"])
        out["fisher/zeros"] = histogram["zeros"]
    return out


def eval_values(metrics: dict, losses: dict) -> dict:
    """`eval/<split>/<metric>` and `eval/<split>/loss` (the mean dev-set loss)."""
    out = {}
    _flatten("eval", metrics, out)
    out.update({f"eval/{split}/loss": loss for split, loss in losses.items() if loss is not None})
    return out


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "fisher_log10_histogram":
                _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def start_run(mode: str, *, console: str = "off", init_timeout: float = 30, **init_kwargs):
    """`wandb.init` -> (run, mode it runs in). An online start that fails (no key, no network)
    warns and runs offline, so a job never fails or waits for want of an account."""
    import wandb

    settings = wandb.Settings(console=console, init_timeout=init_timeout, login_timeout=5,
                              quiet=True)  # no banner lines per run
    init_kwargs.setdefault("reinit", "finish_previous")
    try:
        return wandb.init(mode=mode, settings=settings, **init_kwargs), mode
    except Exception as exc:
        if mode != "online":
            raise
        print(f"warning: wandb online start failed ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:160]}); logging offline instead", file=sys.stderr)
        return wandb.init(mode="offline", settings=settings, **init_kwargs), "offline"


class WandbLogger(NullLogger):
    def __init__(self, logger_cfg, config: dict, ident: dict):
        if logger_cfg.mode not in WANDB_MODES:
            raise UserError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got "
                            f"{logger_cfg.mode!r} (WANDB_MODE sets its default)")
        self._results_dir = Path(config["results_dir"])
        self._names = run_names(ident, logger_cfg.project, logger_cfg.get("tags") or ())
        root = Path(logger_cfg.dir)
        root.mkdir(parents=True, exist_ok=True)
        self.run, self.mode = start_run(
            logger_cfg.mode, console=logger_cfg.console, init_timeout=logger_cfg.init_timeout,
            **self._names, entity=logger_cfg.entity, dir=str(root), notes=logger_cfg.get("notes"),
            config={**config, "identity": ident})
        self._broken = False

    def _guard(self, call, *args, **kwargs) -> None:
        if self._broken:
            return
        try:
            call(*args, **kwargs)
        except Exception as exc:  # a logging failure must not cost the training run
            self._broken = True
            print(f"warning: wandb logging stopped ({type(exc).__name__}: {exc})",
                  file=sys.stderr)

    def log_step(self, values: dict) -> None:
        row = {f"train/{k}": v for k, v in values.items() if k != "step" and v is not None}
        self._guard(self.run.log, row, step=values["step"])

    def log_eval(self, step: int, metrics: dict, losses: dict) -> None:
        self._guard(self.run.log, eval_values(metrics, losses), step=step)

    def log_record(self, record: dict) -> None:
        """Final numbers go to the run summary (what grouped runs tables average per cell);
        the Fisher histogram is logged once, at the last step."""
        values = record_values(record)
        histogram = values.pop("fisher/log10_histogram", None)
        self._guard(self.run.summary.update, values)
        if histogram is not None:
            import wandb

            self._guard(lambda: self.run.log({"fisher/log10_histogram": wandb.Histogram(
                np_histogram=histogram)}, step=record.train["steps"]))

    def info(self) -> dict:
        """The run's folder is kept relative to results_dir when it lies inside it."""
        run_dir = Path(self.run.dir).parent.resolve()
        try:
            run_dir = run_dir.relative_to(self._results_dir.resolve())
        except ValueError:
            pass
        return {"name": "wandb", "id": self.run.id, "mode": self.mode,
                "dir": None if self.mode == "disabled" else str(run_dir),
                "project": self._names["project"], "group": self._names["group"]}

    def close(self, failed: bool) -> None:
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # never hide the run's own error behind a logging one
            print(f"warning: wandb finish failed ({type(exc).__name__}: {exc})", file=sys.stderr)
