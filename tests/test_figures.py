"""Figures say what they lack: missing runs are marked and counted, the majority class is drawn
(or the caption says there is no reference record), the overlap heatmap is readable, marks the
chance level and, when the mask cache is absent, says it was not rebuilt and leaves the figure
on disk as it is. The notebook's plots: seed labels never overlap; curves from the history."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest
import torch

from childtune import mask_cache, records
from childtune.study import aggregate, figures, plan, record_plots, tables
from fake_records import fake_identity, fake_record

matplotlib.use("Agg")

P_SWEEP = ["experiment=p_sweep", "protocol=cpu", "task=mrpc,rte", "seed=1,2,3"]
MAJORITY_F1 = 0.8123


@pytest.fixture(scope="module")
def p_sweep_plan():
    return plan.make_plan(P_SWEEP)


def run_record(ident: dict, value: float, study: str, **extra) -> records.RunRecord:
    metric = "f1" if ident["task"] == "mrpc" else "accuracy"
    config = {"study": study, "protocol": {"name": "cpu"}, **extra.pop("config", {})}
    return fake_record(ident, value, metric, config=config, **extra)


def reference_record(model: str, task: str = "mrpc") -> records.RunRecord:
    """The majority-class record of reference_rows (mrpc: always 'paraphrase')."""
    ident = fake_identity(study="reference_rows", model=model, task=task, variant="reference",
                          lr=None, config_hash="feedc0ffee")
    return run_record(ident, MAJORITY_F1, "reference_rows", reference={"majority_class": {
        "dev": {"prediction": "1", "share": 0.68, "metrics": {"f1": MAJORITY_F1}}}})


def write_p_sweep(results, planned, kept: int = 12) -> dict:
    """Records for the first `kept` planned runs only (the lowest p or n_train first, seed by
    seed), plus the mrpc reference record; returns them by path."""
    runs = sorted(planned.runs, key=lambda r: (r["identity"]["p"] or 0,
                                               r["identity"]["n_train"] or 0, r["identity"]["seed"]))
    for i, run in enumerate(runs[:kept]):
        records.write_record(results, run_record(run["identity"], 0.6 + i / 100, "p_sweep"))
    records.write_record(results, reference_record(planned.runs[0]["identity"]["model"]))
    plan.write_manifest(results, planned)
    return {r.path: r for r in records.read_records(results)}


def texts(fig) -> str:
    return "\n".join([fig._suptitle.get_text()] + [t.get_text() for t in fig.texts]
                     + [t.get_text() for ax in fig.axes for t in [ax.title, *ax.texts]])


def test_the_p_sweep_figure_counts_and_marks_missing_runs(tmp_path, p_sweep_plan):
    recs = write_p_sweep(tmp_path, p_sweep_plan, kept=17)  # p=0.1 whole, p=0.2 partly
    fig = figures.curves_figure(tables.observations(p_sweep_plan, recs), "p", "p sweep", recs)
    shown = texts(fig)
    assert "17 of 120 planned runs have a result" in shown
    assert "mrpc (f1): 9/60 runs" in shown and "rte (accuracy): 8/60 runs" in shown
    assert shown.count("n=2/3") == 1 and shown.count("n=1/3") == 3  # seeds found / planned
    crosses = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "x"]
    assert sum(len(line.get_xdata()) for line in crosses) >= 2 * 2 * 8  # p values never run


@pytest.mark.parametrize("study", ["p_sweep", "low_resource"])
def test_curves_draw_the_majority_class_or_say_there_is_none(tmp_path, p_sweep_plan, study):
    planned = p_sweep_plan if study == "p_sweep" else plan.make_plan(
        ["experiment=low_resource", "protocol=cpu", "task=mrpc,rte", "seed=1"])
    recs = write_p_sweep(tmp_path, planned)
    x = "p" if study == "p_sweep" else "n_train"
    fig = figures.curves_figure(tables.observations(planned, recs), x, study, recs)
    by_task = {ax.get_title().split()[0]: ax for ax in fig.axes}
    dashed = [line for line in by_task["mrpc"].lines if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == [pytest.approx(100 * MAJORITY_F1)]
    assert not [line for line in by_task["rte"].lines if line.get_linestyle() == "--"]
    caption = "\n".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "mrpc 81.2 (always '1')" in caption
    assert "rte: no reference record" in caption  # no invented number


def cmap_rgb(value: float):
    return matplotlib.colormaps["viridis"](value)


def contrast(a, b) -> float:
    la, lb = sorted((figures.luminance(a), figures.luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_the_overlap_heatmap_is_readable_and_marks_chance():
    matrix = np.array([[0.95, 0.5, 0.05], [0.5, 0.3, 0.7], [0.05, 0.7, 0.1]])
    chance = np.full((3, 3), 0.3)
    fig = figures.overlap_figure(matrix, ["a", "b", "c"], chance, "t")
    heat, bar = fig.axes
    for text in heat.texts:
        value = float(text.get_text().split()[0])
        color = matplotlib.colors.to_rgb(text.get_color())
        assert contrast(color, cmap_rgb(value)) >= 4.5, text.get_text()  # WCAG AA
    assert "chance 0.30" in heat.texts[0].get_text()
    assert [line.get_ydata()[0] for line in bar.lines] == [pytest.approx(0.3)]
    # yellow cells were white on yellow before
    assert contrast((1, 1, 1), cmap_rgb(0.95)) < 1.5


def main_records(results, planned, cache) -> dict:
    rng = np.random.default_rng(0)
    for run in planned.runs:
        ident = run["identity"]
        mask = {"kind": "none"}
        if ident["variant"] == "child_tuning_d":
            key = f"{ident['task']}{ident['seed']}"
            kept = torch.from_numpy(rng.random(20000) < ident["p"])
            mask_cache.save(mask_cache.path(cache, key), {"w": kept}, {})  # as a run writes it
            mask = {"kind": "fisher_top", "cache_key": key}
        records.write_record(results, run_record(ident, 0.7, "main", mask=mask,
                                                 config={"runtime": {"cache_dir": str(cache)}}))
    plan.write_manifest(results, planned)


def test_the_overlap_figure_is_rebuilt_from_the_cache_or_says_why_not(tmp_path, capsys):
    planned = plan.make_plan(["experiment=main", "protocol=cpu", "model=tiny", "task=rte,mrpc",
                              "variant=vanilla,child_tuning_d", "seed=1,2"])
    results, cache = tmp_path / "results", tmp_path / "cache"
    main_records(results, planned, cache)
    aggregate.run([f"results_dir={results}"])
    figure = results / "figures" / "overlap-cpu.png"
    out = capsys.readouterr().out
    assert f"figure: wrote {figure}" in out
    built = __import__("json").loads(figure.with_suffix(".json").read_text())
    p = {t: next(r["identity"]["p"] for r in planned.runs if r["identity"]["task"] == t
                 and r["identity"]["variant"] == "child_tuning_d") for t in built["tasks"]}
    assert built["chance"] == [[max(p[a], p[b]) for b in built["tasks"]] for a in built["tasks"]]
    # random masks overlap by about chance
    assert np.allclose(built["overlap_coefficient"], built["chance"], atol=0.1)

    before = figure.read_bytes()
    for file in (cache / "masks").iterdir():  # a fresh clone: records, no mask cache
        file.unlink()
    aggregate.run([f"results_dir={results}"])
    out = capsys.readouterr().out
    assert f"figure: {figure} not rebuilt: it needs the cached CT_D masks of two tasks; 0 of " \
        f"the 4 CT_D runs' masks are in {cache / 'masks'}" in out
    assert "the existing figure is left as it is" in out
    assert figure.read_bytes() == before


def seed_records(cells: int) -> list[records.RunRecord]:
    out = []
    for cell, seed in itertools.product(range(cells), (1, 2, 3)):
        ident = fake_identity(
            model="minilm", variant=("vanilla", "child_tuning_d")[cell % 2],
            lr=[1e-5, 2e-5, 5e-5, 1e-4][cell // 2 % 4], p=0.3,
            n_train=[100, 300, 1000][cell // 8 % 3], seed=seed, config_hash=f"{cell:010d}")
        out.append(run_record(ident, 0.5 + seed / 100, "adhoc"))
    return out


def test_the_seed_plot_labels_never_overlap():
    fig = record_plots.seed_spread(seed_records(24))
    fig.canvas.draw()
    (ax,) = fig.axes
    boxes = [label.get_window_extent() for label in ax.get_yticklabels()]
    assert len(boxes) == 24 and len({label.get_text() for label in ax.get_yticklabels()}) == 24
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert all(fig.bbox.contains(b.x0, b.y0) for b in boxes)  # inside the figure


def test_training_curves_plot_the_history_of_the_records_that_have_one():
    recs = seed_records(2)
    for i, r in enumerate(recs[:3]):
        recs[i] = r.adding(history={
            "train": {"loss": list(np.linspace(0.7, 0.3 + i / 10, 50)),
                      "lr": list(np.linspace(1e-4, 0, 50))},
            "eval": {"step": [25, 50], "dev": {"loss": [0.6, 0.5], "accuracy": [0.55, 0.6]}}})
    fig = record_plots.training_curves(recs)  # the other three records have none
    loss, lr, dev = fig.axes
    assert "training loss" in loss.get_title() and "learning rate (1 schedules)" in lr.get_title()
    assert len(loss.lines) == 3 + 1 and len(dev.lines) == 3
    assert list(dev.lines[0].get_ydata()) == pytest.approx([55, 60])
    assert record_plots.training_curves(recs[3:]) is None
