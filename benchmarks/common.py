"""Shared by the benchmark scripts: the embedded model, fixed batches, interleaved timing,
memory peaks, the machine description and benchmarks/latest.json.

Timings are wall-clock medians of alternating repeats: every round runs each contender once,
in a rotated order, so a background load hits all of them alike."""
from __future__ import annotations

import functools
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

LATEST = Path(__file__).resolve().parent / "latest.json"


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()


@functools.cache
def minilm(num_labels: int = 2):
    """The embedded all-MiniLM-L6-v2 as a sequence classifier (loaded once per process)."""
    from omegaconf import OmegaConf

    from childtune.run.models import load_model

    torch.manual_seed(0)
    return load_model(OmegaConf.create({"source": "embedded", "path": None}), num_labels)


def token_batch(batch_size: int = 16, length: int = 64, seed: int = 0) -> dict:
    """A batch of random word-piece ids: step time depends on the shape only."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (batch_size, length), generator=g),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "token_type_ids": torch.zeros(batch_size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=g)}


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, alternating: round r runs all of them once,
    starting at a different one each round. `warmup` rounds are run and dropped."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            start = time.perf_counter()
            contenders[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_extra_bytes(fn: Callable[[], object]) -> tuple[object, int | None]:
    """(fn(), how far the resident set peaked above where it was before the call); None
    where the kernel offers no peak reset (non-Linux)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")   # reset the VmHWM peak to now
        before = _status("VmRSS")
    except OSError:
        return fn(), None
    result = fn()
    return result, _status("VmHWM") - before


def machine(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_latest(keys: dict, details: dict, info: dict, update: bool = False) -> None:
    """Top level: this run's keys; `by_threads` keeps the latest run for every thread count.
    `update`: only some questions were rerun; keep the other questions' results."""
    previous = json.loads(LATEST.read_text()) if LATEST.is_file() else {}
    run = {**keys, "details": details, "machine": info,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if update:
        old = previous.get("by_threads", {}).get(str(info["torch_threads"]), {})
        run = {**old, **keys, "details": {**old.get("details", {}), **details},
               "machine": {**old.get("machine", {}), "rerun_" + "_".join(details): info},
               "finished_at": run["finished_at"]}
    by_threads = {**previous.get("by_threads", {}), str(info["torch_threads"]): run}
    LATEST.write_text(json.dumps({**run, "threads": info["torch_threads"],
                                  "by_threads": by_threads}, indent=1) + "\n")


def cli(run: Callable[[bool, int], dict], doc: str) -> None:
    """`python benchmarks/<script>.py [--quick] [--threads N]`: run one question, print it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, same keys")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the CPU protocol's jobs run)")
    args = parser.parse_args()
    out = run(args.quick, args.threads)
    print(out["table"])
    print({k: round(v, 4) for k, v in out["keys"].items()})


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:,.3f}" if isinstance(v, float) and abs(v) < 10 else (
            f"{v:,.0f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
