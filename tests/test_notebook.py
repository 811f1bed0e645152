"""notebooks/analysis.ipynb runs headless (nbclient) on fixture records, and on an empty
results folder; it is committed without outputs."""
from __future__ import annotations

from pathlib import Path

import nbformat
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient
from omegaconf import OmegaConf

from childtune import records
from fake_records import fake_record

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def fixture_record(task: str, variant: str, seed: int, value: float,
                   history: bool = False) -> records.RunRecord:
    """A record shaped as train.run writes it, for a tiny-model config (with `history`, as
    written since the per-step history exists)."""
    with initialize_config_dir(config_dir=str(REPO / "src" / "childtune" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", f"task={task}", f"variant={variant}",
                                           f"seed={seed}", "data.n_train=64"])
    config = OmegaConf.to_container(cfg, resolve=True)
    metric = "accuracy" if task == "rte" else "f1"
    mask = {"kind": "none"}
    if variant != "vanilla":
        mask = {"kind": config["variant"]["mask"], "p": config["variant"]["p"],
                "source": "computed", "fisher_seconds": 0.5,
                "statistics": {"kept": 30, "masked_entries": 100, "kept_fraction": 0.3,
                               "per_layer": {"0": 0.2, "1": 0.4}}}
        if variant != "random_mask":
            mask["fisher_log10_histogram"] = {"counts": [5, 20, 45, 30], "zeros": 0,
                                              "edges": [-12.0, -10.5, -9.0, -7.5, -6.0]}
    extra = {"history": {"train": {"loss": [0.7 - step / 100 for step in range(12)],
                                   "lr": [1e-4 * (1 - step / 12) for step in range(12)]}},
             "eval_loss": {"dev": 0.65}} if history else {}
    return fake_record(
        records.identity(config), value, metric, config=config, **extra, mask=mask,
        train={"steps": 4, "examples": 64, "last_loss": 0.69, "warmup_steps": 0},
        timings={"train_seconds": 1.0, "eval_seconds": 0.5, "fisher_seconds": 0.0},
        logger=({"name": "wandb", "mode": "offline", "id": f"abc{seed}",
                 "dir": f"wandb/offline-run-x-abc{seed}", "project": "childtune-adhoc",
                 "group": "g"} if seed == 1 else None))


def write_fixture(results: Path, history: bool = True) -> None:
    """24 records; with `history`, those of seeds 1 and 2 have a per-step history (as
    written today), the others none (as written before)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in ("rte", "mrpc"):
        for variant in ("vanilla", "child_tuning_d", "lowest_fisher", "random_mask"):
            for seed in (1, 2, 3):
                records.write_record(results, fixture_record(task, variant, seed, 0.5 + seed / 100,
                                                             history=history and seed < 3))
    (results / "tables").mkdir()
    (results / "tables" / "main.csv").write_text("task,variant,mean,n\nrte,vanilla,0.52,3\n")
    (results / "figures").mkdir()
    plt.figure(figsize=(2, 2))
    plt.plot([0, 1])
    plt.savefig(results / "figures" / "main_seeds.png")
    plt.close("all")


def execute(results: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("CHILDTUNE_RESULTS_DIR", str(results))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def outputs(nb) -> tuple[str, int]:
    """All text the notebook printed or displayed, and how many images it showed."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + out.get("data", {}).get("text/plain", "")
                        + out.get("data", {}).get("text/markdown", ""))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


def test_notebook_runs_on_fixture_records(tmp_path, monkeypatch):
    write_fixture(tmp_path)
    text, images = outputs(execute(tmp_path, monkeypatch))
    assert "24 run records" in text
    assert "### main (`main.csv`)" in text and "0.52" in text  # the table is shown
    assert "### main_seeds" in text
    # the figure file, the seed-spread plot, the training curves, the Fisher/per-layer plot
    assert images == 4
    assert "16 of 24 records have a per-step history" in text
    assert "8 of 24 records have a wandb run" in text
    assert "wandb sync" in text


def test_notebook_runs_on_records_written_before_the_history(tmp_path, monkeypatch):
    write_fixture(tmp_path, history=False)
    text, images = outputs(execute(tmp_path, monkeypatch))
    assert "0 of 24 records have a per-step history" in text
    assert "no training curves: no record has a per-step history" in text
    assert images == 3  # no training curves; the rest as with new records


def test_notebook_runs_on_an_empty_results_folder(tmp_path, monkeypatch):
    text, images = outputs(execute(tmp_path, monkeypatch))
    assert "0 run records" in text and "no tables yet" in text and "no records yet" in text
    assert "no training curves" in text
    assert images == 0


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)

