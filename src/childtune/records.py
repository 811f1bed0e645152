"""The run record: identity -> path, atomic write, read back.

A record is one JSON file per finished run under `<results_dir>/runs/`. Its path is derived
from the run's identity, so a sweep can tell which runs are done:

    runs/<model>/<task>/<variant>/<config hash>/seed<seed>.json

The study is not part of the path: a run two studies share (main's and the ablation's CT_D
runs) is trained once; each study's table selects the records its plan names.

The config hash covers the whole resolved config except the keys that do not change the
numbers (seed, where data/results/caches live, logging, runtime). Values that are null, false
or "none" are left out of it too, so a new option whose default is off keeps every existing
run's identity. Seeds of one table cell share a folder. Nothing under results/ is written by
hand."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

SCHEMA = 1
# Top-level / dotted keys that never change a run's numbers.
NON_IDENTITY_KEYS = ("seed", "results_dir", "data.dir", "logger", "runtime", "force", "study",
                     "protocol")  # the protocol's values reach the config (lr, n_train) already


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
    trimmed = _without_neutral(trimmed)
    return hashlib.sha256(json.dumps(trimmed, sort_keys=True).encode()).hexdigest()[:10]


def identity(config: dict) -> dict:
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


def record_path(results_dir: str | Path, ident: dict) -> Path:
    return (Path(results_dir) / "runs" / ident["model"] / ident["task"]
            / ident["variant"] / ident["config_hash"] / f"seed{ident['seed']}.json")


def _clean(value):
    """JSON without NaN/inf (they become null: a metric that could not be computed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: dict) -> None:
    """Temp file in the same folder + fsync + rename: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a record is an ordinary shared file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(payload), f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(results_dir: str | Path, record: dict) -> Path:
    path = record_path(results_dir, record["identity"])
    write_json_atomic(path, {"schema": SCHEMA, **record})
    return path


def read_records(results_dir: str | Path) -> list[dict]:
    """Every record under <results_dir>/runs, each with its `path` (relative to results_dir)."""
    root = Path(results_dir)
    out = []
    for path in sorted((root / "runs").rglob("*.json")):
        with open(path) as f:
            record = json.load(f)
        record["path"] = str(path.relative_to(root))
        out.append(record)
    return out


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
