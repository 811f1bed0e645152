"""Figures from the records (matplotlib, no torch): the p-sweep and low-resource curves (mean ±
sample std over seeds; hollow markers: fewer runs than planned), the kept fraction per encoder
layer of the CT_D child networks (the record's mask statistics), and the overlap of CT_D child
networks between tasks.

Overlap: for the child networks A and B of two tasks trained with the same seed, the overlap
coefficient |A ∩ B| / min(|A|, |B|), averaged over seeds (on the diagonal: a task's networks of
two different seeds, averaged over seed pairs). Two independent random networks keeping
fractions p_a and p_b overlap by max(p_a, p_b) on average. The networks are read from the mask
cache the runs filled (`<runtime.cache_dir>/masks/<record's mask.cache_key>.npz`); when they
are not there (e.g. on a fresh clone) the figure is not rebuilt, the one on disk is left as it
is, and `build` says so.

Every figure says what it lacks: the curves count the records against the planned runs (hollow
markers with n=found/planned where seeds are missing, an x on the axis where none ran) and draw
the majority class of each task's dev set (dashed; from the reference_rows records, and a
caption naming the tasks without one); the heatmap marks the chance level."""
from __future__ import annotations

import itertools
import json
import math
import textwrap
from pathlib import Path

import numpy as np

from .evidence import reference_records
from ..records import RunRecord
from .tables import BEFORE_PRUNE
from .. import mask_cache


