"""What a reader needs to judge a study's table (no torch, no training code).

- Paired tests: each row against vanilla and CT_D against CT_F, per column (paired by seed;
  two-sided paired t-test, scipy.stats.ttest_rel; Wilcoxon signed-rank in the CSV). Their
  p-values are Holm-corrected over every test of the table (one plan's section), the
  uncorrected value beside it (Holm 1979, "A simple sequentially rejective multiple test
  procedure").
- The minimum detectable difference of each test: the smallest true mean difference the
  paired t-test detects with 80% power at two-sided alpha = 0.05, for the test's number of pairs
  n, taking the observed SD of the paired differences as the true one. Power is exact, from the
  noncentral t (scipy.stats.nct): with df = n - 1, t* = t_{1-alpha/2, df} and noncentrality
  delta * sqrt(n) / sd, power = P(T > t*) + P(T < -t*) (Cohen 1988, ch. 2; G*Power's "t tests,
  matched pairs"). A difference smaller than this that the test calls "no difference" says
  little.
- Reference rows, from the records of experiment=reference_rows (computed by code from the
  dev sets; not fine-tuning runs): the majority class and the zero-shot cosine similarity.
- The learning rate a grid chooses (highest mean over seeds), flagged when it is the grid's
  smallest or largest rate: a choice at the edge is not a choice; extend the grid.
- The training-set sizes at which vanilla learns (low_resource_sizes): each run tested against
  the majority class on the dev set, one-sided at alpha = 0.05; a size qualifies for a task when
  every seed passes."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from ..records import RunRecord
from .cells import DAGGER, fmt_number, fmt_p, fmt_value
from .tables import BASELINE, BEFORE_PRUNE, seed_series

ALPHA = 0.05
POWER = 0.8
CT_D, CT_F = "child_tuning_d", "child_tuning_f"
# Comparisons besides vanilla, as the paper makes them: CT_D against CT_F, and the ablation's
# lowest-Fisher and prune rows against CT_D (Table 5). Prune's "before pruning" row repeats
# CT_D's runs: it is not tested again.
VERSUS = {CT_D: (CT_F,), "lowest_fisher": (CT_D,), "prune": (CT_D,)}
REFERENCE_VARIANT = "reference"
EDGE = "edge: extend the grid"


# ---------------------------------------------------------------- statistics

def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN (no test) stays NaN and does
    not count towards the number of tests m."""
    p = np.asarray(p_values, float)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out = np.full(len(p), math.nan)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()


def paired_t_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs at true mean difference `delta`."""
    from scipy import stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta * math.sqrt(n) / sd
    lower = float(stats.nct.cdf(-crit, df, nc))  # scipy gives NaN where it is ~0 (large nc)
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower)


def detectable_difference(sd: float, n: int, power: float = POWER,
                          alpha: float = ALPHA) -> float:
    """The smallest mean difference the paired t-test detects with this power (NaN when it
    cannot be computed: fewer than 2 pairs, or no spread of the differences)."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0 or not math.isfinite(sd):
        return math.nan
    high = sd
    while paired_t_power(high, sd, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_t_power(d, sd, n, alpha) - power, 0.0, high,
                        xtol=1e-10 * sd))


def seeds_needed(sd: float, delta: float, limit: int = 100) -> int | None:
    """The fewest pairs with which the paired t-test detects a true mean difference `delta`
    with 80% power at α = 0.05, taking `sd` as the SD of the differences (None: more than
    `limit`, or no spread to go by)."""
    if not sd > 0 or not math.isfinite(sd) or not delta:
        return None
    return next((n for n in range(2, limit + 1)
                 if paired_t_power(abs(delta), sd, n) >= POWER), None)


def _test(values: pd.Series, base: pd.Series) -> dict:
    from scipy import stats

    common = values.dropna().index.intersection(base.dropna().index)
    diff = (values[common] - base[common]).to_numpy(float)
    n = len(diff)
    sd = float(np.std(diff, ddof=1)) if n > 1 else math.nan
    p_t = p_w = math.nan
    if n > 1 and sd > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_t = float(stats.ttest_rel(values[common], base[common]).pvalue)
            try:
                p_w = float(stats.wilcoxon(diff).pvalue)
            except ValueError:
                pass
    return {"delta": float(diff.mean()) if n else math.nan, "n_pairs": n, "sd_diff": sd,
            "p_ttest_rel": p_t, "p_wilcoxon": p_w, "mde_80": detectable_difference(sd, n),
            "complete": bool(values.notna().all() and base.notna().all())}


