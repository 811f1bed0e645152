"""Shared by the reliability, bad-input and DDP tests: a small RTE-layout data folder, Hydra
composition in-process, and the train command in a subprocess (this checkout's src first)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "childtune" / "conf"
WORDS = "a the cat dog sat ran on under mat tree house red blue big small saw it".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


def write_rte(data_dir: Path, n_train: int = 40, n_dev: int = 16, bad_label: bool = False) -> Path:
    """`data_dir/glue/RTE/{train,dev}.tsv` with random sentences (the GLUE RTE columns)."""
    rng = random.Random(0)
    folder = data_dir / "glue" / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            label = rng.choice(["entailment", "not_entailment"])
            rows.append(f"{i}\t{sentence(rng)}\t{sentence(rng)}\t{label}")
        if bad_label and split == "train":
            rows[3] = "2\tx\ty\tmaybe"
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return data_dir


def overrides(data_dir: Path, results_dir: Path, *extra: str) -> list[str]:
    """A tiny, quick run: the random 2-layer model, 32 examples, one epoch, one thread.
    `extra` overrides add to these or replace the one with the same key."""
    args = {"model": "tiny", "data.dir": data_dir, "data.n_train": 32, "trainer.epochs": 1,
            "runtime.progress": "false", "runtime.threads": 1, "results_dir": results_dir,
            "runtime.cache_dir": results_dir / "cache"}
    args.update(item.split("=", 1) for item in extra)
    return [f"{key}={value}" for key, value in args.items()]


def compose_cfg(args: list[str], with_hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=args, return_hydra_config=with_hydra)


def env() -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), out.get("PYTHONPATH", "")])
    out.pop("CHILDTUNE_DATA_DIR", None)
    return out


def train_cli(args: list[str], cwd: Path, timeout: float = 600, **kwargs):
    return subprocess.run([sys.executable, "-m", "childtune.train", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def records_under(results_dir: Path) -> list[Path]:
    return sorted((results_dir / "runs").rglob("*.json")) if (results_dir / "runs").exists() else []
