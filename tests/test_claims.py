"""The paper's claims judged by our tables (study/claims.py): the verdict rules case by case, the
reference file's claims well formed, and the claims block aggregate writes from records."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from childtune import records
from childtune.study import aggregate, claims, plan
from fake_records import fake_record

HIGHER = {"statement": "CT_D beats vanilla", "study": "main", "row": "child_tuning_d",
          "versus": "vanilla", "column": "avg", "expect": "higher"}


def _test(delta, p_holm, mde, complete=True, n=5):
    return {"delta": delta, "p_holm": p_holm, "mde_80": mde, "complete": complete,
            "n_pairs": n, "p_ttest_rel": p_holm / 3, "m_tests": 3}


@pytest.mark.parametrize("expect,test,paper,word", [
    ("higher", _test(2.0, 0.01, 1.0), 1.5, "**supported**"),
    ("higher", _test(-2.0, 0.01, 1.0), 1.5, "**contradicted**: significant in the other"),
    ("higher", _test(0.4, 0.30, 1.2), 1.5, "**not supported**"),       # MDE 1.2 <= 1.5
    ("higher", _test(0.4, 0.30, 2.5), 1.5, "not shown either way"),    # MDE 2.5 > 1.5
    ("higher", _test(0.4, 0.30, 1.2), None, "not shown either way"),   # no paper size
    ("lower", _test(-11.0, 0.001, 3.0), -6.65, "**supported**"),
    ("lower", _test(-1.0, 0.5, 3.0), -6.65, "**not supported**"),
    ("similar", _test(-3.0, 0.01, 2.0), 0.18, "**contradicted**: a significant difference"),
    ("similar", _test(-3.0, 0.20, 4.0), 0.18, "consistent: no significant difference"),
    ("higher", _test(5.0, 0.001, 1.0, complete=False), 1.5, "pending: fewer runs"),
    ("higher", None, 1.5, "pending: no runs yet"),
    ("higher", _test(0.0, math.nan, math.nan), 1.5, "not testable"),
])
def test_each_verdict_follows_the_rule(expect, test, paper, word):
    assert claims.verdict({**HIGHER, "expect": expect}, test, paper).startswith(word)


def test_the_paper_difference_is_the_smallest_of_the_papers_models():
    numbers = [{"study": "main", "row": "ct", "column": "avg", "quantity": "delta",
                "versus": "vanilla", "value": v} for v in (8.6, 1.5, 3.0)]
    assert claims.paper_delta({**HIGHER, "paper_row": "ct"}, numbers) == 1.5
    assert claims.paper_delta(HIGHER, numbers) is None                  # row not in numbers


def test_the_reference_files_claims_are_testable_and_match_its_numbers():
    from childtune.jobs import CONF_DIR

    numbers, paper_claims = aggregate.load_reference(aggregate.DEFAULT_REFERENCE)
    variants = {p.stem for p in (CONF_DIR / "variant").glob("*.yaml")}
    assert len(paper_claims) >= 5
    for claim in paper_claims:
        assert claim["study"] in plan.studies() and claim["expect"] in claims.EXPECT
        assert {claim["row"], claim["versus"]} <= variants and claim["statement"].strip()
        paper = claims.paper_delta(claim, numbers)
        if claim["expect"] != "similar" and "contrast" not in claim:
            assert paper is not None and paper * claims.EXPECT[claim["expect"]] > 0
        if "contrast" in claim:                          # a panel the study's plan has
            assert claim["contrast"] == "data.n_train=None" and claim["study"] == "low_resource"


def test_aggregate_writes_the_claims_of_the_studies_that_have_tables(tmp_path):
    launch = ["experiment=main", "protocol=cpu", "model=tiny", "task=rte",
              "variant=vanilla,child_tuning_d,child_tuning_f", "seed=1,2,3"]
    small = plan.make_plan(launch)
    values = {"vanilla": [0.600, 0.620, 0.640],
              "child_tuning_d": [0.700, 0.721, 0.739],        # +10 points, tiny spread
              "child_tuning_f": [0.590, 0.630, 0.645]}         # -1, +1, +0.5: not significant
    for run in small.runs:
        ident = run["identity"]
        records.write_record(tmp_path, fake_record(
            ident, values[ident["variant"]][ident["seed"] - 1],
            config={"study": "main", "protocol": {"name": "cpu"}}))
    plan.write_manifest(tmp_path, small)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table: claims protocol cpu -->\nold\n<!-- /table -->\nend\n")
    aggregate.run([f"results_dir={tmp_path}", "figures=false", f"readme={readme}"])
    text = (tmp_path / "tables" / "claims.md").read_text()
    lines = {line.split(" | ")[1]: line for line in text.splitlines()
             if line.startswith("| ") and " vs " in line}
    assert set(lines) == {"main: child_tuning_d vs vanilla, avg",
                          "main: child_tuning_f vs vanilla, avg"}   # no ablation table: no row
    assert lines["main: child_tuning_d vs vanilla, avg"].endswith("| **supported** |")
    assert "| +10.00 (3) |" in lines["main: child_tuning_d vs vanilla, avg"]
    assert "| +1.50 |" in lines["main: child_tuning_d vs vanilla, avg"]  # BERT-large's gain
    assert "not shown either way" in lines["main: child_tuning_f vs vanilla, avg"]
    body = readme.read_text()
    assert "old" not in body and "| **supported** |" in body and body.endswith("end\n")
    table = pd.read_csv(tmp_path / "tables" / "claims.csv").set_index("row")
    tests = pd.read_csv(tmp_path / "tables" / "main_tests.csv")
    ct_d = tests[(tests["row"] == "child_tuning_d") & (tests["versus"] == "vanilla")
                 & (tests["column"] == "avg")].iloc[0]
    assert table.loc["child_tuning_d", "p_holm"] == pytest.approx(ct_d["p_holm"])
    assert table.loc["child_tuning_d", "verdict"] == "**supported**"
    assert table.loc["child_tuning_f", "seeds_for_paper_delta"] == 6     # the md's number


def test_seeds_needed_is_the_first_n_whose_mde_reaches_the_difference():
    from scipy import stats

    from childtune.study import evidence

    n = evidence.seeds_needed(1.0, 0.5)
    assert evidence.detectable_difference(1.0, n) <= 0.5 < evidence.detectable_difference(1.0,
                                                                                        n - 1)
    normal = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / 0.5) ** 2   # 31.4, large-n theory
    assert normal < n < normal + 4                 # the t-test needs a few pairs more
    assert evidence.seeds_needed(1.0, -0.5) == n   # the sign does not matter
    assert evidence.seeds_needed(1.0, 0.01) is None and evidence.seeds_needed(0.0, 1.0) is None


def test_a_low_resource_gain_is_contrasted_with_the_full_set_gain_seed_by_seed(tmp_path):
    """Per seed: (CT - vanilla) at n=100 minus (CT - vanilla) on the full set, a paired t-test
    over seeds written again here with scipy, Holm over the two contrasts (CT_D, CT_F)."""
    from scipy import stats

    small = plan.make_plan(["experiment=low_resource", "protocol=cpu", "model=tiny", "task=rte",
                            "data.n_train=100,null", "seed=1,2,3"])
    values = {(None, "vanilla"): [0.70, 0.72, 0.71], (None, "child_tuning_d"): [0.71, 0.73, 0.73],
              (None, "child_tuning_f"): [0.70, 0.73, 0.70],
              (100, "vanilla"): [0.55, 0.56, 0.54], (100, "child_tuning_d"): [0.60, 0.612, 0.588],
              (100, "child_tuning_f"): [0.56, 0.55, 0.55]}
    for run in small.runs:
        ident = run["identity"]
        records.write_record(tmp_path, fake_record(
            ident, values[(ident["n_train"], ident["variant"])][ident["seed"] - 1],
            config={"study": "low_resource", "protocol": {"name": "cpu"}}))
    plan.write_manifest(tmp_path, small)
    aggregate.run([f"results_dir={tmp_path}", "figures=false"])
    lines = [line for line in (tmp_path / "tables" / "claims.md").read_text().splitlines()
             if "low_resource: (" in line]
    assert len(lines) == 2                                   # one panel besides the full set
    p_values = {}
    for variant in ("child_tuning_d", "child_tuning_f"):
        contrast = [100 * ((values[(100, variant)][s] - values[(100, "vanilla")][s])
                           - (values[(None, variant)][s] - values[(None, "vanilla")][s]))
                    for s in range(3)]
        p_values[variant] = stats.ttest_1samp(contrast, 0.0).pvalue
        line = next(line for line in lines if f"({variant} − vanilla) at data.n_train=100 − "
                    f"at data.n_train=None, rte" in line)
        assert f"| {sum(contrast) / 3:+.2f} (3) |" in line
    low, high = sorted(p_values.values())                  # Holm over the two contrasts
    holm = {v: min(1, 2 * low) if p == low else max(min(1, 2 * low), high)
            for v, p in p_values.items()}
    ct_d = next(line for line in lines if "(child_tuning_d" in line)
    assert f"| {holm['child_tuning_d']:.3g} ({p_values['child_tuning_d']:.3g}; 2) |" in ct_d
    assert ct_d.endswith("| **supported** |")


def test_a_claim_on_each_column_is_judged_per_task_where_each_task_has_its_own_size(tmp_path):
    """Low-resource with a size per task (extra sweeps; no size shared by every task, so no
    avg): a `column: each` contrast claim gets one row per task, at that task's size only,
    the contrast written again here, Holm over every contrast row."""
    from scipy import stats

    small = plan.make_plan([
        "experiment=low_resource", "protocol=cpu", "model=tiny", "task=rte,mrpc",
        "variant=vanilla,child_tuning_d", "seed=1,2,3",
        "++protocol.studies.low_resource.sizes='null'",   # the full sets; each task's size:
        '++protocol.studies.low_resource.extra_sweeps=["task=rte data.n_train=100",'
        ' "task=mrpc data.n_train=300"]'])
    assert {(r["identity"]["task"], r["identity"]["n_train"]) for r in small.runs} == {
        ("rte", None), ("mrpc", None), ("rte", 100), ("mrpc", 300)}
    gain = {("rte", 100): [0.05, 0.06, 0.04], ("mrpc", 300): [0.01, -0.01, 0.02],
            ("rte", None): [0.01, 0.0, 0.01], ("mrpc", None): [0.0, 0.01, 0.0]}
    for run in small.runs:
        ident = run["identity"]
        cell = (ident["task"], ident["n_train"])
        value = 0.6 + (gain[cell][ident["seed"] - 1] if ident["variant"] != "vanilla" else 0)
        records.write_record(tmp_path, fake_record(ident, value, config={
            "study": "low_resource", "protocol": {"name": "cpu"}}))
    plan.write_manifest(tmp_path, small)
    claim = {"statement": "CT_D gains more with fewer examples", "study": "low_resource",
             "row": "child_tuning_d", "versus": "vanilla", "column": claims.EACH,
             "expect": "higher", "contrast": "data.n_train=None"}
    reference = tmp_path / "paper.yaml"
    reference.write_text(yaml_dump({"numbers": [], "claims": [claim]}))
    aggregate.run([f"results_dir={tmp_path}", "figures=false", f"reference={reference}"])
    judged = pd.read_csv(tmp_path / "tables" / "claims.csv")
    assert list(zip(judged["column"], judged["panel"])) == [
        ("rte", "data.n_train=100"), ("mrpc", "data.n_train=300")]   # no avg, no other size
    p_values = []
    for (task, size), row in zip([("rte", 100), ("mrpc", 300)], judged.itertuples()):
        contrast = [100 * (a - b) for a, b in zip(gain[(task, size)], gain[(task, None)])]
        assert row.delta == pytest.approx(sum(contrast) / 3)
        p_values.append(stats.ttest_1samp(contrast, 0.0).pvalue)
        assert row.p_ttest_rel == pytest.approx(p_values[-1])
    assert list(judged["m_tests"]) == [2, 2]
    low = min(p_values)
    assert judged["p_holm"].min() == pytest.approx(min(1.0, 2 * low))


def yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data)
