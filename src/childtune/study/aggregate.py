"""Rebuild every study's tables and figures from the run records alone.

    python -m childtune.aggregate [results_dir=results] [reference=src/childtune/reference/paper.yaml]
                                  [figures=true] [readme=README.md]

Reads the records under <results_dir>/runs and the plans under <results_dir>/plans (plan.py:
each multirun saves its plan; records of a study that no saved plan names get the study's
default plan, composed once and saved). Writes <results_dir>/tables/<study>.md, .csv and .tex
(one section per plan that has records) and <results_dir>/figures/*.png, and prints where.
With readme=<file>, the `<!-- table: <study> <label> -->` blocks of that markdown file are
refreshed from the same tables (`make reproduce-tables` does this for README.md).
Never imports torch or the training code."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from . import plan as plans_mod
from . import cells, claims, cli, evidence, tables
from .plan import Plan
from .readme import read_readme, refresh_readme
from .. import records
from ..errors import UserError
from ..records import RunRecord

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "paper.yaml"
METHOD = ("Scores x100: each task's headline metric (the record's `headline`; a domain-transfer "
          "column A→B: accuracy on B in the common label space), mean ± sample std (ddof=1) "
          "over seeds, (n) runs. † = fewer runs than the plan names (n/planned): a cell is "
          "never averaged silently. avg = per-seed mean over the row's averaged columns, "
          "over the seeds that have all of them. Δ = mean per-seed difference against the "
          "vanilla row (paired by seed); p = two-sided paired t-test, scipy.stats.ttest_rel "
          "(Wilcoxon signed-rank p in the CSV).")

# The Δ grids of tables.grids: (key, heading, tex caption).
DELTA_GRIDS = (
    ("delta", "Δ vs vanilla (p: paired t-test over seeds, uncorrected; Holm-corrected in the "
     "paired tests below):", "difference to vanilla (uncorrected p)."),
    ("without_ct_d", "Δ vs the method without CT_D (each `<method>_ct_d` row against "
     "`<method>`, paired by seed; p: paired t-test over seeds):",
     "difference to the method without CT_D (p)."))


def load_reference(path) -> tuple[list[dict], list[dict]]:
    """The paper's reported numbers and its claims (claims.py) from the reference file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"paper reference file {path} is missing; pass reference=<file>")
    content = yaml.safe_load(path.read_text())
    return content.get("numbers") or [], content.get("claims") or []


def _shown(path) -> str:
    """A path as the tables print it: relative to the project, never a machine path."""
    path = Path(path).resolve()
    for root in (plans_mod.CONF_DIR.parent, Path.cwd()):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


def choose_plans(plans: list[Plan], found: set[str]) -> list[Plan]:
    """Plans with records, without duplicates: a plan naming the same runs as another, or a
    subset of another plan's runs of the same study, is dropped."""
    unique = {p.digest: p for p in plans}
    paths = {d: {r["path"] for r in p.runs} for d, p in unique.items()}
    keep = []
    for digest, plan in sorted(unique.items(), key=lambda kv: kv[1].name):
        inside = any(o != digest and unique[o].study == plan.study and paths[digest] < paths[o]
                     for o in unique)
        if not inside and paths[digest] & found:
            keep.append(plan)
    return keep


def all_plans(results_dir, recs: dict[str, RunRecord]) -> list[Plan]:
    plans = plans_mod.read_manifests(results_dir)
    named = {r["path"] for p in plans for r in [*p.runs, *p.sources]}
    wanted = {(r.setting("study"), r.setting("protocol.name"))
              for path, r in recs.items() if path not in named}
    for study, protocol in sorted(wanted, key=str):
        if study in plans_mod.studies():
            launch = [f"experiment={study}"] + ([f"protocol={protocol}"] if protocol else [])
            plans.append(plans_mod.cached_plan(results_dir, launch))
    return plans + plans_mod.records_plans(
        [r for path, r in recs.items() if path not in named
         and r.setting("study") not in plans_mod.studies()])


def _slugs(plans: list[Plan]) -> dict[str, str]:
    """A short name per plan: its protocol, plus its digest when a study has two such plans."""
    counts: dict[tuple, int] = {}
    for p in plans:
        counts[(p.study, p.protocol)] = counts.get((p.study, p.protocol), 0) + 1
    return {p.name: (f"{p.protocol or 'none'}" if counts[(p.study, p.protocol)] == 1
                     else f"{p.protocol or 'none'}-{p.digest}") for p in plans}


