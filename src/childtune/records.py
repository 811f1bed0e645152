"""The run record: identity -> path, atomic write, read back.

A record is one JSON file per finished run under `<results_dir>/runs/`. Its path is derived
from the run's identity, so a sweep can tell which runs are done:

    runs/<model>/<task>/<variant>/<config hash>/seed<seed>.json

A run that failed after its config was validated (NaN loss, exception, out of memory) leaves
a failure record next to it instead, `seed<seed>.failed.json` with `"status": "failed"` and the
reason; a later success deletes it. Success records always have `"status": "success"`, so
readers tell the two apart by `status` (and never skip a run for its failure record).

The study is not part of the path: a run two studies share (main's and the ablation's CT_D
runs) is trained once; each study's table selects the records its plan names.

The config hash covers the whole resolved config except the keys that do not change the
numbers (seed, where data/results/caches live, logging, runtime). Values that are null, false
or "none" are left out of it too, so a new option whose default is off keeps every existing
run's identity. Numbers are hashed as the option files type them (config_keys.py), so
`variant.p=1` and `variant.p=1.0` are one run. Seeds of one table cell share a folder. Nothing under results/ is written by
hand.

What a record holds, its builder and its accessors: run_record.py (re-exported here, the
record's one home for callers: `records.build`, `records.RunRecord`)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

from .atomic import atomic_file
from .config_keys import canonical_numbers
from .errors import UserError
from .run_record import SCHEMA, Headline, Identity, RunRecord, build  # noqa: F401 (re-exported)

# Top-level / dotted keys that never change a run's numbers.
NON_IDENTITY_KEYS = ("seed", "results_dir", "data.dir", "logger", "runtime", "force", "study",
                     "protocol",  # the protocol's values reach the config (lr, n_train) already
                     "trainer.eval_every")  # evaluations between steps leave the numbers as is


def _drop(config: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest and isinstance(config.get(head), dict):
        _drop(config[head], rest)
    elif not rest:
        config.pop(head, None)


def _without_neutral(value):
    """Drops null, false and "none" values, and sections left empty by that (a new section
    whose options are all off keeps every existing run's identity too)."""
    if isinstance(value, dict):
        kept = {k: _without_neutral(v) for k, v in value.items()
                if v is not None and v is not False and v != "none"}
        return {k: v for k, v in kept.items() if v != {}}
    return value


def config_hash(config: dict) -> str:
    trimmed = json.loads(json.dumps(config))
    for key in NON_IDENTITY_KEYS:
        _drop(trimmed, key)
    trimmed = canonical_numbers(_without_neutral(trimmed))
    return hashlib.sha256(json.dumps(trimmed, sort_keys=True).encode()).hexdigest()[:10]


def identity(config: dict) -> Identity:
    """The fields that name a run: what tables group by."""
    variant = config["variant"]
    return {
        "study": config.get("study") or "adhoc",
        "model": config["model"]["name"],
        "task": config["task"]["name"],
        "variant": variant["name"],
        "p": variant.get("p"),
        "seed": config["seed"],
        "n_train": config["data"].get("n_train"),
        "lr": config["trainer"]["lr"],
        "regularizer": (config.get("regularizer") or {}).get("name") or "none",
        "config_hash": config_hash(config),
    }


def unset_study_keys(config: dict) -> list[str]:
    """The keys of this study's block in the protocol (`protocol.studies.<study>`) still `???`:
    values another study's records choose (cpu_full: low_resource's sizes). A run of such a
    study is refused (train) and its plan shown as waiting (plan)."""
    block = ((config.get("protocol") or {}).get("studies") or {}).get(config.get("study")) or {}
    return [f"protocol.studies.{config['study']}.{k}" for k, v in block.items() if v == "???"]


def record_path(results_dir: str | Path, ident: dict) -> Path:
    return (Path(results_dir) / "runs" / ident["model"] / ident["task"]
            / ident["variant"] / ident["config_hash"] / f"seed{ident['seed']}.json")


def failure_path(results_dir: str | Path, ident: dict) -> Path:
    """Where the failure record of a run goes: beside its (absent) success record."""
    return record_path(results_dir, ident).with_suffix(".failed.json")


def clean_json(value):
    """JSON without NaN/inf (they become null: a metric that could not be computed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def compact_number(value: float) -> float:
    """A float to 6 significant digits (float32's precision), as the per-step history keeps
    them: shorter in the JSON file."""
    return float(f"{value:.6g}")


_ITEM = r"(?:-?\d[\d.eE+-]*|null)"
_NUMBER_LIST = re.compile(rf"\[\s+({_ITEM}(?:,\s+{_ITEM})*)\s+\]")


def dumps(payload: dict) -> str:
    """The record as JSON, one key a line, but each list of numbers on one line (the per-step
    history holds thousands)."""
    text = json.dumps(clean_json(payload), indent=1, sort_keys=True, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]",
                            text) + "\n"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Readers see all of it or nothing (atomic.py), even with two writers at once."""
    with atomic_file(path, "w") as f:
        f.write(dumps(payload))


def _typed(record) -> RunRecord:
    if not isinstance(record, RunRecord):
        raise TypeError(f"records are built by records.build, got {type(record).__name__}")
    return record


def write_record(results_dir: str | Path, record: RunRecord) -> Path:
    """The success record; it replaces the run's failure record, if one exists."""
    path = record_path(results_dir, _typed(record).identity)
    write_json_atomic(path, record.to_json())
    failure_path(results_dir, record.identity).unlink(missing_ok=True)
    return path


def write_failure(results_dir: str | Path, record: RunRecord) -> Path | None:
    """The failure record (`status: failed`), or None when the run has a success record: a
    forced rerun that fails keeps the earlier result."""
    if _typed(record).status != "failed":
        raise ValueError(f"a failure record has status 'failed', got {record.status!r}")
    if record_path(results_dir, record.identity).exists():
        return None
    path = failure_path(results_dir, record.identity)
    write_json_atomic(path, record.to_json())
    return path


def read_record(path: Path, relative_to: Path | None = None) -> RunRecord:
    """The one reader: a record file (success or failure) as a RunRecord, with its `path`
    relative to `relative_to` when given. A file cut short, or of a newer schema than this
    code reads, is a UserError naming it."""
    try:
        with open(path) as f:
            record = RunRecord.from_json(
                json.load(f), str(path.relative_to(relative_to)) if relative_to else None)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable run record ({type(exc).__name__}: "
                        f"{str(exc)[:80]}); childtune writes records atomically, so it was cut "
                        f"short elsewhere (an interrupted copy or sync?): delete it or rerun "
                        f"with force=true") from None
    if not isinstance(record.schema, int) or record.schema > SCHEMA:
        raise UserError(f"{path} has record schema {record.schema!r}; this childtune reads "
                        f"schema {SCHEMA} and older: update childtune to read it")
    return record


def read_records(results_dir: str | Path) -> list[RunRecord]:
    """Every record under <results_dir>/runs, success and failed alike (tell them apart by
    `status`), each with its `path` (relative to results_dir)."""
    root = Path(results_dir)
    return [read_record(path, root) for path in sorted((root / "runs").rglob("*.json"))]


def environment() -> dict:
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, cwd=Path(__file__).parent,
                                    timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "hostname": platform.node(),
    }
