"""The README's end-to-end table, rebuilt from benchmarks/latest.json (never typed by hand).

    python benchmarks/e2e_table.py             # print it
    python benchmarks/e2e_table.py --readme    # replace it in README.md between its markers
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "benchmarks" / "latest.json"
START, END = "<!-- e2e-table:start -->", "<!-- e2e-table:end -->"
CONTENDERS = ("ours, random batches", "ours, grouped batches", "HF Trainer",
              "HF Trainer, group_by_length")


def _rerun_machine(machine: dict, question: str) -> dict | None:
    """The machine of the latest `run_all.py --only ...` run that measured `question`: a
    partial rerun keeps the other questions' results and records its own machine beside the
    first run's (results written before details carried their machine)."""
    reruns = [v for k, v in machine.items() if k.startswith("rerun_") and question in
              k.split("_")[1:]]
    return reruns[-1] if reruns else None


def table(latest: dict) -> str:
    e2e = (latest.get("details") or {}).get("e2e") or {}
    speed = e2e.get("examples_per_s")
    if not speed:
        return "_No end-to-end measurement in benchmarks/latest.json yet: run `make bench`._"
    m = e2e.get("machine") or _rerun_machine(latest["machine"], "e2e") or latest["machine"]
    lines = ["| examples / s (one epoch, batch 16) | " + " | ".join(t.upper() for t in speed)
             + " |", "|---|" + "---|" * len(speed)]
    for name in CONTENDERS:
        lines.append(f"| {name} | " + " | ".join(f"{speed[t][name]:.1f}" for t in speed) + " |")
    flags = e2e.get("cpu_flags") or {}
    lines += ["", f"`e2e_vs_hf_trainer_ratio` {latest.get('e2e_vs_hf_trainer_ratio', 'n/a')} "
              f"(target ≥ 1.05), `e2e_grouped_speedup` {latest.get('e2e_grouped_speedup', 'n/a')} "
              f"(target ≥ 1.5), `ct_f_step_ratio` {latest.get('ct_f_step_ratio', 'n/a')} "
              f"(≤ 1.05), `ct_d_step_ratio` {latest.get('ct_d_step_ratio', 'n/a')} (≤ 1.02), "
              f"`bf16_vs_fp32_step_ratio` {latest.get('bf16_vs_fp32_step_ratio', 'n/a')}.",
              f"Measured by `benchmarks/run_all.py` ({m.get('mode')}, {e2e.get('n_train')} training sets) "
              f"on {m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} thread(s), "
              f"torch {m.get('torch')}, transformers {m.get('transformers')}), load average "
              f"{m.get('load_average_1m_at_start')} at the start, "
              f"{m.get('load_average_1m_at_end')} at the end, finished "
              f"{latest.get('finished_at')}; CPU flags: "
              + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args()
    text = table(json.loads(LATEST.read_text()))
    if not args.readme:
        print(text)
        return
    readme = ROOT / "README.md"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _: f"{START}\n{text}\n{END}", readme.read_text())
    readme.write_text(new)


if __name__ == "__main__":
    main()
