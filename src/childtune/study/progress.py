"""How far a plan is: which of its runs are done, which are missing (runs and the source
encoders of task transfer), and how long the missing ones take under the protocol's measured
speeds, and at the speed the protocol's done runs actually ran (`speed_ratio`: load beside the
sweep, another CPU). `plan` arguments are plan.Plan objects (their `runs` and `sources`)."""
from __future__ import annotations

import shlex
from pathlib import Path

from .. import records
from ..mask_kinds import FISHER


def estimate(config: dict) -> float | None:
    """Seconds one run takes under the protocol's measured speeds (None: no estimate)."""
    protocol = config.get("protocol") or {}
    task = (config.get("task") or {}).get("name")
    per_1k = (protocol.get("train_seconds") or {}).get(task)
    if per_1k is None:   # a protocol without measured speeds
        return None
    n_train = config["data"].get("n_train") or (protocol.get("train_sizes") or {}).get(task)
    if n_train is None:
        return None
    if config["variant"].get("reference") or (
            config["variant"].get("prune") and (config.get("runtime") or {}).get("keep_for_prune")):
        return protocol.get("overhead_seconds", 0)  # no training: reference rows, or the kept
                                                    # CT_D model evaluated (prune.py)
    epoch = per_1k * n_train / 1000 / 3 / _optimizer_speedup(config)
    train = epoch * config["trainer"]["epochs"] * _padding_factor(config)
    if config["variant"].get("mask") in FISHER:
        train += epoch      # the Fisher pass: one more epoch (random batches)
    return train + protocol.get("overhead_seconds", 0)


def _padding_factor(config: dict) -> float:
    """Training time with length-grouped batches relative to random ones: the ratio of padded
    tokens per epoch (step time grows about linearly with the padded length here)."""
    padding = (config.get("protocol") or {}).get("padding") or {}
    task = config["task"]["name"]
    if not config["data"].get("group_by_length") or task not in padding.get("grouped", {}):
        return 1.0
    return padding["grouped"][task] / padding["random"][task]


def _optimizer_speedup(config: dict) -> float:
    """The protocol's speeds were measured with foreach AdamW; a fused AdamW steps faster."""
    fused = config["trainer"].get("optimizer") == "adamw_fused"
    return (config.get("protocol") or {}).get("fused_adamw_speedup", 1.0) if fused else 1.0


# ---------------------------------------------------------------- done and missing

def _success(path: Path) -> records.RunRecord | None:
    """The run's success record if it is there and readable (a file cut short is a UserError
    naming it, as in train)."""
    record = records.read_record(path) if path.is_file() else None
    return record if record is not None and record.succeeded else None


def done(path: Path) -> bool:
    """A run is done when its success record is there and readable."""
    return _success(path) is not None


def done_records(results_dir, runs: list[dict]) -> dict[str, records.RunRecord]:
    """Run path -> the success record of each done run, each file read once."""
    found = {run["path"]: _success(Path(results_dir) / run["path"]) for run in runs}
    return {path: record for path, record in found.items() if record is not None}


def missing_runs(runs: list[dict], sources: list[dict],
                 finished: dict[str, records.RunRecord]) -> tuple[list, list]:
    return ([r for r in runs if r["path"] not in finished],
            [s for s in sources if not Path(s["encoder"]).exists()])


def _measured_seconds(record: records.RunRecord) -> float:
    """The training, Fisher and evaluation seconds a run's record measured (wall clock)."""
    return sum(record.timings.get(k) or 0.0
               for k in ("train_seconds", "fisher_seconds", "eval_seconds"))


def speed_ratio(results_dir, protocol: str | None) -> tuple[float, int] | None:
    """How the protocol's done runs ran against its speeds: their measured seconds over the
    seconds `estimate` gives their configs (loading, the overhead, left out of both), and how
    many runs that is. Above 1: slower than the protocol's probe (load beside the sweep,
    another CPU). None: no done run of the protocol with an estimate."""
    measured = estimated = 0.0
    count = 0
    for record in records.read_records(results_dir):
        if not record.succeeded or record.setting("protocol.name") != protocol:
            continue
        seconds = estimate(record.config)
        work = None if seconds is None else (
            seconds - (record.config.get("protocol") or {}).get("overhead_seconds", 0))
        if not work or work <= 0:   # no estimate, or an evaluation only (prune)
            continue
        measured += _measured_seconds(record)
        estimated += work
        count += 1
    return (measured / estimated, count) if count else None


