"""The keys a run config may hold, and which of them hold floats, read from the conf/ files.

Every option file of every config group (conf/<group>/*.yaml, and `# @package _global_` files
at the top level) contributes its keys: a key that appears in none of them is read by nothing
(a typo such as `+trainer.learning_rate=...`) and is refused (validate.py). A key whose value
is a float in some option file, or an interpolation of such a key (`lr: ${model.lr}`), is
float-valued: `variant.p=1` means 1.0 there, and records.py hashes it so. No torch here: the
study layer (plan) computes identities too."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent / "conf"   # where train.py's @hydra.main looks
SKIPPED = ("hydra", "defaults")                        # Hydra's own keys, not the run's
ADDED_AT_RUN_TIME = {"distributed": {"world_size": 1}}  # distributed.setup adds it under torchrun
_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _package(path: Path, group: str) -> str:
    head = path.read_text().split("\n", 3)[:3]
    return "" if any("@package _global_" in line for line in head) else group


def _walk(node, prefix: str, into: dict) -> None:
    for key, value in node.items():
        if not prefix and key in SKIPPED:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            into.setdefault(path, {})
            _walk(value, f"{path}.", into)
        else:
            into.setdefault(path, []).append(value)


@functools.lru_cache(maxsize=None)
def _schema(conf: Path) -> tuple[dict, frozenset]:
    """(dotted path -> list of the values the files give it, or {} for a section;
    the float-valued paths)."""
    paths: dict = {}
    for file in sorted(conf.rglob("*.yaml")):
        group = file.parent.relative_to(conf).as_posix()
        if group.split("/")[0] in SKIPPED:
            continue
        content = OmegaConf.to_container(OmegaConf.load(file), resolve=False) or {}
        package = "" if group == "." else _package(file, group)
        _walk({package: content} if package else content, "", paths)
    _walk(ADDED_AT_RUN_TIME, "", paths)
    floats = {p for p, values in paths.items()
              if isinstance(values, list) and any(type(v) is float for v in values)}
    for path, values in paths.items():  # one level of `${other.key}`
        if isinstance(values, list) and any(
                isinstance(v, str) and (m := _INTERPOLATION.match(v)) and m.group(1) in floats
                for v in values):
            floats.add(path)
    return paths, frozenset(floats)


def known_paths(conf: Path = CONF) -> dict:
    return _schema(conf)[0]


def float_paths(conf: Path = CONF) -> frozenset:
    return _schema(conf)[1]


def unknown_keys(config: dict, conf: Path = CONF) -> list[str]:
    """Dotted keys of `config` that no option file has (below a null or list value any keys
    are allowed: e.g. transfer.eval_tasks, or a section a user file fills)."""
    paths = known_paths(conf)
    out = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path not in paths:
                out.append(path)
            elif isinstance(value, dict) and isinstance(paths[path], dict):
                walk(value, f"{path}.")

    walk(config, "")
    return out


def canonical_numbers(config, conf: Path = CONF, prefix: str = ""):
    """`config` with each integral number spelled one way: a float where the option files
    hold floats (1 -> 1.0), else an int (3.0 -> 3). Existing records keep their identity:
    their numbers already have these types."""
    if isinstance(config, dict):
        return {k: canonical_numbers(v, conf, f"{prefix}{k}.") for k, v in config.items()}
    if isinstance(config, bool) or not isinstance(config, (int, float)):
        return config
    if prefix[:-1] in float_paths(conf):
        return float(config)
    return int(config) if isinstance(config, float) and config.is_integer() else config
