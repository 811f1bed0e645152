"""logger=wandb writes an offline run with the expected names and keys; logger=none never
touches wandb; a run that fails mid-training still finishes its wandb run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from childtune import loggers, records
from childtune.errors import UserError
from childtune.run import loop, train
from wandb_files import read_run

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "childtune" / "conf"


def write_rte(root: Path, n_train: int = 40, n_dev: int = 16) -> Path:
    """A small GLUE-layout RTE folder (the tiny model learns nothing from it; it need not)."""
    folder = root / "glue" / "RTE"
    folder.mkdir(parents=True)
    labels = ("entailment", "not_entailment")
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [f"{i}\tA cat number {i} sits on mat {i % 7}.\tA cat sits.\t{labels[i % 2]}"
                for i in range(n)]
        (folder / name).write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Data, results and every wandb folder inside tmp_path; no key, no WANDB_MODE."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "wb_config"), ("WANDB_CACHE_DIR", "wb_cache"),
                     ("WANDB_DATA_DIR", "wb_data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("CHILDTUNE_DATA_DIR", str(write_rte(tmp_path / "data")))
    return tmp_path


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["model=tiny", "task=rte", "data.n_train=32", "data.max_seq_length=32",
            "trainer.epochs=1", "runtime.progress=false", f"runtime.cache_dir={tmp_path}/cache",
            f"results_dir={tmp_path}/results", *extra]


def run(tmp_path: Path, *extra: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides(tmp_path, *extra))
    path = train.run(cfg)
    return json.loads(path.read_text()) | {"path": str(path.relative_to(tmp_path / "results"))}


def test_offline_run_writes_expected_keys(env):
    record = run(env, "logger=wandb", "variant=child_tuning_d", "seed=3", "logger.tags=[mine]",
                 "logger.notes=why", "trainer.eval_every=1")
    info, ident = record["logger"], record["identity"]
    assert info["mode"] == "offline"  # WANDB_MODE unset: offline, no key needed
    run_dir = env / "results" / info["dir"]
    assert info["dir"].startswith("wandb/offline-run-") and info["dir"].endswith(info["id"])

    logged = read_run(run_dir)
    meta = logged["run"]
    assert meta.run_id == info["id"]
    assert (meta.project, meta.job_type, meta.display_name) == (
        "childtune", "child_tuning_d",
        f"rte-child_tuning_d-p0.3-n32-lr0.0001-seed3-{ident['config_hash'][:6]}")
    # The group is the record's folder: the seeds of one table cell share it.
    assert meta.run_group == "/".join(Path(record["path"]).parent.parts[1:]) == info["group"]
    assert list(meta.tags) == ["adhoc", "tiny", "rte", "child_tuning_d", "seed3", "mine"]
    assert meta.notes == "why"
    assert logged["config"]["variant"]["p"] == record["config"]["variant"]["p"]
    assert logged["config"]["identity"]["config_hash"] == ident["config_hash"]

    steps = [row for row in logged["history"] if "train/loss" in row]
    assert [row["_step"] for row in steps] == list(range(1, record["train"]["steps"] + 1))
    assert all({"train/lr", "train/grad_norm", "train/epoch"} <= set(row) for row in steps)
    assert steps[-1]["train/loss"] == pytest.approx(record["train"]["last_loss"])
    per_epoch = record["train"]["steps"]  # one epoch: the epoch grows by 1/steps a step
    assert [row["train/epoch"] for row in steps] == pytest.approx(
        [s / per_epoch for s in range(1, per_epoch + 1)])

    assert [row["train/lr"] for row in steps] == pytest.approx(record["history"]["train"]["lr"])
    # the dev set's loss and metrics after every step (eval_every=1), the final one last
    evals = [row for row in logged["history"] if "eval/dev/loss" in row]
    assert [row["_step"] for row in evals] == record["history"]["eval"]["step"] == [1, 2]
    assert [row["eval/dev/accuracy"] for row in evals] == pytest.approx(
        record["history"]["eval"]["dev"]["accuracy"], rel=1e-5)

    summary = logged["summary"]
    assert summary["eval/dev/accuracy"] == pytest.approx(record["metrics"]["dev"]["accuracy"])
    assert summary["eval/dev/loss"] == pytest.approx(record["eval_loss"]["dev"])
    counts = record["parameters"]
    assert (summary["parameters/total"], summary["parameters/trainable"],
            summary["parameters/child"]) == (counts["total"], counts["trainable"], counts["child"])
    assert counts["child"] < counts["trainable"] <= counts["total"]
    assert summary["headline/accuracy"] == pytest.approx(record["headline"]["value"])
    stats = record["mask"]["statistics"]
    assert summary["mask/statistics/kept_fraction"] == pytest.approx(stats["kept_fraction"])
    assert summary["mask/statistics/per_layer/1"] == pytest.approx(stats["per_layer"]["1"])
    assert summary["time/train_seconds"] == pytest.approx(record["timings"]["train_seconds"])
    assert summary["time/fisher_seconds"] > 0

    histogram = record["mask"]["fisher_log10_histogram"]
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert sum(histogram["counts"]) + histogram["zeros"] == stats["masked_entries"]
    assert summary["fisher/log10_histogram/values"] == histogram["counts"]
    assert summary["fisher/log10_histogram/bins"] == pytest.approx(histogram["edges"])
    assert logged["exit"] == 0

    # prune reuses this mask from the cache; its record still carries the Fisher summary
    pruned = run(env, "variant=prune", "seed=3")
    assert pruned["mask"]["source"] == "reused"
    assert pruned["mask"]["fisher_log10_histogram"] == histogram
    assert pruned["mask"]["fisher_quantiles"] == record["mask"]["fisher_quantiles"]


def test_failed_run_still_finishes_its_wandb_run(env, monkeypatch):
    import wandb

    real_train = loop.train

    def train_then_fail(*args, on_step, **kwargs):
        def step(values):
            on_step(values)
            if values["step"] == 1:
                raise RuntimeError("boom at step 1")
        return real_train(*args, on_step=step, **kwargs)

    monkeypatch.setattr(loop, "train", train_then_fail)
    with pytest.raises(RuntimeError, match="boom"):
        run(env, "logger=wandb")
    assert not list((env / "results").rglob("runs/**/*.json"))  # no record for a failed run
    assert wandb.run is None  # finished, so the next job of a multirun starts clean
    (run_dir,) = (env / "results" / "wandb").glob("offline-run-*")
    logged = read_run(run_dir)
    assert logged["exit"] == 1
    assert [row["_step"] for row in logged["history"] if "train/loss" in row] == [1]


def test_online_without_a_key_falls_back_to_offline(env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    record = run(env, "logger=wandb", "logger.init_timeout=10")
    assert record["logger"]["mode"] == "offline"
    assert "logging offline instead" in capsys.readouterr().err
    assert read_run(env / "results" / record["logger"]["dir"])["exit"] == 0


def test_seeds_of_one_cell_share_a_group_and_other_cells_do_not():
    ident = {"study": "main", "model": "minilm", "task": "rte", "variant": "child_tuning_d",
             "seed": 1, "config_hash": "abc"}
    one, other_seed = loggers.run_names(ident, "ct"), loggers.run_names(ident | {"seed": 2}, "ct")
    other_lr = loggers.run_names(ident | {"config_hash": "def"}, "ct")
    assert one["group"] == other_seed["group"] != other_lr["group"]
    assert one["name"] != other_seed["name"]
    assert one["project"] == "ct" and "main" in one["tags"]   # one project, the study a tag


def test_unknown_mode_is_one_clear_error():
    cfg = OmegaConf.create({"name": "wandb", "mode": "onlin"})
    with pytest.raises(UserError, match="logger.mode must be one of offline, online"):
        loggers.build_logger(cfg, {}, {})


def imports_wandb(importtime_stderr: str) -> bool:
    return bool(re.search(r"\|\s+wandb(\.|\s*$)", importtime_stderr, re.M))


def test_none_logger_never_imports_wandb_and_leaves_no_wandb_dir(env):
    command = [sys.executable, "-X", "importtime", "-m", "childtune.train",
               *overrides(env, "logger=none")]
    done = subprocess.run(command, cwd=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(records.read_records(env / "results")) == 1
    assert not imports_wandb(done.stderr)
    assert not [p for p in env.rglob("*wandb*") if not p.name.startswith("wb_")]
    # the import check itself can fail:
    probe = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wandb"],
                           capture_output=True, text=True, timeout=120)
    assert imports_wandb(probe.stderr)


def test_tables_and_figures_upload_to_one_offline_summary_run(env, capsys):
    from childtune.study import wandb_tables

    results = env / "results"
    (results / "tables").mkdir(parents=True)
    (results / "tables" / "main.csv").write_text("task,variant,mean\nrte,vanilla,0.61\n"
                                                "rte,child_tuning_d,0.63\n")
    (results / "figures").mkdir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(2, 2))
    plt.savefig(results / "figures" / "main_seeds.png")
    plt.close("all")
    wandb_tables.main([f"results_dir={results}"])
    assert "1 tables, 1 figures" in capsys.readouterr().out
    (run_dir,) = (results / "wandb").glob("offline-run-*")
    logged = read_run(run_dir)
    assert (logged["run"].project, logged["run"].job_type) == ("childtune-tables", "summary")
    (row,) = logged["history"]
    assert (row["tables/main/_type"], row["tables/main/nrows"], row["tables/main/ncols"]) == (
        "table-file", 2, 3)
    assert row["figures/main_seeds/_type"] == "image-file"
    assert logged["exit"] == 0


def test_tables_upload_without_tables_is_one_clear_error(env, capsys):
    from childtune.study import wandb_tables

    with pytest.raises(SystemExit) as exit_:
        wandb_tables.main([f"results_dir={env / 'empty'}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no tables") and "make reproduce-tables" in err
    assert "\n" not in err


def test_run_names_are_unique_across_a_p_sweep():
    from childtune.loggers import run_names

    base = {"study": "p_sweep", "model": "minilm", "task": "mrpc", "variant": "child_tuning_d",
            "n_train": 1000, "lr": 5e-5, "regularizer": "none"}
    names = {run_names({**base, "p": p, "seed": seed, "config_hash": f"h{p}"}, "childtune")["name"]
             for p in (0.1, 0.2, 0.3) for seed in (1, 2)}
    assert len(names) == 6 and "mrpc-child_tuning_d-p0.2-n1000-lr5e-05-seed2-h0.2" in names
