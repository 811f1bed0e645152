"""What a run leaves behind when it does not succeed, and how the command ends.

    bad input (UserError)                      `error: ...`, exit 2, no record
    failed after validation: NaN loss          failure record (records.failure_path) with the
      (TrainingDiverged), NaN/inf metrics or     reason, `failed: ...`, exit 1
      weights (NotFinite), out of memory,
      a killed parallel worker (launcher.py),
      any other exception
    interrupted: Ctrl-C, SIGKILL, timeout      nothing; rerunning the command redoes the run

Inside a multirun a job must not end the process: Hydra's launchers (basic, joblib, submitit)
catch a job's exception, run the remaining jobs, and then raise the first one (a
`CompactHydraException` is shown as its message, no traceback; exit 1). `sys.exit` would end
the sweep at the first bad job instead (observed with the basic and joblib launchers), so in a
multirun every outcome above raises `JobFailed`."""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from datetime import datetime, timezone

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .loop import TrainingDiverged
from .metrics import NotFinite
from .. import records
from ..errors import UserError, resolving


class JobFailed(CompactHydraException):
    """A multirun job failed or had bad input (its own line was printed when it happened)."""


# ---------------------------------------------------------------- failure records

def failure_reason(exc: BaseException) -> str:
    if isinstance(getattr(exc, "failure_reason", None), str):  # e.g. launcher.WorkerKilled
        return exc.failure_reason
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    if isinstance(exc, NotFinite):
        return "not_finite"
    oom_types = tuple(t for t in (MemoryError, _torch_oom()) if t is not None)
    text = str(exc).lower()
    if isinstance(exc, oom_types) or "out of memory" in text or "can't allocate memory" in text:
        return "out_of_memory"
    return "exception"


def _torch_oom():
    import torch

    return getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)


def failure_record(config: dict, exc: BaseException, command: str) -> records.RunRecord:
    return records.build(
        "failed", records.identity(config), config,
        reason=failure_reason(exc),
        error=f"{type(exc).__name__}: {exc}",
        traceback=traceback.format_exception(exc)[-12:],
        environment=records.environment(),
        command=command,
        failed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def record_failure(config: dict, exc: BaseException, command: str) -> str:
    """Writes the failure record (unless a success record exists) and returns the line to print."""
    ident = records.identity(config)
    record = failure_record(config, exc, command)
    head = (f"failed: {ident['model']} {ident['task']} {ident['variant']} seed={ident['seed']}: "
            f"{record.reason} ({record.error.splitlines()[0][:200]})")
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

def _resolved(cfg: DictConfig) -> dict:
    try:
        return resolving(lambda: OmegaConf.to_container(cfg, resolve=True))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - an interpolation of a missing or null section
        raise UserError(f"the config does not resolve: {str(exc).splitlines()[0]}") from None


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
                command: Callable[[], str]):
    """`run(cfg)` with the outcomes of the module docstring. `run` validates the config first
    (validate.py: its UserError is bad input), so any later exception is a failed run."""
    try:
        config = _resolved(cfg)
    except UserError as exc:
        return _end(f"error: {exc}", 2)
    try:
        return run(cfg)
    except UserError as exc:  # validation, data files, the model: bad input
        return _end(f"error: {exc}", 2)
    except Exception as exc:  # noqa: BLE001 - every failure after validation gets a record
        return _end(record_failure(config, exc, command()), 1)
