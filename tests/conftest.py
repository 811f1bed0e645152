"""Shared fixtures: composed configs, in-process runs, the tiny model, data locations."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "childtune" / "conf"
SHARED_DATA = Path(os.environ.get("CHILDTUNE_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "glue").is_dir(),
                                reason="real data directory (CHILDTUNE_DATA_DIR) not available")


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A small GLUE-layout folder: RTE with 40 train / 20 dev rows (real-looking text)."""
    folder = tmp_path / "data" / "glue" / "RTE"
    folder.mkdir(parents=True)
    words = "the cat dog sat on a mat ran fast slow big small house tree".split()
    for split, n in (("train", 40), ("dev", 20)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            s1 = " ".join(words[(i + j) % len(words)] for j in range(8))
            s2 = " ".join(words[(i * 3 + j) % len(words)] for j in range(5))
            lines.append(f"{i}\t{s1}\t{s2}\t{'entailment' if i % 2 else 'not_entailment'}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


@pytest.fixture
def run_tiny(tiny_data, tmp_path):
    """Run the train entrypoint in-process on the tiny model; returns the record."""
    from childtune.run.train import run

    def _run(*overrides: str) -> dict:
        cfg = compose("model=tiny", "task=rte", f"data.dir={tiny_data}", "trainer.epochs=1",
                      "trainer.batch_size=8", f"results_dir={tmp_path / 'results'}",
                      f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=false",
                      *overrides)
        path = run(cfg)
        return json.loads(Path(path).read_text())

    return _run


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "childtune.train", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=600)


def tiny_model(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config)


def random_batches(n: int, batch_size: int = 4, length: int = 12, seed: int = 0,
                   num_labels: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 100, (batch_size, length), generator=g),
             "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "labels": torch.randint(0, num_labels, (batch_size,), generator=g)}
            for _ in range(n)]
