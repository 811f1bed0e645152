"""A study's tables from its plan and the records the plan names (no torch, no training code).

Layout: one column per task (`A→B` for task transfer, `A→B` next to `A` for domain transfer),
one row per variant (with p, lr when the study sweeps them), one panel per value of any other
swept key (e.g. data.n_train). Scores are the record's headline metric x100 (its transfer
accuracy for a domain-transfer column); a cell is mean ± sample std (ddof=1) over seeds with
its number of runs n. A cell with fewer runs than the plan names is marked † (n/planned),
never silently averaged (a run whose metric could not be computed, null in its record, counts as
missing). `avg` is the mean over the row's averaged columns, per seed, over the seeds that have
all of them.

Δ vs vanilla: the mean of the per-seed differences (paired by seed) against the vanilla row of
the same panel; p-value: two-sided paired t-test, scipy.stats.ttest_rel; the Wilcoxon
signed-rank test (scipy.stats.wilcoxon) is the secondary test, in the CSV. Rows of a method
combined with CT_D (`<method>_ct_d`, the combinations study) also get the same Δ against the
method without CT_D (`<method>`), in a grid of their own.

Paper numbers come from the reference file only and stay in columns named "paper ..."."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from .cells import delta_text, fmt_number, fmt_p, fmt_value, score_text
from .plan import TASK_KEYS, Plan
from ..records import RunRecord

BASELINE = "vanilla"
WITH_CT_D = "_ct_d"   # the combinations study's row of <method> combined with CT_D: <method>_ct_d
BEFORE_PRUNE = "prune (before pruning)"
SHORT = {"variant.p": "p", "trainer.lr": "lr"}


# ---------------------------------------------------------------- observations

def _layout_keys(plan: Plan) -> tuple[list[str], list[str]]:
    """(row keys besides the variant, panel keys) among the plan's swept keys."""
    swept = [k for k in plan.swept if k not in ("seed", "variant", "method", *TASK_KEYS)]
    rows = [k for k in swept if k.startswith(("variant.", "trainer.", "regularizer"))]
    return rows, [k for k in swept if k not in rows]


def _row_variant(run: dict) -> str:
    """The variant a planned run's row is named by: its method in prior_methods/combinations."""
    return run["overrides"].get("method", run["identity"]["variant"])


def _columns(run: dict) -> list[tuple[str, bool, str | None]]:
    """(column, counts in avg, eval task or None) of one planned run."""
    task = run["identity"]["task"]
    transfer = run.get("transfer") or {}
    source = transfer.get("source_task")
    evals = [t for t in transfer.get("eval_tasks") or [] if t != task]
    if source:
        return [(f"{source}→{task}", True, None)]
    if evals:
        return [(task, False, None)] + [(f"{task}→{t}", True, t) for t in evals]
    return [(task, True, None)]


def _value(record: RunRecord, eval_task: str | None, before_prune: bool) -> float | None:
    value = (record.transfer_accuracy(eval_task) if eval_task is not None
             else record.headline_value(before_prune))
    return None if value is None else 100.0 * value


def observations(plan: Plan, records: dict[str, RunRecord]) -> pd.DataFrame:
    """One row per planned (cell, seed): its value (NaN when the record is missing)."""
    row_keys, panel_keys = _layout_keys(plan)
    rows = []
    for run in plan.runs:
        ident, over = run["identity"], run["overrides"]
        extras = ", ".join(f"{SHORT.get(k, k)}={fmt_value(over[k])}" for k in row_keys if k in over)
        panel = ", ".join(f"{k}={fmt_value(over[k])}" for k in panel_keys if k in over)
        record = records.get(run["path"])
        label = _row_variant(run)
        variants = [label] + ([BEFORE_PRUNE] if ident["variant"] == "prune" else [])
        for variant in variants:
            for column, in_avg, eval_task in _columns(run):
                value = None if record is None else _value(record, eval_task,
                                                           variant == BEFORE_PRUNE)
                rows.append({
                    "plan": plan.name, "study": plan.study, "panel": panel,
                    "row": f"{variant} {extras}".strip(), "variant": variant, "extras": extras,
                    "column": column, "in_avg": in_avg, "seed": ident["seed"],
                    "value": np.nan if value is None else value, "found": record is not None,
                    "model": ident["model"], "task": ident["task"], "p": ident.get("p"),
                    "n_train": ident.get("n_train"), "lr": ident.get("lr"),
                    "metric": None if record is None else record.headline.metric,
                    "path": run["path"]})
    return pd.DataFrame(rows)


def learning_rates(plan: Plan) -> str:
    """The plan's learning rates, unless its rows already show them (an lr sweep): per task when
    every row uses the same rate on a task, else per row and task (main_tuned_lr)."""
    if "trainer.lr" in plan.swept:
        return ""
    rates: dict[str, dict[str, set]] = {}
    for run in plan.runs:
        ident = run["identity"]
        if ident.get("lr") is None:
            continue
        by_task = rates.setdefault(_row_variant(run), {})
        by_task.setdefault(ident["task"], set()).add(fmt_value(ident["lr"]))

    def text(by_task: dict[str, set]) -> str:
        return ", ".join(f"{task} {'/'.join(sorted(lrs))}" for task, lrs in by_task.items())

    per_task: dict[str, set] = {}
    for by_task in rates.values():
        for task, lrs in by_task.items():
            per_task.setdefault(task, set()).update(lrs)
    if all(len(lrs) == 1 for lrs in per_task.values()):
        return text(per_task)
    return "; ".join(f"{row}: {text(by_task)}" for row, by_task in rates.items())


