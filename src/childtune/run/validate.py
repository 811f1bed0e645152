"""The one validation pass of a run, before any data is read or model built.

    check_config(config)        the config alone: known keys, sections, numbers, settings of
                                each module (variant, regularizer, prune, transfer), device
    check_environment(config)   what the config points at: the tokenizer (max_seq_length), the
                                results and cache folders, a file already at the record's path
    validate(config)            both, in that order (train.run calls it once, first)

Every problem is a UserError: one `error: ...` line, exit 2, nothing written. Anything that
fails after this pass is a failed run with a failure record (guard.py). Numbers are checked by
checks.py, which the modules' own checks (variants, regularizers) use too."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from . import prune, transfer
from ..checks import number_in, positive_int, seed
from .loop import PRECISIONS
from .optim import OPTIMIZERS, fused_adamw_supported
from .tasks import get_task
from .. import config_keys, mask_cache, records
from ..errors import UnsetValue, UserError
from ..mask_kinds import CACHED
from ..method import regularizers, variants

SECTIONS = ("model", "task", "variant", "trainer", "data", "runtime")  # each a conf/ group


# ---------------------------------------------------------------- the command line

def check_overrides(argv: list[str]) -> None:
    """What Hydra itself reports with a traceback: a config group set to null."""
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if eq and key in (*SECTIONS, "regularizer", "logger") and value in ("null", "None", ""):
            raise UserError(f"{key}={value} leaves no {key}: name one of conf/{key}/*.yaml")


# ---------------------------------------------------------------- the config alone

def check_keys(config: dict) -> None:
    unknown = config_keys.unknown_keys(config)
    if unknown:
        key = unknown[0]
        parent = key.rpartition(".")[0]
        valid = sorted(p.rpartition(".")[2] for p in config_keys.known_paths()
                       if p.rpartition(".")[0] == parent)
        raise UserError(f"unknown config key {key!r}: nothing reads it (a typo?); valid keys"
                        f"{' under ' + parent if parent else ''}: {', '.join(valid)}")


def check_sections(config: dict) -> None:
    for section in SECTIONS:
        if not isinstance(config.get(section), dict):
            raise UserError(f"{section} must be one of conf/{section}/*.yaml (e.g. "
                            f"{section}=<name>), got {config.get(section)!r}")
    if not isinstance(config.get("results_dir"), str) or not config["results_dir"]:
        raise UserError(f"results_dir must be a folder, got {config.get('results_dir')!r}")


def check_trainer(trainer: dict) -> None:
    """The trainer values that would otherwise fail (or silently do nothing) mid-run."""
    if trainer.get("optimizer") not in OPTIMIZERS:
        raise UserError(f"trainer.optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                        f"{trainer.get('optimizer')!r}")
    if trainer.get("precision") not in PRECISIONS:
        raise UserError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got "
                        f"{trainer.get('precision')!r}")
    number_in("trainer.lr", trainer.get("lr"), 0, math.inf, low_open=True)
    for key in ("batch_size", "eval_batch_size", "epochs"):
        positive_int(f"trainer.{key}", trainer.get(key))
    positive_int("trainer.eval_every", trainer.get("eval_every"), optional=True)
    number_in("trainer.warmup_ratio", trainer.get("warmup_ratio"), 0, 1)
    if trainer.get("max_grad_norm") is not None:
        number_in("trainer.max_grad_norm", trainer["max_grad_norm"], 0, math.inf,
                  low_open=True, hint=" or null (no clipping)")
    number_in("trainer.weight_decay", trainer.get("weight_decay"), 0, math.inf)
    number_in("trainer.adam_eps", trainer.get("adam_eps"), 0, math.inf, low_open=True,
              hint=" (0 divides 0 by 0 for a frozen entry)")
    betas = trainer.get("adam_betas")
    if not isinstance(betas, list) or len(betas) != 2:
        raise UserError(f"trainer.adam_betas must be two numbers in [0, 1), got {betas!r}")
    for beta in betas:
        number_in("each of trainer.adam_betas", beta, 0, 1, high_open=True)
    number_in("trainer.momentum", trainer.get("momentum"), 0, math.inf)


def check_model(model: dict) -> None:
    """The random model's shape (models.load_model builds it from these)."""
    if model.get("source") != "tiny":
        return
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size"):
        positive_int(f"model.{key}", model.get(key))
    if model["hidden_size"] % model["num_heads"]:
        raise UserError(f"model.num_heads={model['num_heads']} must divide model.hidden_size="
                        f"{model['hidden_size']}")


