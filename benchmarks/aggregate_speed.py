"""How long `python -m childtune.aggregate` takes on a full set of CPU-protocol records.

    python benchmarks/aggregate_speed.py [protocol=cpu]

Writes synthetic records (random scores, through records.write_record) for every run the
protocol's study plans name into a temporary results directory, then rebuilds every table and
figure in a fresh process and prints the time as a fraction of the 10-second budget."""
from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time

from childtune import records
from childtune.study import plan

BUDGET_SECONDS = 10.0


def main() -> None:
    protocol = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("protocol=")), "cpu")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as results_dir:
        start = time.perf_counter()
        plans = [plan.cached_plan(results_dir, [f"experiment={s}", f"protocol={protocol}"])
                 for s in plan.studies()]
        print(f"composed {len(plans)} plans in {time.perf_counter() - start:.1f} s")
        runs = {r["path"]: r for p in plans for r in p.runs}
        for run in runs.values():
            value = rng.uniform(0.5, 0.9)
            sections = {"mask": {"statistics": {"per_layer": {str(i): rng.random()
                                                              for i in range(6)}}}}
            if run["identity"]["variant"] == "prune":
                sections["metrics_before_prune"] = {"dev": {"accuracy": value + 0.01}}
            if (run.get("transfer") or {}).get("eval_tasks"):
                sections["transfer"] = {"eval": {t: {"accuracy": rng.random()}
                                                 for t in run["transfer"]["eval_tasks"]}}
            records.write_record(results_dir, records.build(
                "success", run["identity"], {"study": "synthetic", "protocol": {"name": protocol}},
                headline=("accuracy", "dev"), metrics={"dev": {"accuracy": value}}, **sections))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "childtune.aggregate", f"results_dir={results_dir}"],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        print(f"{len(runs)} records: aggregate took {seconds:.1f} s = "
              f"{seconds / BUDGET_SECONDS:.2f} of the {BUDGET_SECONDS:.0f}-second budget")


if __name__ == "__main__":
    main()