def runs_frame(recs: list[RunRecord]) -> pd.DataFrame:
    """One row per run record (success or failure): its identity, status, headline and path."""
    rows = [{**r.identity, "status": r.status, "path": r.path,
             "headline_metric": r.headline.metric if r.headline else None,
             "headline": r.headline.value if r.headline else None} for r in recs]
    return pd.DataFrame(rows)


def _failure_key(path: str) -> str:
    return path[: -len(".json")] + ".failed.json"


def _section(plan: Plan, label: str, recs: dict, reference: list[dict], reference_path: str):
    obs = tables.observations(plan, recs)
    stats = tables.summarize(obs)
    found = sum(r["path"] in recs for r in plan.runs)
    failed = sum(r["path"] not in recs and _failure_key(r["path"]) in recs for r in plan.runs)
    metrics = sorted({f"{t} {m}" for t, m in zip(obs["task"], obs["metric"])
                      if isinstance(m, str)})
    md = [f"## {label}", "",
          f"Launch: `{plan.command}`  ",
          f"Models: {', '.join(sorted(set(obs['model'])))}; records: {found} of "
          f"{len(plan.runs)} planned runs ({failed} failed: not counted as results; "
          f"{len(plan.runs) - found - failed} missing); "
          f"headline metrics: {', '.join(metrics) or 'n/a'}."
          + (f" Learning rates: {rates}." if (rates := tables.learning_rates(plan)) else ""),
          ""]
    tex = []
    tests, judging = _judging(plan, obs, recs)
    for grid in tables.grids(stats, obs, reference):
        title = f"{plan.study}, {label}" + (f", {grid['panel']}" if grid["panel"] else "")
        if grid["panel"]:
            md += [f"### {grid['panel']}", ""]
        md += [cells.markdown_table(grid["score"]), ""]
        tex.append(cells.tex_table(grid["score"], f"{title}: mean $\\pm$ std (n)."))
        for key, heading, caption in DELTA_GRIDS:
            if grid[key]:
                md += [heading, "", cells.markdown_table(grid[key]), ""]
                tex.append(cells.tex_table(grid[key], f"{title}: {caption}"))
        for heading, caption, judged in judging(grid):
            md += [heading, "", cells.markdown_table(judged), ""]
            tex.append(cells.tex_table(judged, f"{title}: {caption}"))
    entries = tables.paper_entries(reference, plan.study, set(obs["model"]))
    if entries:
        md += [f"Paper's reported numbers for this study ({reference_path}; not our runs):", ""]
        md += [f"- {e['row']}, {e['column']}, {e['quantity']}"
               + (f" vs {e['versus']}" if e.get("versus") else "")
               + f": {e['value']:g} (model: {e.get('model') or 'not stated'}; "
               f"{e['source']}: {e['provenance']})" for e in entries]
        md.append("")
    csv = tables.paper_csv_columns(stats, reference, set(obs["model"]))
    csv.insert(1, "plan_label", label)
    tests = tests.assign(plan=plan.name, plan_label=label, study=plan.study)
    return md, tex, (csv, tests), obs


REFERENCE_HEADING = ("Reference rows (not our runs; computed from the dev set by "
                     "`experiment=reference_rows`, records under results/runs/*/*/reference/):")
TESTS_HEADING = (
    "Paired tests (by seed; two-sided paired t-test): Δ = mean difference, Holm p = corrected "
    "over the {m} tests of this table (Holm's step-down), p = uncorrected; MDE = the smallest "
    "mean difference the test detects with 80% power at α = 0.05 given its pairs and the "
    "observed SD of their differences (noncentral t; a Δ below it that is not significant is no "
    "evidence of no difference). Wilcoxon p in <study>_tests.csv:")
MAJORITY_HEADING = (
    "Runs that beat the majority class of the dev set (one-sided test per run, α = 0.05: "
    "accuracy against the majority share, exact binomial; CoLA MCC > 0, χ² = n·MCC²; STS-B "
    "Pearson > 0), of the cell's runs; a cell far from n/n sits near the majority class:")