class NotRebuilt(Exception):
    """A figure that what is here cannot rebuild (the message says why); the file on disk, if
    any, is left as it is."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def majority_class(recs: dict, model: str, task: str) -> tuple[float | None, str]:
    """The majority class's headline score x100 on the dev set (reference_rows records), or
    None, and what a caption says of it."""
    record = reference_records(recs, model).get(task)
    if record is None:
        return None, f"{task}: no reference record for {model} (experiment=reference_rows)"
    headline = record.headline
    part = record.reference_row("majority_class", headline.split) or {}
    value = (part.get("metrics") or {}).get(headline.metric)
    if value is None:
        return None, f"{task}: undefined ({headline.metric} of a constant prediction)"
    return 100 * value, f"{task} {100 * value:.1f} (always {part.get('prediction')!r})"


def curves_figure(obs, x: str, title: str, recs: dict, log_x: bool = False):
    """Mean ± std over seeds per variant along `x`, a panel per task, or None without values."""
    data = obs[(obs["variant"] != BEFORE_PRUNE) & (obs["column"] == obs["task"])]
    if data["value"].notna().sum() == 0:
        return None
    plt = _pyplot()
    tasks = list(dict.fromkeys(data["column"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.9), squeeze=False)
    notes = [_panel(ax, data[data["column"] == task], x, recs, log_x)
             for ax, task in zip(axes[0], tasks)]
    axes[0][0].set_ylabel("score x100")
    axes[0][-1].legend(fontsize=7)
    found = int(data["value"].notna().sum())
    missing = (f"{found} of {len(data)} planned runs have a result; hollow: fewer seeds than "
               f"planned (n=found/planned), x on the axis: none" if found < len(data)
               else f"all {len(data)} planned runs")
    fig.suptitle(f"{title}\n{missing}", fontsize=9)
    caption = textwrap.wrap("majority class on the dev set (dashed): " + "; ".join(notes),
                            int(16 * fig.get_figwidth()))
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=7)
    fig.tight_layout(rect=(0, 0.035 * len(caption) + 0.01, 1, 1))
    return fig


def _panel(ax, rows, x: str, recs: dict, log_x: bool) -> str:
    """One task's curves, the majority-class line; returns the caption's note on it."""
    counts = []
    for k, (variant, part) in enumerate(rows.groupby("variant", sort=False)):
        g = part.groupby(x)["value"].agg(["mean", "std", "count", "size"]).reset_index()
        color = ax.errorbar(g[x], g["mean"], yerr=g["std"].fillna(0), capsize=3, marker="o",
                            label=variant)[0].get_color()
        short = g[(g["count"] > 0) & (g["count"] < g["size"])]
        ax.plot(short[x], short["mean"], "o", mfc="white", color=color)
        counts += [(point[x], point["mean"], f"n={point['count']:.0f}/{point['size']:.0f}",
                    color) for _, point in short.iterrows()]
        none = g.loc[g["count"] == 0, x]
        if len(none):  # an empty line would still count in the layout
            ax.plot(none, [0.04 * k] * len(none), "x", color=color, ms=6, mew=1.5,
                    clip_on=False, transform=ax.get_xaxis_transform(), zorder=3)
    task = rows["column"].iloc[0]
    value, note = majority_class(recs, rows["model"].iloc[0], task)
    if value is not None:
        ax.axhline(value, color="0.35", ls="--", lw=1, label="majority class")
    metric = rows["metric"].dropna()
    ax.set_title(f"{task} ({metric.iloc[0] if len(metric) else 'no runs'}): "
                 f"{int(rows['value'].notna().sum())}/{len(rows)} runs", fontsize=9)
    ax.set_xlabel(x)
    if log_x:
        ax.set_xscale("log")
    ax.margins(y=0.12)  # room for the x marks of missing runs below the lowest value
    ax.grid(alpha=0.3)
    _label(ax, counts)
    return note


def _label(ax, labels: list[tuple], gap: float = 8) -> None:
    """Each (x, y, text, colour) written beside its point, the labels of one x at least `gap`
    points apart (points of several variants often lie close together)."""
    ax.get_ylim()  # settles the autoscaled limits the positions below depend on
    scale = 72 / ax.figure.dpi
    for at in dict.fromkeys(x for x, *_ in labels):
        placed = -math.inf
        for x, y, text, color in sorted((lab for lab in labels if lab[0] == at),
                                        key=lambda lab: lab[1]):
            y_points = ax.transData.transform((x, y))[1] * scale
            placed = max(y_points + 2, placed + gap)
            ax.annotate(text, (x, y), xytext=(5, placed - y_points), textcoords="offset points",
                        fontsize=6, color=color).set_in_layout(False)


def _d_records(plan, recs: dict) -> list[RunRecord]:
    return [recs[r["path"]] for r in plan.runs
            if r["identity"]["variant"] == "child_tuning_d" and r["path"] in recs]


def kept_per_layer(plan, recs: dict, title: str, path: Path) -> Path | None:
    found = [r for r in _d_records(plan, recs) if r.kept_per_layer is not None]
    if not found:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for task in dict.fromkeys(r.identity["task"] for r in found):
        per_layer = [r.kept_per_layer for r in found if r.identity["task"] == task]
        layers = sorted((k for k in per_layer[0] if k.isdigit()), key=int)
        values = np.array([[pl[k] for k in layers] for pl in per_layer])
        ax.errorbar([int(k) for k in layers], values.mean(0), yerr=values.std(0), marker="o",
                    capsize=3, label=f"{task} (p={_p(found, task)})")
    ax.set_xlabel("encoder layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("kept fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _p(found: list[RunRecord], task: str):
    return next(r.identity["p"] for r in found if r.identity["task"] == task)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    both = int(np.bitwise_count(a & b).sum())
    return both / min(int(np.bitwise_count(a).sum()), int(np.bitwise_count(b).sum()))


def overlap(plan, recs: dict, title: str, path: Path) -> Path | None:
    """The heatmap, or None without CT_D runs; NotRebuilt when their masks are not cached."""
    masks: dict[str, dict[int, np.ndarray]] = {}
    layouts, p_of, runs, where = set(), {}, _d_records(plan, recs), set()
    for r in runs:
        key, cache = r.mask_cache_key, r.setting("runtime.cache_dir")
        where.add(str(mask_cache.folder(cache)) if cache else "no runtime.cache_dir")
        file = mask_cache.path(cache, key) if key and cache else None
        if file is None or not file.is_file():
            continue
        bits, layout = mask_cache.read_bits(file)
        layouts.add(layout)
        masks.setdefault(r.identity["task"], {})[r.identity["seed"]] = bits
        p_of[r.identity["task"]] = r.identity["p"]
    if not runs:
        return None
    tasks, found = list(masks), sum(map(len, masks.values()))
    if len(tasks) < 2 and found == len(runs):
        raise NotRebuilt(f"it compares the CT_D runs of two tasks or more; the plan's records "
                         f"have {', '.join(tasks)} only")
    if len(tasks) < 2:
        raise NotRebuilt(f"it needs the cached CT_D masks of two tasks; {found} of the "
                         f"{len(runs)} CT_D runs' masks are in {', '.join(sorted(where))} (a "
                         f"fresh clone has none: rerun the CT_D runs, or copy the mask cache "
                         f"there)")
    if len(layouts) != 1:
        raise NotRebuilt("the cached CT_D masks have different layouts (other models?)")
    matrix = np.full((len(tasks), len(tasks)), math.nan)
    for i, j in itertools.product(range(len(tasks)), repeat=2):
        a, b = masks[tasks[i]], masks[tasks[j]]
        pairs = ([(a[s], b[s]) for s in a if s in b] if i != j else
                 [(a[s], a[t]) for s, t in itertools.combinations(sorted(a), 2)])
        if pairs:
            matrix[i, j] = float(np.mean([_overlap(x, y) for x, y in pairs]))
    chance = np.array([[max(p_of[a], p_of[b]) for b in tasks] for a in tasks])
    _save(overlap_figure(matrix, tasks, chance, title), path)
    path.with_suffix(".json").write_text(json.dumps(
        {"tasks": tasks, "overlap_coefficient": matrix.tolist(), "chance": chance.tolist(),
         "seeds": {t: sorted(masks[t]) for t in tasks}}, indent=1) + "\n")
    return path


def luminance(rgb) -> float:
    """Relative luminance of an sRGB colour (WCAG 2)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_color(background) -> str:
    """Black or white, whichever contrasts more with the background."""
    return "black" if luminance(background) > 0.179 else "white"