def check_data(data: dict) -> None:
    positive_int("data.max_seq_length", data.get("max_seq_length"))
    positive_int("data.n_train", data.get("n_train"), optional=True)
    seed("data.subsample_seed", data.get("subsample_seed"))
    if not isinstance(data.get("group_by_length", False), bool):
        raise UserError(f"data.group_by_length must be true or false, got "
                        f"{data['group_by_length']!r}")


def check_runtime(runtime: dict) -> None:
    positive_int("runtime.threads", runtime.get("threads"), optional=True)
    name = runtime.get("device")
    if name in (None, "auto"):
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"runtime.device must be auto, cpu, cuda or cuda:<n>, got "
                        f"{name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise UserError(f"runtime.device={name} but this machine has "
                            f"{count or 'no'} CUDA device{'s' if count != 1 else ''}; use "
                            f"runtime.device=auto (the GPU if there is one) or cpu")


def check_config(config: dict) -> None:
    check_sections(config)
    if unset := records.unset_study_keys(config):
        raise UnsetValue(unset)
    check_keys(config)
    seed("seed", config.get("seed"))
    get_task(config["task"]["name"])
    variants.check_variant(config["variant"])
    seed("variant.fisher_seed", config["variant"].get("fisher_seed"), optional=True)
    check_model(config["model"])
    check_trainer(config["trainer"])
    check_data(config["data"])
    check_runtime(config["runtime"])
    regularizers.check(config)
    prune.check(config)
    transfer.check(config)


# ---------------------------------------------------------------- what the config points at

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


def check_max_seq_length(config: dict) -> None:
    """Room for the special tokens and one token per text; at most the model's positions."""
    from omegaconf import OmegaConf

    from . import models

    length = config["data"]["max_seq_length"]
    task = get_task(config["task"]["name"])
    texts = len(task.local.text_columns)
    model = OmegaConf.create(config["model"])
    tokenizer = models.load_tokenizer(model)
    shortest = tokenizer.num_special_tokens_to_add(pair=texts == 2) + texts
    if length < shortest:
        raise UserError(f"data.max_seq_length={length} leaves no room for {task.name}'s text: "
                        f"the tokenizer adds {shortest - texts} special tokens, so use at least "
                        f"{shortest}")
    longest = models.max_positions(model, tokenizer)
    if longest is not None and length > longest:
        raise UserError(f"data.max_seq_length={length} is more than the model's {longest} "
                        f"positions; use at most {longest}")


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
        status = records.read_record(path).status
        if status != "success":
            raise UserError(f"{path} has status {status!r}, not 'success'; delete it or rerun "
                            f"with force=true")


def check_environment(config: dict) -> None:
    check_device_support(config)
    check_max_seq_length(config)
    results_dir = Path(config["results_dir"])
    check_writable(results_dir / "runs", "run records", "results_dir")
    cache_dir = config["runtime"].get("cache_dir")
    if cache_dir and config["variant"]["mask"] in CACHED:
        check_writable(mask_cache.folder(cache_dir), "the mask cache", "runtime.cache_dir")
    if not config.get("force"):
        check_existing_record(records.record_path(results_dir, records.identity(config)))


def validate(config: dict) -> None:
    check_config(config)
    check_environment(config)