RATES_HEADING = ("Chosen learning rate per variant and task (highest mean over the seeds; "
                 "the mean in brackets). **" + evidence.EDGE + "** = the grid's smallest or "
                 "largest rate, or tied with it: not a choice, extend the grid:")
SIZES_HEADING = ("Where vanilla learns: each run against the majority class on the dev set, "
                 "one-sided (accuracy: exact binomial vs the majority share; CoLA: MCC > 0, "
                 "χ² = n·MCC²; STS-B: Pearson r > 0); `learns` = every seed p < 0.05. "
                 "low_resource's sizes: the smallest that learns per task, and the full sets:")


def _judging(plan: Plan, obs: pd.DataFrame, recs: dict):
    """The table's paired tests, and per panel grid the evidence.py grids (heading, tex
    caption, grid) a reader needs besides the scores."""
    tests = evidence.paired_tests(obs)
    rates = evidence.chosen_rates(obs) if "trainer.lr" in plan.swept else pd.DataFrame()
    sizes = evidence.learnable_sizes(plan, recs) if plan.study == "low_resource_sizes" else None
    models = set(obs["model"])

    def grids(grid: dict) -> list[tuple[str, str, dict]]:
        panel = grid["panel"]
        columns = [c for c in grid["score"]["header"][1:] if not c.startswith("paper ")]
        out = [(REFERENCE_HEADING, "reference rows, not our runs.",
                evidence.reference_grid(recs, models, columns)),
               (TESTS_HEADING.format(m=int(tests["m_tests"].iloc[0]) if len(tests) else 0),
                "paired tests, Holm-corrected p, detectable difference.",
                evidence.tests_grid(tests, panel)),
               (MAJORITY_HEADING, "runs that beat the majority class.",
                evidence.majority_grid(obs, recs, panel)),
               (RATES_HEADING, "chosen learning rates.", evidence.rates_grid(rates, panel))]
        if sizes is not None and panel == next(iter(dict.fromkeys(obs["panel"]))):
            out.append((SIZES_HEADING, "where vanilla learns.", evidence.sizes_grid(sizes)))
        return [(h, c, g) for h, c, g in out if g]

    return tests, grids


def writable_folder(folder: Path, what: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {what} to {folder} ({exc.strerror or exc}); move away "
                        f"what is there or choose another results_dir") from None
    return folder


