"""A job's overrides -> its composed and resolved config (Hydra's compose API), the jobs a sweep
expands to, and, for task transfer, a job's source job and where its encoder is kept.

The run side (transfer.py) and the study side (plan.py) both use these; this module never
imports torch, the training code or the study side."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from . import checkpoints
from .errors import UserError, resolving

CONF_DIR = Path(__file__).resolve().parent / "conf"  # inside the package: works installed
_SENTINEL_SEED = -7_319_251  # never a real seed: shows whether a config uses the seed elsewhere


@contextmanager
def _hydra():
    """Hydra's compose API needs an initialized Hydra; inside a Hydra app it already is."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield


def compose(overrides: list[str], hydra_node: bool = False):
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with _hydra():
            return hydra_compose("config", overrides=list(overrides),
                                 return_hydra_config=hydra_node)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"cannot compose {' '.join(overrides)}: "
                        f"{str(exc).splitlines()[0]}") from None


def resolved(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    return resolving(lambda: OmegaConf.to_container(compose(overrides), resolve=True))


def parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def expand(params: dict[str, str], overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, exactly as Hydra's basic sweeper makes them: the configs' sweeper
    params first, then the command line, whose value for a key replaces the params' value."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    return BasicSweeper.split_arguments(parse(arguments), None)[0]


def keyed(job: list[str]) -> dict:
    return {o.get_key_element(): o.value() for o in parse(job)}


def resolved_all(jobs: list[list[str]]) -> list[dict]:
    """The resolved config of each job. Jobs that differ only in their seed share one
    composition when the seed is used nowhere else in the config (checked with a sentinel)."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        rest = tuple(o for o in job if o.split("=", 1)[0] != "seed")
        groups.setdefault(rest, []).append(i)
    out: list[dict | None] = [None] * len(jobs)
    for rest, members in groups.items():
        seeded = all(len(jobs[i]) > len(rest) for i in members)
        probe = resolved([*rest, f"seed={_SENTINEL_SEED}"]) if seeded else None
        if probe is None or json.dumps(probe).count(str(_SENTINEL_SEED)) != 1:
            for i in members:
                out[i] = resolved(jobs[i])
            continue
        for i in members:
            out[i] = {**probe, "seed": keyed(jobs[i])["seed"]}
    return out


def source_job(job: list[str], source_task: str) -> list[str]:
    """The overrides of the run a task-transfer run starts from: the same run on the source
    task, without transfer."""
    kept = [o for o in job if o.split("=", 1)[0] not in ("task", "transfer.source_task")]
    return [*kept, f"task={source_task}", "transfer.source_task=null"]


def encoder_path(cache_dir, ident: dict) -> Path:
    """Where a run kept for task transfer leaves its trained encoder (transfer.py)."""
    if not cache_dir:
        raise UserError("task transfer keeps encoders under runtime.cache_dir; set it")
    return checkpoints.path(cache_dir, "encoders", ident)
