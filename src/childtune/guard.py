"""What a run leaves behind when it does not succeed, and how the command ends.

    bad input (UserError)                      `error: ...`, exit 2, no record
    failed after validation: NaN loss          failure record (records.failure_path) with the
      (TrainingDiverged), out of memory,         reason, `failed: ...`, exit 1
      any other exception
    interrupted: Ctrl-C, SIGKILL, timeout      nothing; rerunning the command redoes the run

Inside a multirun a job must not end the process: Hydra's launchers (basic, joblib, submitit)
catch a job's exception, run the remaining jobs, and then raise the first one (a
`CompactHydraException` is shown as its message, no traceback; exit 1). `sys.exit` would end
the sweep at the first bad job instead (observed with the basic and joblib launchers), so in a
multirun every outcome above raises `JobFailed`."""
from __future__ import annotations

import math
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from . import distributed, records
from .errors import UserError, resolving
from .loop import PRECISIONS, TrainingDiverged
from .optim import OPTIMIZERS, fused_adamw_supported

CACHED_MASKS = ("fisher_top", "fisher_bottom", "random")  # variants.build caches these


class JobFailed(CompactHydraException):
    """A multirun job failed or had bad input (its own line was printed when it happened)."""


# ---------------------------------------------------------------- checks before any work

def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_trainer(trainer: dict) -> None:
    """The trainer values that would otherwise fail (or silently do nothing) mid-run."""
    if trainer.get("optimizer") not in OPTIMIZERS:
        raise UserError(f"trainer.optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                        f"{trainer.get('optimizer')!r}")
    if trainer.get("precision") not in PRECISIONS:
        raise UserError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got "
                        f"{trainer.get('precision')!r}")
    if not _number(trainer.get("lr")) or trainer["lr"] <= 0:
        raise UserError(f"trainer.lr must be a positive number, got {trainer.get('lr')!r}")
    for key in ("batch_size", "eval_batch_size", "epochs"):
        if not _positive_int(trainer.get(key)):
            raise UserError(f"trainer.{key} must be a positive integer, got {trainer.get(key)!r}")
    if not _number(trainer.get("warmup_ratio")) or not 0 <= trainer["warmup_ratio"] <= 1:
        raise UserError(f"trainer.warmup_ratio must be in [0, 1], got "
                        f"{trainer.get('warmup_ratio')!r}")
    norm = trainer.get("max_grad_norm")
    if norm is not None and (not _number(norm) or norm <= 0):
        raise UserError(f"trainer.max_grad_norm must be a positive number or null (no clipping), "
                        f"got {norm!r}")
    if not _number(trainer.get("weight_decay")) or trainer["weight_decay"] < 0:
        raise UserError(f"trainer.weight_decay must be a number >= 0, got "
                        f"{trainer.get('weight_decay')!r}")


def check_device_support(config: dict) -> None:
    """What the run's device must support: fp16 loss scaling needs CUDA (refused elsewhere
    rather than silently run in another precision), bf16 a device with bf16 autocast, and
    trainer.optimizer=adamw_fused a fused AdamW kernel for the device."""
    import torch

    from .models import device

    trainer = config["trainer"]
    where = device(config["runtime"].get("device"))
    if trainer["precision"] == "fp16" and where.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA GPU (this run's device is "
                        f"{where.type}); use trainer.precision=bf16 or fp32")
    if (trainer["precision"] == "bf16" and where.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise UserError("trainer.precision=bf16: this GPU does not support bfloat16; use fp16")
    if trainer["optimizer"] == "adamw_fused" and not fused_adamw_supported(where):
        raise UserError(f"trainer.optimizer=adamw_fused: this torch has no fused AdamW for "
                        f"{where.type}; use trainer.optimizer=adamw_torch")


def check_writable(folder: Path, what: str, key: str) -> None:
    """Create `folder` and a file in it now, not after an hour of training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} to {folder} ({exc.strerror or exc}); "
                        f"set {key}= to a writable folder") from None


def check_existing_record(path: Path) -> None:
    """A file at a run's record path is either a success record or bad input (never skipped)."""
    if path.exists():
        status = records.read_record(path).get("status")
        if status != "success":
            raise UserError(f"{path} has status {status!r}, not 'success'; delete it or rerun "
                            f"with force=true")


def preflight(config: dict) -> None:
    if isinstance(config.get("seed"), bool) or not isinstance(config.get("seed"), int):
        raise UserError(f"seed must be an integer, got {config.get('seed')!r}")
    check_trainer(config["trainer"])
    check_device_support(config)
    results_dir = Path(config["results_dir"])
    check_writable(results_dir / "runs", "run records", "results_dir")
    cache_dir = config["runtime"].get("cache_dir")
    if cache_dir and config["variant"]["mask"] in CACHED_MASKS:
        check_writable(Path(cache_dir) / "masks", "the mask cache", "runtime.cache_dir")
    if not config.get("force"):
        check_existing_record(records.record_path(results_dir, records.identity(config)))


# ---------------------------------------------------------------- failure records

def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    oom_types = tuple(t for t in (MemoryError, _torch_oom()) if t is not None)
    text = str(exc).lower()
    if isinstance(exc, oom_types) or "out of memory" in text or "can't allocate memory" in text:
        return "out_of_memory"
    return "exception"


def _torch_oom():
    import torch

    return getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)


def failure_record(config: dict, exc: BaseException, command: str) -> dict:
    return {
        "status": "failed",
        "identity": records.identity(config),
        "config": config,
        "reason": failure_reason(exc),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exception(exc)[-12:],
        "environment": records.environment(),
        "command": command,
        "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def record_failure(config: dict, exc: BaseException, command: str) -> str:
    """Writes the failure record (unless a success record exists) and returns the line to print."""
    ident = records.identity(config)
    record = failure_record(config, exc, command)
    head = (f"failed: {ident['model']} {ident['task']} {ident['variant']} seed={ident['seed']}: "
            f"{record['reason']} ({record['error'].splitlines()[0][:200]})")
    if not distributed.is_main():
        return f"{head} (rank 0 writes the failure record)"
    try:
        path = records.write_failure(config["results_dir"], record)
    except OSError as write_error:
        return f"{head}; could not write the failure record ({write_error})"
    if path is None:
        kept = records.record_path(config["results_dir"], ident)
        return f"{head}; kept the earlier success record {kept}"
    return f"{head} -> {path}"


# ---------------------------------------------------------------- the entrypoint's outcome

def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under @hydra.main (tests, notebooks)
        return False


def _end(line: str, exit_code: int):
    print(line, file=sys.stderr, flush=True)
    if in_multirun():
        raise JobFailed(f"some jobs of this multirun did not finish (first: {line})")
    sys.exit(exit_code)


def guarded_run(cfg: DictConfig, run: Callable[[DictConfig], object],
                check_config: Callable[[dict], None], command: Callable[[], str]):
    """`run(cfg)` with the outcomes of the module docstring. `check_config` and the checks
    above run first, so any later exception is a failed run, not bad input."""
    try:
        config = resolving(lambda: OmegaConf.to_container(cfg, resolve=True))
        check_config(config)
        preflight(config)
    except UserError as exc:
        return _end(f"error: {exc}", 2)
    try:
        return run(cfg)
    except UserError as exc:  # found while reading data or loading the model: still bad input
        return _end(f"error: {exc}", 2)
    except Exception as exc:  # noqa: BLE001 - every failure after validation gets a record
        return _end(record_failure(config, exc, command()), 1)