def write_tables(study: str, chosen: list[Plan], labels: dict, recs: dict,
                 reference: list[dict], reference_path: str, out_dir: Path,
                 blocks: dict[str, str] | None = None,
                 by_label: dict[str, list] | None = None) -> tuple[list, list]:
    """Writes the study's tables; `blocks` receives each section's body (without its heading
    and launch line) under "<study> <label>", for README blocks (refresh_readme), and
    `by_label` each section's (paired tests, observations) under its label (for the claims)."""
    import pandas as pd

    md = [f"# {study}", "", "Rebuilt from the run records by `python -m childtune.aggregate`; "
          "do not edit.", "", METHOD, ""]
    tex, frames, test_frames, observations = [], [], [], []
    for plan in chosen:
        part_md, part_tex, (csv, tests), obs = _section(plan, labels[plan.name], recs,
                                                        reference, reference_path)
        if blocks is not None:
            blocks[f"{study} {labels[plan.name]}"] = "\n".join(part_md[3:]).strip()
        md += part_md
        tex += part_tex
        frames.append(csv)
        test_frames.append(tests)
        if by_label is not None:
            by_label.setdefault(labels[plan.name], []).append((tests, obs))
        observations.append((plan, obs))
    writable_folder(out_dir, "tables")
    paths = [out_dir / f"{study}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text("\n".join(md))
    pd.concat(frames).to_csv(paths[1], index=False)
    paths.append(out_dir / f"{study}_tests.csv")
    pd.concat(test_frames).to_csv(paths[3], index=False)
    paths[2].write_text("% Rebuilt by python -m childtune.aggregate; needs \\usepackage{booktabs}\n"
                        + "\n\n".join(tex) + "\n")
    return paths, observations


CLAIMS_HEADING = (
    "Each claim of the paper ({reference}) judged by the paired t-test of our table that backs "
    "it: Δ = mean per-seed difference (seeds paired), Holm p corrected over every test of that "
    "table (its number in brackets, with the uncorrected p), MDE = the difference that test "
    "detects with 80% power. A verdict needs Holm p < 0.05; pending = fewer runs than planned. "
    "Built from the records by `python -m childtune.aggregate`; rules: src/childtune/study/"
    "claims.py.")


def write_claims(paper_claims: list[dict], numbers: list[dict], by_label: dict,
                 out_dir: Path, reference_path: str, blocks: dict) -> Path | None:
    """results/tables/claims.md (and .csv): per label (protocol), the claims whose study has a
    table; each section is also the README block "claims <label>". None when no claim has a
    table."""
    import pandas as pd

    md = ["# claims", "", CLAIMS_HEADING.format(reference=reference_path), ""]
    frames = []
    for label, sections in by_label.items():
        tests, obs = zip(*sections)
        judged = claims.rows(paper_claims, numbers, pd.concat(tests), pd.concat(obs))
        if judged:
            body = cells.markdown_table(claims.grid(judged))
            md += [f"## {label}", "", body, ""]
            blocks[f"claims {label}"] = body
            frames.append(claims.frame(judged, label))
    if not frames:
        return None
    path = writable_folder(out_dir, "tables") / "claims.md"
    path.write_text("\n".join(md))
    pd.concat(frames).to_csv(path.with_suffix(".csv"), index=False)
    return path


OPTIONS = {
    "results_dir": ("results", "the records (runs/) and plans (plans/); tables/ and figures/ "
                    "are written there"),
    "reference": ("", "the paper's numbers (YAML; default: the suite's src/childtune/reference/paper.yaml)"),
    "figures": ("true", "false: tables only"),
    "readme": ("", "a markdown file whose <!-- table: ... --> blocks are refreshed (none by "
               "default)"),
}


def _options(argv: list[str]) -> dict:
    options = cli.parse(argv, __doc__, OPTIONS)[0]
    return {**options, "reference": options["reference"] or str(DEFAULT_REFERENCE)}


def run(argv: list[str]) -> None:
    start = time.perf_counter()
    options = _options(argv)
    results_dir = Path(options["results_dir"])
    if not results_dir.is_dir():
        raise UserError(f"results_dir={results_dir} does not exist (no run records to "
                        f"tabulate); run the studies first or point results_dir= at them")
    figures_wanted = cli.flag(options, "figures")
    if options["readme"]:
        read_readme(Path(options["readme"]))  # a malformed file stops us before any work
    reference, paper_claims = load_reference(options["reference"])
    recs = {r.path: r for r in records.read_records(results_dir)}
    plans = all_plans(results_dir, recs)
    chosen = choose_plans(plans, set(recs))
    slugs = _slugs(chosen)
    labels = {name: f"protocol {slug}" for name, slug in slugs.items()}
    planned = {key for p in chosen for r in p.runs for key in (r["path"], _failure_key(r["path"]))}
    observations, blocks, by_label = [], {}, {}
    for study in dict.fromkeys(p.study for p in chosen):
        paths, obs = write_tables(study, [p for p in chosen if p.study == study], labels, recs,
                                  reference, _shown(options["reference"]),
                                  results_dir / "tables", blocks, by_label)
        observations += obs
        print(f"{study}: wrote {', '.join(str(p) for p in paths)}")
    if path := write_claims(paper_claims, reference, by_label, results_dir / "tables",
                            _shown(options["reference"]), blocks):
        print(f"claims: wrote {path}")
    if options["readme"]:
        done, unknown = refresh_readme(Path(options["readme"]), blocks)
        print(f"{options['readme']}: refreshed table blocks {', '.join(done) or '(none)'}"
              + (f"; no such table for {', '.join(unknown)} (left as is)" if unknown else ""))
    if figures_wanted:
        from . import figures

        written, not_rebuilt = figures.build(
            observations, recs, writable_folder(results_dir / "figures", "figures"), slugs)
        for line in [f"figure: wrote {path}" for path in written] + not_rebuilt:
            print(line)
    unplanned = len(set(recs) - planned)
    if unplanned:
        print(f"{unplanned} records belong to no plan with records (single runs); not tabulated")
    print(f"{len(recs)} records, {len(chosen)} plans, {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
