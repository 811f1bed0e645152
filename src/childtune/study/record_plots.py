"""Plots of what single run records hold, for notebooks/analysis.ipynb (matplotlib, no torch):
the training curves of the per-step history (`record.train_curve`: the loss and learning rate
of every optimizer step, and the dev-set curve of runs with `trainer.eval_every`), and the
spread of the seeds of each table cell. Records written before the history existed have none:
the curves leave them out (and return None when no record has one)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..records import RunRecord

MAX_LEGEND = 8


def _pyplot():
    """pyplot on whatever backend is in use (a notebook's inline one: figures.py's Agg would
    stop the notebook from showing any plot)."""
    import matplotlib.pyplot as plt

    return plt


def _train_curve(record: RunRecord) -> dict:
    return (record.train_curve or {}) if record.succeeded else {}


def smooth(values, window: int) -> np.ndarray:
    """Running mean over the last `window` values (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _by(records: list[RunRecord], *keys: str) -> dict[tuple, list[RunRecord]]:
    out: dict[tuple, list[RunRecord]] = {}
    for r in records:
        out.setdefault(tuple(r.identity[k] for k in keys), []).append(r)
    return out


def _colors(records: list[RunRecord]) -> dict[str, str]:
    """A colour per variant, in order of appearance."""
    return {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(
        r.identity["variant"] for r in records))}


def training_curves(records: list[RunRecord]):
    """A row per (model, task): training loss against step (each run faint, smoothed over 2%
    of its steps; bold: the mean of a variant's runs of the most common length), the
    learning-rate schedules, and the dev-set headline metric where runs evaluated every
    `trainer.eval_every` steps. None when no record has a per-step history."""
    runs = [r for r in records if _train_curve(r).get("loss")]
    if not runs:
        return None
    plt = _pyplot()
    with_eval = any(r.eval_curve for r in runs)
    panels = _by(runs, "model", "task")
    colors = _colors(runs)
    fig, axes = plt.subplots(len(panels), 2 + with_eval, squeeze=False,
                             figsize=(4.6 * (2 + with_eval), 3.2 * len(panels)))
    for row, ((model, task), part) in zip(axes, panels.items()):
        _loss_panel(row[0], part, colors)
        _lr_panel(row[1], part)
        if with_eval:
            _eval_panel(row[2], part, colors)
        for ax in row:
            ax.set_title(f"{model} {task}: {ax.get_title()}", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _loss_panel(ax, runs: list[RunRecord], colors: dict) -> None:
    for (variant,), part in _by(runs, "variant").items():
        losses = [r.train_curve["loss"] for r in part]
        for loss in losses:
            ax.plot(range(1, len(loss) + 1), smooth(loss, max(1, len(loss) // 50)),
                    color=colors[variant], alpha=0.25, lw=0.7)
        length = Counter(map(len, losses)).most_common(1)[0][0]
        mean = np.mean([smooth(x, max(1, length // 50)) for x in losses if len(x) == length], 0)
        ax.plot(range(1, length + 1), mean, color=colors[variant], lw=1.8,
                label=f"{variant} ({len(losses)} runs)")
    ax.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    ax.legend(fontsize=7)


def _lr_panel(ax, runs: list[RunRecord]) -> None:
    schedules = Counter(tuple(r.train_curve["lr"]) for r in runs)
    for schedule, n in schedules.items():
        ax.plot(range(1, len(schedule) + 1), schedule, lw=1.2,
                label=f"peak {max(schedule):.3g}, {len(schedule)} steps ({n} runs)")
    ax.set(title=f"learning rate ({len(schedules)} schedules)", xlabel="optimizer step",
           ylabel="lr")
    if len(schedules) <= MAX_LEGEND:
        ax.legend(fontsize=7)


def _eval_panel(ax, runs: list[RunRecord], colors: dict) -> None:
    shown = set()
    for r in runs:
        if r.headline_curve is None:
            continue
        steps, values = r.headline_curve
        variant = r.identity["variant"]
        ax.plot(steps, [None if v is None else 100 * v for v in values], marker=".",
                color=colors[variant], alpha=0.6, label=None if variant in shown else variant)
        shown.add(variant)
        ax.set(ylabel=f"{r.headline.metric} x100 ({r.headline.split})")
    ax.set(title="dev set (trainer.eval_every)", xlabel="optimizer step")
    if shown:
        ax.legend(fontsize=7)


def _cells(rows: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """The task's cells (config hash -> its seeds' records), named by their variant and the
    identity fields that differ between the task's cells (with the hash's start where two
    would still look alike), ordered by those fields."""
    varying = [k for k in ("model", "regularizer", "p", "n_train", "lr")
               if len({str(r.identity.get(k)) for r in rows}) > 1]

    def name(ident: dict) -> str:
        return " ".join([ident["variant"]] + [
            f"{k}={ident[k]:g}" if isinstance(ident[k], float) else f"{k}={ident[k]}"
            for k in varying])

    def order(ident: dict) -> tuple:
        return (ident["variant"], *((ident[k] is None, ident[k] or 0) for k in varying))

    cells = sorted(_by(rows, "config_hash").values(), key=lambda c: order(c[0].identity))
    counts = Counter(name(c[0].identity) for c in cells)
    return [(name(ident) + (f" [{ident['config_hash'][:6]}]" if counts[name(ident)] > 1
                            else ""), cell) for cell in cells for ident in [cell[0].identity]]


def seed_spread(records: list[RunRecord]):
    """One row per table cell (a config: its seeds differ only in the seed), one dot per seed
    at its headline score x100; a panel per task, as tall as its cells need (labels never
    overlap however many cells). None without successful records."""
    rows = [r for r in records if r.succeeded and r.headline_value() is not None]
    if not rows:
        return None
    plt = _pyplot()
    cells = {task: _cells(part) for (task,), part in _by(rows, "task").items()}
    heights = [len(c) for c in cells.values()]
    fig, axes = plt.subplots(len(cells), 1, squeeze=False, figsize=(
        7.5, 0.9 * len(cells) + 0.24 * sum(heights)), gridspec_kw={"height_ratios": heights})
    colors = _colors(rows)
    for ax, (task, named) in zip(axes[:, 0], cells.items()):
        for y, (_, cell) in enumerate(named):
            ax.scatter([100 * r.headline.value for r in cell], [y] * len(cell), s=14,
                       color=colors[cell[0].identity["variant"]], zorder=2)
        ax.set_yticks(range(len(named)), [label for label, _ in named], fontsize=8)
        ax.set_ylim(len(named) - 0.5, -0.5)
        ax.set_xlabel(f"{named[0][1][0].headline.metric} x100 (dev), one dot per seed",
                      fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