def recorded_hours(finished: dict[str, records.RunRecord]) -> float:
    """The core-hours the done runs' records measured: their training, Fisher and evaluation
    seconds times the torch threads each used. Loading and tokenizing are not recorded: with
    the token cache warm, about 1% of a full-data run (an STS-B job of session 8: 459 s from
    its job folder to its outcome, 456 s recorded)."""
    return sum(_measured_seconds(record) * (record.environment.get("torch_threads") or 1)
               for record in finished.values()) / 3600


def status(results_dir, plan) -> dict:
    finished = done_records(results_dir, plan.runs)
    missing, missing_sources = missing_runs(plan.runs, plan.sources, finished)
    return {"planned": len(plan.runs), "done": len(plan.runs) - len(missing),
            "missing": len(missing), "sources_missing": len(missing_sources),
            "cpu_hours": hours(missing + missing_sources),
            "recorded_hours": recorded_hours(finished)}


def hours(runs: list[dict]) -> float | None:
    if any(r.get("seconds") is None for r in runs):
        return None
    return sum(r["seconds"] for r in runs) / 3600


def _time(hours: float | None, jobs: int, speed: tuple[float, int] | None = None,
          protocol: str | None = None) -> str:
    """The estimate at the protocol's speeds and, when its done runs measured another speed,
    at theirs (the overhead scaled too: a rough upper side)."""
    if hours is None:
        return "time unknown"
    text = f"{hours:.1f} CPU-hours, ~{hours / jobs:.1f} h wall with {jobs} jobs"
    if speed is None or not hours:
        return text
    ratio, count = speed
    return (f"{text}; x{ratio:.2f} at the speed of the {count} done {protocol} runs: "
            f"{hours * ratio:.1f} CPU-hours, ~{hours * ratio / jobs:.1f} h wall")


def _speed(results_dir, protocol: str | None, speeds: dict | None) -> tuple[float, int] | None:
    """speed_ratio, read once per protocol when the caller keeps `speeds` across its plans
    (it reads every record of results_dir)."""
    if speeds is None:
        return speed_ratio(results_dir, protocol)
    if protocol not in speeds:
        speeds[protocol] = speed_ratio(results_dir, protocol)
    return speeds[protocol]


def describe(results_dir, plan, jobs: int, speeds: dict | None = None) -> str:
    """One line: the plan's runs planned, done and missing, and the missing ones' time;
    `speeds` caches each protocol's speed_ratio across the caller's plans."""
    s = status(results_dir, plan)
    extra = f" + {s['sources_missing']} source runs" if plan.sources else ""
    speed = _speed(results_dir, plan.protocol, speeds) if s["missing"] else None
    return (f"{plan.study:16s} {plan.protocol or '-':6s} planned {s['planned']:4d}  "
            f"done {s['done']:4d} ({s['recorded_hours']:.1f} CPU-h recorded)  "
            f"missing {s['missing']:4d}{extra}  "
            f"({_time(s['cpu_hours'], jobs, speed, plan.protocol)})")


def total(results_dir, plans: list, jobs: int, speeds: dict | None = None) -> str:
    """Studies share runs (a run is trained once): the distinct runs of all of them."""
    runs = list({r["path"]: r for p in plans for r in p.runs}.values())
    sources = list({s["path"]: s for p in plans for s in p.sources}.values())
    finished = done_records(results_dir, runs)
    missing, missing_sources = missing_runs(runs, sources, finished)
    protocols = {p.protocol for p in plans}
    protocol = protocols.pop() if len(protocols) == 1 else None   # one protocol's speed only
    speed = _speed(results_dir, protocol, speeds) if protocol and missing else None
    return (f"{'all':23s} distinct {len(runs):4d}  done {len(runs) - len(missing):4d} "
            f"({recorded_hours(finished):.1f} CPU-h recorded)  "
            f"missing {len(missing):4d} + {len(missing_sources)} source runs  "
            f"({_time(hours(missing + missing_sources), jobs, speed, protocol)})")


def missing_lines(results_dir, plan) -> list[str]:
    missing, sources = missing_runs(plan.runs, plan.sources,
                                    done_records(results_dir, plan.runs))
    return [f"  missing {r['path']}: python -m childtune.train " +
            " ".join(shlex.quote(f"{k}={v}") for k, v in r["overrides"].items())
            for r in missing] + [f"  missing source encoder {s['encoder']} ({s['path']})"
                                 for s in sources]