def overlap_figure(matrix: np.ndarray, tasks: list[str], chance: np.ndarray, title: str):
    """Each cell: the overlap coefficient, and below it the chance level max(p_a, p_b); the
    colorbar marks the chance levels in red."""
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap=cmap)
    for i, j in itertools.product(range(len(tasks)), repeat=2):
        if not math.isnan(matrix[i, j]):
            ax.text(j, i, f"{matrix[i, j]:.2f}\nchance {chance[i, j]:.2f}", ha="center",
                    va="center", fontsize=7, color=text_color(cmap(matrix[i, j])))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(tasks)), tasks)
    bar = fig.colorbar(image, ax=ax, fraction=0.046)
    for level in sorted(set(chance[~np.isnan(matrix)].tolist())):
        bar.ax.axhline(level, color="red", lw=2)
    bar.set_label("overlap coefficient (red: chance level)", fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def build(observations: list, recs: dict, out_dir: Path,
          slugs: dict[str, str]) -> tuple[list[Path], list[str]]:
    """Every figure the plans with records allow: (the files written, a line for each figure
    that could not be rebuilt)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, notes = [], []

    def attempt(path: Path, draw) -> None:
        try:
            written.append(draw(path))
        except NotRebuilt as exc:
            notes.append(f"figure: {path} not rebuilt: {exc}; "
                         + ("the existing figure is left as it is" if path.exists()
                            else "there is no such figure yet"))

    for plan, obs in observations:
        slug = slugs[plan.name]
        if plan.study in ("p_sweep", "low_resource"):
            x, name = ("p", "p sweep") if plan.study == "p_sweep" else ("n_train", "low resource")
            attempt(out_dir / f"{plan.study}-{slug}.png", lambda path: _save_or_none(
                curves_figure(obs, x, f"{name} ({slug}): mean ± std over seeds", recs,
                              log_x=x == "n_train"), path))
        elif plan.study == "main":
            attempt(out_dir / f"kept_per_layer-{slug}.png", lambda path: kept_per_layer(
                plan, recs, f"CT_D kept fraction per layer ({slug})", path))
            attempt(out_dir / f"overlap-{slug}.png", lambda path: overlap(
                plan, recs, f"CT_D child networks, overlap coefficient ({slug});\n"
                f"chance: max(p_a, p_b), two random networks", path))
    return [p for p in written if p is not None], notes


def _save_or_none(fig, path: Path) -> Path | None:
    return None if fig is None else _save(fig, path)
