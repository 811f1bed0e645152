"""The paper's claims, each judged by the paired test of our table that backs it: one row per
claim (aggregate writes results/tables/claims.md and the README's `claims` blocks).

A claim (the reference file's `claims`) names a study, a row, the row it is compared with, a
column (a task or avg) and what the paper found: `expect` higher, lower or similar, with the
paper's difference (its `numbers` entry for that comparison; where the paper gives a range over
models, the smallest). The verdict reads the study table's two-sided paired t-test of that
comparison, its p Holm-corrected over every test of that table, and its MDE (the difference the
test detects with 80% power):

- pending: the comparison has fewer runs than its plan names (†), or no test yet;
- supported: Holm p < 0.05 in the paper's direction;
- contradicted: Holm p < 0.05 in the other direction (for `similar`: any such difference);
- for `similar` without a significant difference: consistent, but no equivalence is shown (a
  difference below the MDE is not excluded);
- otherwise not shown. When the MDE is at most the paper's difference, a difference of the
  paper's size would have been detected with 80% power: evidence against one that large. When
  the MDE is larger, the test could not have told: no evidence either way.

`column: each` judges the claim on every task column of the study's table, one row per task
(low-resource, where each task has its own size: no size is shared by every task, so no `avg`).

A `contrast` claim compares a difference between two panels of its table: per seed,
(row - versus) in a panel minus (row - versus) in the `contrast` panel, e.g. Child-Tuning's gain
at a low-resource size against its gain on the full set, one test per panel, Holm-corrected over
every contrast test of the claims (they are not tests of the study's own table).

Beside each directional claim: how many seeds the paired t-test would need to detect the
paper's Δ with 80% power at α = 0.05 (uncorrected), at the SD of our paired differences; the
power analysis that says whether a comparison needs more seeds than it has."""
from __future__ import annotations

import math

import pandas as pd

from . import evidence
from .cells import fmt_number, fmt_p

EXPECT = {"higher": 1, "lower": -1, "similar": 0}
HEADER = ["claim (paper)", "comparison", "paper Δ (smallest reported)", "ours: Δ (seeds)",
          "paired t-test: Holm p (p; tests)", "MDE", "seeds to detect the paper's Δ", "verdict"]
SEED_LIMIT = 100
EACH = "each"   # a claim's column: every task column of its table, one row each


def paper_delta(claim: dict, numbers: list[dict]) -> float | None:
    """The paper's difference for the claim's comparison: the `numbers` entry of its study,
    row (`paper_row` if the paper names the row otherwise), versus and column; the smallest in
    size when the paper gives one per model."""
    row = claim.get("paper_row", claim["row"])
    values = [e["value"] for e in numbers
              if e["study"] == claim["study"] and e["row"] == row and e["column"] ==
              claim["column"] and e["quantity"] == "delta" and e.get("versus") == claim["versus"]]
    return min(values, key=abs) if values else None


def verdict(claim: dict, test: dict | None, paper: float | None) -> str:
    if test is None or not test.get("n_pairs"):
        return "pending: no runs yet"
    if not test["complete"]:
        return "pending: fewer runs than planned (†)"
    sign, delta, holm = EXPECT[claim["expect"]], test["delta"], test["p_holm"]
    mde = test["mde_80"]
    if math.isnan(holm):
        return "not testable: the differences do not vary (no t-test)"
    if holm < evidence.ALPHA:
        if sign == 0:
            return "**contradicted**: a significant difference"
        return ("**supported**" if delta * sign > 0
                else "**contradicted**: significant in the other direction")
    if sign == 0:
        return "consistent: no significant difference (equivalence not shown)"
    if paper is not None and not math.isnan(mde) and mde <= abs(paper):
        return ("**not supported**: not significant, and a difference of the paper's size "
                "would have been detected (MDE ≤ |paper Δ|)")
    return "not shown either way: not significant, and the MDE exceeds the paper's Δ"