def paired_tests(obs: pd.DataFrame) -> pd.DataFrame:
    """Every paired test of a table: each row against vanilla (same row extras, same panel)
    and against its VERSUS rows, per column including avg; p_holm over all of them."""
    series = seed_series(obs)
    extras_of = dict(zip(obs["row"], obs["extras"]))
    variant_of = dict(zip(obs["row"], obs["variant"]))
    rows = []
    for (panel, row, column), values in series.items():
        extras, variant = extras_of[row], variant_of[row]
        if variant == BEFORE_PRUNE:
            continue
        versus = ([BASELINE] if variant != BASELINE else []) + list(VERSUS.get(variant, ()))
        for other in versus:
            base = series.get((panel, f"{other} {extras}".strip(), column))
            if base is not None:
                rows.append({"panel": panel, "row": row, "variant": variant, "versus": other,
                             "column": column, **_test(values, base)})
    tests = pd.DataFrame(rows)
    if len(tests):
        tests["p_holm"] = holm(tests["p_ttest_rel"])
        tests["m_tests"] = int(tests["p_ttest_rel"].notna().sum())
    return tests


def contrast_tests(obs: pd.DataFrame, row: str, versus: str, column: str,
                   base_panel: str) -> list[dict]:
    """Per panel besides `base_panel`: the paired test (by seed) of the row's difference to
    `versus` there against the same difference in the base panel, i.e. per seed
    (row - versus) in the panel - (row - versus) in the base panel: a gain at 500 examples
    against the gain on the full set. Uncorrected: the caller corrects over its family."""
    series = seed_series(obs)

    def gap(panel: str) -> pd.Series | None:
        mine, other = series.get((panel, row, column)), series.get((panel, versus, column))
        return None if mine is None or other is None else mine - other

    base = gap(base_panel)
    if base is None:
        return []
    return [{"panel": panel, **_test(difference, base)}
            for panel in dict.fromkeys(obs["panel"])
            if panel != base_panel and (difference := gap(panel)) is not None]


def _by(frame: pd.DataFrame, *keys: str) -> dict[tuple, dict]:
    """The frame's rows as dicts, keyed by the values of `keys`."""
    return dict(zip(zip(*(frame[k] for k in keys)), frame.to_dict("records")))


def test_text(test: dict) -> str:
    if test["n_pairs"] == 0:
        return "—"
    mark = "" if test["complete"] else DAGGER
    return (f"{fmt_number(test['delta'], signed=True)} (Holm p={fmt_p(test['p_holm'])}, "
            f"p={fmt_p(test['p_ttest_rel'])}; MDE {fmt_number(test['mde_80'])}){mark}")


def tests_grid(tests: pd.DataFrame, panel: str) -> dict | None:
    """Rows "<row> vs <versus>", one column per table column (avg last)."""
    part = tests[tests["panel"] == panel] if len(tests) else tests
    if not len(part):
        return None
    columns = [c for c in dict.fromkeys(part["column"]) if c != "avg"] + ["avg"]
    cell = _by(part, "row", "versus", "column")
    pairs = list(dict.fromkeys(zip(part["row"], part["versus"])))
    return {"header": ["comparison", *columns],
            "rows": [[f"{r} vs {v}", *(test_text(cell[(r, v, c)]) if (r, v, c) in cell else ""
                                       for c in columns)] for r, v in pairs]}


# ---------------------------------------------------------------- reference rows

def reference_records(recs: dict[str, RunRecord], model: str) -> dict[str, RunRecord]:
    """task -> the latest reference record of this model."""
    found: dict[str, RunRecord] = {}
    for record in recs.values():
        ident = record.identity
        if (record.succeeded and ident.get("variant") == REFERENCE_VARIANT
                and ident.get("model") == model and record.has("reference")):
            task = ident["task"]
            if task not in found or (record.finished_at or "") > (found[task].finished_at or ""):
                found[task] = record
    return found


