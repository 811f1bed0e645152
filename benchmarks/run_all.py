"""Run every benchmark, print one markdown report and write benchmarks/latest.json.

    python benchmarks/run_all.py            # make bench        (about an hour: e2e trains full epochs)
    python benchmarks/run_all.py --quick    # make bench-quick  (fewer repeats)
    python benchmarks/run_all.py --only fisher --threads 2   # rerun one question
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e  # noqa: E402
import bench_fisher  # noqa: E402
import bench_step  # noqa: E402
import bench_threshold  # noqa: E402
import bench_trainer  # noqa: E402
import common  # noqa: E402

QUESTIONS = {"step": bench_step, "threshold": bench_threshold, "fisher": bench_fisher,
             "trainer": bench_trainer, "e2e": bench_e2e}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, same keys")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the CPU protocol's jobs run)")
    parser.add_argument("--only", nargs="+", choices=list(QUESTIONS),
                        help="rerun these questions only, keeping the others in latest.json")
    args = parser.parse_args()
    info = common.machine(args.threads)
    start = time.perf_counter()
    keys, details = {}, {}
    print(f"# childtune benchmarks ({'quick' if args.quick else 'full'}, {args.threads} threads, "
          f"{info['cpu']}, {info['cores']} cores, load average {info['load_average_1m_at_start']})")
    for name, module in QUESTIONS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        out = module.run(args.quick, args.threads)
        keys.update(out["keys"])
        details[name] = {**{k: v for k, v in out.items() if k != "keys"}, "machine": info}
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)\n\n{out['table']}", flush=True)
    info.update(mode="quick" if args.quick else "full",
                seconds=round(time.perf_counter() - start, 1),
                load_average_1m_at_end=round(__import__("os").getloadavg()[0], 2))
    common.write_latest({k: round(v, 4) for k, v in keys.items()}, details, info,
                        update=bool(args.only))
    print("\n## keys (benchmarks/latest.json)\n")
    for k, v in keys.items():
        print(f"- {k}: {v:.4f}")
    print(f"\n{info['seconds']:.0f} s in all; load average {info['load_average_1m_at_start']} "
          f"at start, {info['load_average_1m_at_end']} at end")


if __name__ == "__main__":
    main()