def rows(claims: list[dict], numbers: list[dict], tests: pd.DataFrame,
         obs: pd.DataFrame) -> list[dict]:
    """Per claim whose study has a table: the claim, the test that backs it and the verdict.
    A `contrast` claim gets one row per panel of its table besides the contrast's base panel,
    its tests Holm-corrected over every contrast test of the claims."""
    found = ({} if not len(tests) else
             {(t["study"], t["row"], t["versus"], t["column"]): t
              for t in tests.to_dict("records") if not t.get("panel")})
    studies = set(obs["study"]) if len(obs) else set()
    out = []
    for claim in _per_column(claims, obs):
        if claim["study"] not in studies:
            continue
        paper = paper_delta(claim, numbers)
        comparison = f"{claim['study']}: {claim['row']} vs {claim['versus']}, {claim['column']}"
        if "contrast" not in claim:
            test = found.get((claim["study"], claim["row"], claim["versus"], claim["column"]))
            out.append({**claim, "paper_delta": paper, "test": test, "comparison": comparison})
            continue
        base = claim["contrast"]
        for test in evidence.contrast_tests(obs[obs["study"] == claim["study"]], claim["row"],
                                            claim["versus"], claim["column"], base):
            out.append({**claim, "paper_delta": paper, "test": test, "comparison": (
                f"{claim['study']}: ({claim['row']} − {claim['versus']}) at {test['panel']} "
                f"− at {base}, {claim['column']}")})
    contrasts = [c["test"] for c in out if "contrast" in c]
    for test, p_holm in zip(contrasts, evidence.holm([t["p_ttest_rel"] for t in contrasts])):
        test.update(p_holm=p_holm, m_tests=sum(not math.isnan(t["p_ttest_rel"])
                                               for t in contrasts))
    return [{**c, "verdict": verdict(c, c["test"], c["paper_delta"])} for c in out]


def _per_column(claims: list[dict], obs: pd.DataFrame) -> list[dict]:
    """The claims, a `column: each` claim once per task column of its study's table (in the
    table's order; a study without observations: none)."""
    out = []
    for claim in claims:
        if claim["column"] != EACH:
            out.append(claim)
            continue
        mine = obs[(obs["study"] == claim["study"]) & obs["in_avg"]] if len(obs) else obs
        out.extend({**claim, "column": column}
                   for column in (dict.fromkeys(mine["column"]) if len(mine) else ()))
    return out


def frame(judged: list[dict], label: str) -> pd.DataFrame:
    """The judged claims as numbers (results/tables/claims.csv): one row per claim and test."""
    keys = ("delta", "n_pairs", "sd_diff", "p_ttest_rel", "p_holm", "m_tests", "mde_80",
            "complete")
    return pd.DataFrame([{
        "plan_label": label, "statement": c["statement"], "study": c["study"],
        "row": c["row"], "versus": c["versus"], "column": c["column"],
        "panel": (c["test"] or {}).get("panel", ""), "contrast": c.get("contrast"),
        "expect": c["expect"], "paper_delta": c["paper_delta"],
        **{k: (c["test"] or {}).get(k) for k in keys},
        "seeds_for_paper_delta": _needed(c), "verdict": c["verdict"]} for c in judged])


def _needed(c: dict) -> int | None:
    """Seeds the paired t-test needs to detect the paper's Δ at our SD (None: not a
    directional claim with a paper Δ and two pairs, or more than SEED_LIMIT)."""
    t = c["test"]
    if c["expect"] == "similar" or c["paper_delta"] is None or not t or t["n_pairs"] < 2:
        return None
    return evidence.seeds_needed(t["sd_diff"], c["paper_delta"], SEED_LIMIT)


def grid(judged: list[dict]) -> dict:
    def ours(t: dict | None) -> str:
        return "—" if not t or not t["n_pairs"] else (
            f"{fmt_number(t['delta'], signed=True)} ({int(t['n_pairs'])})")

    def needed(c: dict) -> str:
        if (n := _needed(c)) is not None:
            return str(n)
        directional = c["expect"] != "similar" and c["paper_delta"] is not None
        spread = c["test"] and c["test"]["n_pairs"] >= 2 and c["test"]["sd_diff"] > 0
        return f"> {SEED_LIMIT}" if directional and spread else "n/a"

    def tested(t: dict | None) -> str:
        return "—" if not t or not t["n_pairs"] else (
            f"{fmt_p(t['p_holm'])} ({fmt_p(t['p_ttest_rel'])}; {int(t['m_tests'])})")

    return {"header": HEADER, "rows": [
        [c["statement"], c["comparison"],
         "n/a" if c["paper_delta"] is None else fmt_number(c["paper_delta"], signed=True),
         ours(c["test"]), tested(c["test"]),
         fmt_number(c["test"]["mde_80"]) if c["test"] else "—", needed(c), c["verdict"]]
        for c in judged]}