def _reference_text(record: RunRecord | None, row: str) -> str:
    if record is None:
        return "— (not run)"
    headline = record.headline
    part = record.reference_row(row, headline.split)
    if part is None:
        return "n/a"
    value = part["metrics"].get(headline.metric)
    if value is None:
        return "undefined (constant prediction)"
    share = (f"; label {part['prediction']!r} = {100 * part['share']:.2f}% of dev"
             if "share" in part else "")
    return f"{100 * value:.2f} ({headline.metric}{share})"


def reference_grid(recs: dict[str, RunRecord], models: set[str],
                   columns: list[str]) -> dict | None:
    """The majority-class and zero-shot rows for the table's task columns (not our runs)."""
    tasks = [c for c in columns if c != "avg" and "→" not in c]
    if len(models) != 1 or not tasks:
        return None
    found = reference_records(recs, next(iter(models)))
    rows = [["majority class (dev set; no model)", *(_reference_text(found.get(t), "majority_class")
                                                      for t in tasks)]]
    zero_shot = {t for t in tasks if t in found and "zero_shot_cosine" in found[t].reference}
    if zero_shot:
        rows.append(["zero-shot cosine (pretrained embeddings, no training)",
                     *(_reference_text(found[t], "zero_shot_cosine") if t in zero_shot else ""
                       for t in tasks)])
    return {"header": ["reference (not a run)", *tasks], "rows": rows}


# ---------------------------------------------------------------- learning-rate choice

def chosen_rates(obs: pd.DataFrame) -> pd.DataFrame:
    """Per (panel, variant, column): the grid's rate with the highest mean over seeds; `tied`,
    the other rates whose mean equals it (to 1e-9: on RTE's 277 examples two rates can score
    the same); `edge` when it or a tied rate is the smallest or largest rate of that variant's
    grid; `complete` when every run of that variant and column is present."""
    rows = []
    for (panel, variant, column), part in obs.groupby(["panel", "variant", "column"],
                                                      sort=False):
        means = part.groupby("lr")["value"].mean().dropna()
        if not len(means):
            continue
        best = float(means.idxmax())
        tied = [float(lr) for lr, mean in means.items()
                if lr != best and math.isclose(mean, means.max(), rel_tol=0, abs_tol=1e-9)]
        grid = sorted(part["lr"].unique())
        rows.append({"panel": panel, "variant": variant, "column": column, "lr": best,
                     "mean": float(means.max()), "grid": grid, "tied": tied,
                     "edge": len(grid) < 3 or bool({best, *tied} & {grid[0], grid[-1]}),
                     "complete": bool(part["found"].all() and part["value"].notna().all())})
    return pd.DataFrame(rows)


def rates_grid(chosen: pd.DataFrame, panel: str) -> dict | None:
    part = chosen[chosen["panel"] == panel] if len(chosen) else chosen
    if not len(part):
        return None
    columns = list(dict.fromkeys(part["column"]))
    cell = _by(part, "variant", "column")

    def text(c: dict | None) -> str:
        if c is None:
            return ""
        tied = "".join(f", tied with {fmt_value(lr)}" for lr in c["tied"])
        return (f"{fmt_value(c['lr'])} ({fmt_number(c['mean'])}{tied})"
                + (f" **{EDGE}**" if c["edge"] else "") + ("" if c["complete"] else DAGGER))

    return {"header": ["variant", *columns],
            "rows": [[v, *(text(cell.get((v, c))) for c in columns)]
                     for v in dict.fromkeys(part["variant"])]}


# ---------------------------------------------------------------- where vanilla learns

def beats_majority_p(record: RunRecord, reference: RunRecord) -> float:
    """One-sided p-value of "this run beats the majority class on the dev set": accuracy against
    the majority share (exact binomial test) when the record has accuracy; else MCC > 0 (for a
    binary task n * MCC^2 is the chi-squared statistic of independence, 1 df); for regression
    Pearson r > 0 (t = r sqrt(n-2) / sqrt(1-r^2), n-2 df)."""
    from scipy import stats

    split = record.headline.split
    metrics = record.metrics[split]
    n = record.split_size(split)
    majority = reference.reference_row("majority_class", split)
    if metrics.get("accuracy") is not None and "share" in majority:
        k = round(metrics["accuracy"] * n)
        return float(stats.binomtest(k, n, majority["share"], alternative="greater").pvalue)
    if metrics.get("mcc") is not None:
        mcc = metrics["mcc"]
        p_two = float(stats.chi2.sf(n * mcc * mcc, 1))
        return p_two / 2 if mcc > 0 else 1 - p_two / 2
    r = metrics.get("pearson")
    if r is None:
        return math.nan
    if r >= 1:
        return 0.0
    return float(stats.t.sf(r * math.sqrt(n - 2) / math.sqrt(1 - r * r), n - 2))