# ---------------------------------------------------------------- statistics

def _p_values(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(a) < 2 or np.allclose(a - b, (a - b)[0]):
        return math.nan, math.nan  # no spread of differences: no test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_t = float(stats.ttest_rel(a, b).pvalue)
        try:
            p_w = float(stats.wilcoxon(a, b).pvalue)
        except ValueError:
            p_w = math.nan
    return p_t, p_w


def _cell(values: pd.Series, planned: int) -> dict:
    """values: indexed by seed, NaN for a missing run."""
    present = values.dropna()
    n = len(present)
    return {"n": n, "n_planned": planned, "complete": n == planned,
            "mean": float(present.mean()) if n else math.nan,
            "std": float(present.std(ddof=1)) if n > 1 else math.nan,
            "values": {int(s): round(float(v), 6) for s, v in present.items()}}


def _paired(values: pd.Series, base: pd.Series) -> dict:
    common = values.dropna().index.intersection(base.dropna().index)
    a, b = values[common].to_numpy(float), base[common].to_numpy(float)
    p_t, p_w = _p_values(a, b)
    return {"delta": float(np.mean(a - b)) if len(common) else math.nan,
            "n_pairs": len(common), "p_ttest_rel": p_t, "p_wilcoxon": p_w}


def seed_series(obs: pd.DataFrame) -> dict[tuple, pd.Series]:
    """(panel, row, column) -> seed-indexed values; column 'avg' is the per-seed average."""
    out = {}
    for (panel, row, column), group in obs.groupby(["panel", "row", "column"], sort=False):
        out[(panel, row, column)] = group.set_index("seed")["value"]
    averaged = obs[obs["in_avg"]]
    panel_columns = {panel: set(part["column"]) for panel, part in averaged.groupby("panel")}
    for (panel, row), group in averaged.groupby(["panel", "row"], sort=False):
        if set(group["column"]) != panel_columns[panel]:
            continue  # a row with fewer columns (an extra sweep's, one task) has no avg
        wide = group.pivot(index="seed", columns="column", values="value")
        out[(panel, row, "avg")] = wide.mean(axis=1, skipna=False)  # NaN unless all columns
    return out


def summarize(obs: pd.DataFrame) -> pd.DataFrame:
    """One row per (panel, row, column) including 'avg': n, mean, std, Δ vs vanilla, p."""
    series = seed_series(obs)
    variant_of = dict(zip(obs["row"], obs["variant"]))
    extras_of = dict(zip(obs["row"], obs["extras"]))
    rows = []
    for (panel, row, column), values in series.items():
        planned = len(values)
        complete_parts = True
        if column == "avg":
            parts = obs[(obs["panel"] == panel) & (obs["row"] == row) & obs["in_avg"]]
            complete_parts = bool(parts["found"].all() and parts["value"].notna().all())
        cell = _cell(values, planned)
        cell["complete"] = cell["complete"] and complete_parts
        base_row = f"{BASELINE} {extras_of[row]}".strip()
        base = series.get((panel, base_row, column))
        paired = (_paired(values, base) if base is not None and base_row != row
                  else {"delta": math.nan, "n_pairs": 0, "p_ttest_rel": math.nan,
                        "p_wilcoxon": math.nan})
        rows.append({"plan": obs["plan"].iloc[0], "study": obs["study"].iloc[0],
                     "panel": panel, "row": row, "variant": variant_of[row], "column": column,
                     **cell, **paired})
    return pd.DataFrame(rows)


def delta_versus(obs: pd.DataFrame, panel: str, row: str, versus_variant: str,
                 column: str) -> dict | None:
    """Δ of a row against another variant's row (for the paper's deltas against CT_D, and of
    each `<method>_ct_d` row against `<method>`); complete when both rows have every seed."""
    series = seed_series(obs[obs["panel"] == panel])
    extras = obs.loc[obs["row"] == row, "extras"].iloc[0]
    base = series.get((panel, f"{versus_variant} {extras}".strip(), column))
    values = series.get((panel, row, column))
    if base is None or values is None:
        return None
    return {**_paired(values, base),
            "complete": bool(values.notna().all() and base.notna().all())}


def without_ct_d(variant: str) -> str | None:
    """The row a `<method>_ct_d` row is compared with: `<method>` (None for other rows)."""
    return variant.removesuffix(WITH_CT_D) if variant.endswith(WITH_CT_D) else None


# ---------------------------------------------------------------- paper numbers

def paper_entries(reference: list[dict], study: str, models: set[str]) -> list[dict]:
    """The reference numbers of a study: for the plan's model if the paper has it, else all."""
    entries = [e for e in reference if e["study"] == study]
    own = [e for e in entries if e.get("model") in models]
    return [e for e in entries if e.get("model") in models or e.get("model") is None] \
        if own else entries


def _paper_text(entry: dict, models: set[str]) -> str:
    value = f"{entry['value']:+.2f}" if entry["quantity"] == "delta" else f"{entry['value']:.2f}"
    if entry["quantity"] == "delta" and entry.get("versus") != BASELINE:
        value += f" vs {entry['versus']}"
    model = entry.get("model")
    if model not in models:
        value += f" ({model or 'model not stated'})"
    return value


def _paper_cells(entries: list[dict], row: str, columns: list[str], models: set[str]) -> list:
    return [next((_paper_text(e, models) for e in entries
                  if e["row"] == row and e["column"] == c), "") for c in columns]


def _grid(header: list[str], rows: list[list[str]]) -> dict:
    return {"header": header, "rows": rows}


def grids(stats: pd.DataFrame, obs: pd.DataFrame, reference: list[dict]) -> list[dict]:
    """Per panel: the score grid, the Δ grid and, for `<method>_ct_d` rows, the grid of their Δ
    against `<method>` (header + rows of strings, renderer-neutral; None when there are no such
    rows). Paper numbers get columns of their own: "paper <column>" and "paper Δ <column>",
    and, where the paper's Δ is against another variant than vanilla, ours against that
    variant."""
    models = set(obs["model"])
    entries = paper_entries(reference, obs["study"].iloc[0], models)
    out = []
    for panel, part in stats.groupby("panel", sort=False):
        columns = [c for c in dict.fromkeys(part["column"]) if c != "avg"] + ["avg"]
        rows = list(dict.fromkeys(part["row"]))
        cell = {(r, c): x for r, c, x in zip(part["row"], part["column"],
                                              part.to_dict("records"))}
        means = [e for e in entries if e["quantity"] == "mean" and e["row"] in rows]
        deltas = [e for e in entries if e["quantity"] == "delta" and e["row"] in rows]
        mean_cols = list(dict.fromkeys(e["column"] for e in means))
        delta_cols = list(dict.fromkeys(e["column"] for e in deltas))
        score = _grid(["variant", *columns, *(f"paper {c}" for c in mean_cols)],
                      [[r, *(score_text(cell[(r, c)]) if (r, c) in cell else "" for c in columns),
                        *_paper_cells(means, r, mean_cols, models)] for r in rows])
        versus = {(e["row"], e["column"]): e["versus"] for e in deltas
                  if e.get("versus", BASELINE) != BASELINE}
        other = list(dict.fromkeys(c for _, c in versus))
        delta_rows = [r for r in rows if any(e["row"] == r for e in deltas)
                      or any(cell.get((r, c), {}).get("n_pairs") for c in columns)]
        delta = _grid(["variant", *columns, *(f"paper Δ {c}" for c in delta_cols),
                       *(f"ours Δ {c} vs paper's baseline" for c in other)],
                      [[r, *(delta_text(cell[(r, c)]) if (r, c) in cell else "" for c in columns),
                        *_paper_cells(deltas, r, delta_cols, models),
                        *(_versus_text(obs, panel, r, versus.get((r, c)), c) for c in other)]
                       for r in delta_rows])
        out.append({"panel": panel, "score": score, "delta": delta if delta_rows else None,
                    "without_ct_d": _without_ct_d_grid(obs, panel, part, columns)})
    return out


def _without_ct_d_grid(obs: pd.DataFrame, panel: str, part: pd.DataFrame,
                       columns: list[str]) -> dict | None:
    pairs = {r: without_ct_d(v) for r, v in zip(part["row"], part["variant"]) if without_ct_d(v)}
    if not pairs:
        return None
    return _grid(["variant", *columns],
                 [[r, *(delta_text(delta_versus(obs, panel, r, base, c) or {"n_pairs": 0})
                        for c in columns)] for r, base in pairs.items()])


def _versus_text(obs: pd.DataFrame, panel: str, row: str, versus: str | None, column: str):
    d = delta_versus(obs, panel, row, versus, column) if versus else None
    return "" if d is None else (f"{fmt_number(d['delta'], True)} vs {versus} "
                                 f"(p={fmt_p(d['p_ttest_rel'])})")


def paper_csv_columns(stats: pd.DataFrame, reference: list[dict], models: set[str]) -> pd.DataFrame:
    """The reference number of each (row, column), in columns of its own (paper_*)."""
    entries = paper_entries(reference, stats["study"].iloc[0], models) if len(stats) else []
    found = {(e["row"], e["column"], e["quantity"]): e for e in entries}
    out = stats.copy()
    for quantity in ("mean", "delta"):
        hits = [found.get((r, c, quantity)) for r, c in zip(out["row"], out["column"])]
        out[f"paper_{quantity}"] = [h["value"] if h else None for h in hits]
        out[f"paper_{quantity}_model"] = [h.get("model") if h else None for h in hits]
        if quantity == "delta":
            out["paper_delta_versus"] = [h.get("versus") if h else None for h in hits]
        out[f"paper_{quantity}_source"] = [f"{h['source']}: {h['provenance']}" if h else None
                                           for h in hits]
    return out
