"""The train entrypoint as users call it: bad input gives one clear error and no record;
the embedded model runs end to end on real data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, needs_data, run_cli


def assert_clean_failure(proc, results: Path, *expected: str):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert not list(results.rglob("*.json")) if results.exists() else True


@pytest.mark.parametrize("override,expected", [
    ("task=qrte", ["Could not find 'task/qrte'", "Available options in 'task'", "rte"]),
    ("model=bert-huge", ["Could not find 'model/bert-huge'", "minilm", "tiny"]),
    ("variant=child_tuning_x", ["Could not find 'variant/child_tuning_x'", "child_tuning_d"]),
])
def test_unknown_names_list_the_valid_ones(tmp_path, override, expected):
    proc = run_cli(override, f"results_dir={tmp_path}")
    assert_clean_failure(proc, tmp_path, *expected)


@pytest.mark.parametrize("overrides,expected", [
    (["data.dir=no/such/folder"], "error: data directory no/such/folder does not exist"),
    (["task=cola"], "error: task 'cola' needs"),
    (["data.n_train=0"], "error: data.n_train must be a positive integer"),
    (["data.n_train=41"], "error: data.n_train=41 must be between 1 and the training set size 40"),
    (["data.max_seq_length=0"], "error: data.max_seq_length must be a positive integer"),
    (["variant=child_tuning_d", "variant.p=1.5"], "error: variant.p must be a number in (0, 1]"),
])
def test_bad_input_is_one_error_line_exit_2_and_no_record(tmp_path, tiny_data, overrides, expected):
    proc = run_cli("model=tiny", f"data.dir={tiny_data}", f"results_dir={tmp_path / 'r'}",
                   *overrides)
    assert_clean_failure(proc, tmp_path / "r", expected)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_malformed_tsv_names_file_and_line(tmp_path, tiny_data):
    path = tiny_data / "glue" / "RTE" / "dev.tsv"
    path.write_text(path.read_text() + "99\tbroken row\n")
    proc = run_cli("model=tiny", f"data.dir={tiny_data}", f"results_dir={tmp_path / 'r'}")
    assert_clean_failure(proc, tmp_path / "r", "error: malformed row at", "dev.tsv:22:")
    assert proc.returncode == 2


def test_hub_unreachable_without_data_dir(tmp_path):
    proc = run_cli("model=tiny", f"results_dir={tmp_path / 'r'}",
                   env={"CHILDTUNE_DATA_DIR": "", "HF_DATASETS_OFFLINE": "1"})
    assert_clean_failure(proc, tmp_path / "r", "error: could not load nyu-mll/glue",
                         "set CHILDTUNE_DATA_DIR")


@pytest.mark.integration
@needs_data
def test_embedded_model_on_64_real_rte_examples(tmp_path):
    proc = run_cli("task=rte", "variant=vanilla", "seed=1", "data.n_train=64",
                   "trainer.epochs=1", f"results_dir={tmp_path}", "runtime.progress=false",
                   env={"CHILDTUNE_DATA_DIR": str(SHARED_DATA)})
    assert proc.returncode == 0, proc.stderr
    (path,) = list((tmp_path / "runs").rglob("*.json"))
    assert path.parent.parent.parent.parent.name == "minilm" and path.name == "seed1.json"
    record = json.loads(path.read_text())
    assert record["status"] == "success"
    assert record["identity"] | {} == record["identity"] and record["identity"]["n_train"] == 64
    assert record["data"]["sizes"] == {"train": 64, "dev": 277}
    accuracy = record["metrics"]["dev"]["accuracy"]
    assert 0.3 < accuracy < 0.7 and record["headline"]["value"] == accuracy
    assert record["train"]["steps"] == 4 and record["train"]["warmup_steps"] == 1
    assert record["timings"]["train_seconds"] > 0 and record["timings"]["train_examples_per_s"] > 0
    env = record["environment"]
    assert env["torch"].startswith("2.13") and env["transformers"].startswith("5.")
    assert record["config"]["model"]["source"] == "embedded"
    assert record["command"].startswith("python -m childtune.train task=rte")
    assert str(path.relative_to(tmp_path)) in proc.stdout
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files
