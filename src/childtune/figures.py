"""Figures from the records (matplotlib, no torch): the p-sweep and low-resource curves (mean ±
sample std over seeds; hollow markers: fewer runs than planned), the kept fraction per encoder
layer of the CT_D child networks (the record's mask statistics), and the overlap of CT_D child
networks between tasks.

Overlap: for the child networks A and B of two tasks trained with the same seed, the overlap
coefficient |A ∩ B| / min(|A|, |B|), averaged over seeds (on the diagonal: a task's networks of
two different seeds, averaged over seed pairs). Two independent random networks keeping
fractions p_a and p_b overlap by max(p_a, p_b) on average. The networks are read from the mask
cache the runs filled (`<runtime.cache_dir>/masks/<record's mask.cache_key>.npz`); the figure
is skipped when they are not there (e.g. on a fresh clone)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from .tables import BEFORE_PRUNE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(obs, x: str, title: str, path: Path, log_x: bool = False) -> Path | None:
    data = obs[(obs["variant"] != BEFORE_PRUNE) & (obs["column"] == obs["task"])]
    if data["value"].notna().sum() == 0:
        return None
    plt = _pyplot()
    tasks = list(dict.fromkeys(data["column"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, part in data[data["column"] == task].groupby("variant", sort=False):
            g = part.groupby(x)["value"].agg(["mean", "std", "count", "size"]).reset_index()
            line = ax.errorbar(g[x], g["mean"], yerr=g["std"].fillna(0), capsize=3,
                               marker="o", label=variant)
            hollow = g["count"] < g["size"]
            ax.plot(g[x][hollow], g["mean"][hollow], "o", mfc="white",
                    color=line[0].get_color())
        metric = data.loc[data["column"] == task, "metric"].dropna()
        ax.set_title(f"{task} ({metric.iloc[0] if len(metric) else 'no runs'})")
        ax.set_xlabel(x)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score x100")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _d_records(plan, recs: dict) -> list[dict]:
    return [recs[r["path"]] for r in plan.runs
            if r["identity"]["variant"] == "child_tuning_d" and r["path"] in recs]


def kept_per_layer(plan, recs: dict, title: str, path: Path) -> Path | None:
    found = [r for r in _d_records(plan, recs) if (r.get("mask") or {}).get("statistics")]
    if not found:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for task in dict.fromkeys(r["identity"]["task"] for r in found):
        per_layer = [r["mask"]["statistics"]["per_layer"] for r in found
                     if r["identity"]["task"] == task]
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _p(found: list[dict], task: str):
    return next(r["identity"]["p"] for r in found if r["identity"]["task"] == task)


def read_mask_bits(path: Path) -> np.ndarray:
    """The packed bits of a cached mask (the format variants.save_masks writes), without torch;
    the names and shapes are returned as a layout key so only like masks are compared."""
    with np.load(path) as data:
        return data["bits"].copy(), str(data["names"]) + str(data["shapes"])


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    both = int(np.bitwise_count(a & b).sum())
    return both / min(int(np.bitwise_count(a).sum()), int(np.bitwise_count(b).sum()))


def overlap(plan, recs: dict, title: str, path: Path) -> Path | None:
    masks: dict[str, dict[int, np.ndarray]] = {}
    layouts = set()
    for r in _d_records(plan, recs):
        key = (r.get("mask") or {}).get("cache_key")
        cache = (r["config"].get("runtime") or {}).get("cache_dir")
        file = Path(cache) / "masks" / f"{key}.npz" if key and cache else None
        if file is None or not file.is_file():
            continue
        bits, layout = read_mask_bits(file)
        layouts.add(layout)
        masks.setdefault(r["identity"]["task"], {})[r["identity"]["seed"]] = bits
    tasks = list(masks)
    if len(tasks) < 2 or len(layouts) != 1:
        return None
    matrix = np.full((len(tasks), len(tasks)), math.nan)
    for i, j in itertools.product(range(len(tasks)), repeat=2):
        a, b = masks[tasks[i]], masks[tasks[j]]
        pairs = ([(a[s], b[s]) for s in a if s in b] if i != j else
                 [(a[s], a[t]) for s, t in itertools.combinations(sorted(a), 2)])
        if pairs:
            matrix[i, j] = float(np.mean([_overlap(x, y) for x, y in pairs]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i, j in itertools.product(range(len(tasks)), repeat=2):
        if not math.isnan(matrix[i, j]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(tasks)), tasks)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(
        {"tasks": tasks, "overlap_coefficient": matrix.tolist(),
         "seeds": {t: sorted(masks[t]) for t in tasks}}, indent=1) + "\n")
    return path


def build(observations: list, recs: dict, out_dir: Path, slugs: dict[str, str]) -> list[Path]:
    """Every figure the plans with records allow; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plan, obs in observations:
        slug = slugs[plan.name]
        if plan.study == "p_sweep":
            written.append(_curves(obs, "p", f"p sweep ({slug}): mean ± std over seeds",
                                   out_dir / f"p_sweep-{slug}.png"))
        elif plan.study == "low_resource":
            written.append(_curves(obs, "n_train", f"low resource ({slug}): mean ± std over seeds",
                                   out_dir / f"low_resource-{slug}.png", log_x=True))
        elif plan.study == "main":
            written.append(kept_per_layer(plan, recs, f"CT_D kept fraction per layer ({slug})",
                                          out_dir / f"kept_per_layer-{slug}.png"))
            written.append(overlap(plan, recs, f"CT_D child networks, overlap coefficient "
                                   f"({slug});\nchance: max(p_a, p_b)",
                                   out_dir / f"overlap-{slug}.png"))
    return [p for p in written if p is not None]