def majority_grid(obs: pd.DataFrame, recs: dict[str, RunRecord], panel: str) -> dict | None:
    """Per row and task column: how many of the cell's runs beat the majority class of the dev
    set (beats_majority_p < ALPHA, one test per run), so that a table near the majority class
    says so. None without reference records for the table's one model."""
    part = obs[(obs["panel"] == panel) & obs["found"] & (obs["column"] == obs["task"])
               & ~obs["variant"].isin([BEFORE_PRUNE, REFERENCE_VARIANT])]
    if not len(part) or part["model"].nunique() != 1:
        return None
    found = reference_records(recs, part["model"].iloc[0])
    part = part[part["task"].isin(found)]
    if not len(part):
        return None
    beats = [beats_majority_p(recs[path], found[task]) < ALPHA
             for path, task in zip(part["path"], part["task"])]
    counts = part.assign(beats=beats).groupby(["row", "column"], sort=False)["beats"].agg(
        ["sum", "count"])
    text = {key: f"{int(c['sum'])}/{int(c['count'])}" for key, c in counts.iterrows()}
    columns = list(dict.fromkeys(part["column"]))
    return {"header": ["variant", *columns],
            "rows": [[row, *(text.get((row, c), "") for c in columns)]
                     for row in dict.fromkeys(part["row"])]}


def learnable_sizes(plan, recs: dict[str, RunRecord]) -> pd.DataFrame:
    """Per (task, n_train): the largest one-sided p over the vanilla seeds (each run against the
    majority class), whether every planned seed has a record, and `learns` (all p < ALPHA)."""
    rows = []
    refs: dict[str, dict] = {}
    for run in plan.runs:
        ident = run["identity"]
        if ident["variant"] != BASELINE:
            continue
        refs.setdefault(ident["model"], reference_records(recs, ident["model"]))
        record, ref = recs.get(run["path"]), refs[ident["model"]].get(ident["task"])
        p = beats_majority_p(record, ref) if record is not None and ref is not None else math.nan
        rows.append({"task": ident["task"], "n_train": ident["n_train"], "seed": ident["seed"],
                     "p": p})
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    out = frame.groupby(["task", "n_train"], sort=False).agg(
        p_max=("p", "max"), complete=("p", lambda s: bool(s.notna().all())),
        seeds=("seed", "count")).reset_index()
    out["learns"] = out["complete"] & (out["p_max"] < ALPHA)
    return out


def smallest_learnable(sizes: pd.DataFrame) -> dict[str, int | None]:
    """task -> the smallest size at which vanilla learns (None: none measured does)."""
    out = {}
    for task, part in sizes.groupby("task", sort=False):
        learned = part.loc[part["learns"], "n_train"]
        out[task] = int(learned.min()) if len(learned) else None
    return out


def sizes_grid(sizes: pd.DataFrame) -> dict | None:
    if not len(sizes):
        return None
    tasks = list(dict.fromkeys(sizes["task"]))
    cell = _by(sizes, "task", "n_train")

    def text(c: dict | None) -> str:
        if c is None:
            return ""
        if not c["complete"]:
            return DAGGER if math.isnan(c["p_max"]) else f"max p={fmt_p(c['p_max'])} so far{DAGGER}"
        return f"{'learns' if c['learns'] else 'no'} (max p={fmt_p(c['p_max'])})"

    smallest = smallest_learnable(sizes)
    rows = [[f"n_train={fmt_value(n)}", *(text(cell.get((t, n))) for t in tasks)]
            for n in sorted(set(sizes["n_train"]))]
    rows.append(["smallest that learns", *(str(smallest[t]) if smallest[t] else "none measured"
                                           for t in tasks)])
    return {"header": ["size", *tasks], "rows": rows}
