"""What a multirun leaves and says besides the records (a Hydra callback, src/childtune/conf/config.yaml):

    <hydra.sweep.dir>/<job>/.hydra/config.yaml, overrides.yaml   the job's composed config
    <hydra.sweep.dir>/<job>/train.log                            everything the job printed
    <hydra.sweep.dir>/<job>/outcome.json                         done | skipped | failed

Each job prints its launch line (`[job 3] python -m childtune.train ...`) when it starts; the
sweep ends with one line: how many runs were done, skipped (their record existed) and failed,
with the failed runs' record paths. A single run of a study's config (`experiment=main`
without -m) says that it ran one job of the study. No torch here."""
from __future__ import annotations

import atexit
import json
import shlex
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from .. import records

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object

OUTCOME = "outcome.json"


class _Tee:
    """A stream that also writes to a log file."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def launch_line(overrides) -> str:
    return "python -m childtune.train " + " ".join(shlex.quote(str(o)) for o in overrides)


def outcome(config: dict, failed: bool, started: float) -> dict:
    """done (a record written by this job), skipped (the record was there), or failed (with
    the failure record's path, or none: bad input)."""
    try:
        ident = records.identity(config)
    except (KeyError, TypeError):
        return {"status": "failed", "record": None}
    path = records.record_path(config["results_dir"], ident)
    if failed:
        failure = records.failure_path(config["results_dir"], ident)
        return {"status": "failed", "record": str(failure) if failure.exists() else None}
    if path.exists():
        return {"status": "done" if path.stat().st_mtime >= started else "skipped",
                "record": str(path)}
    return {"status": "failed", "record": None}


def summary(sweep_dir: Path) -> str:
    found = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{OUTCOME}"))]
    count = {s: sum(o["status"] == s for o in found) for s in ("done", "skipped", "failed")}
    failed = [o["record"] or "no record: bad input" for o in found if o["status"] == "failed"]
    return (f"sweep: {count['done']} done, {count['skipped']} skipped, {count['failed']} failed"
            + (f" ({', '.join(failed)})" if failed else "") + f"; per job: {sweep_dir}/<job>/")


class JobReport(Callback):
    def __init__(self) -> None:
        self.started, self.streams, self.log, self.sweep_dir = 0.0, None, None, None

    def on_run_start(self, config, **kwargs) -> None:
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        given = {str(o).split("=", 1)[0] for o in config.hydra.overrides.task}
        unset = [k for k in params if k not in given]
        if unset:
            print(f"note: study {config.get('study')} sweeps {', '.join(unset)}; without -m this "
                  f"ran one job of it (add -m to run the study)", file=sys.stderr)

    def on_job_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        out = Path(config.hydra.runtime.output_dir)
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        OmegaConf.save(task, out / ".hydra" / "config.yaml")
        OmegaConf.save(config.hydra.overrides.task, out / ".hydra" / "overrides.yaml")
        print(f"[job {config.hydra.job.num}] {launch_line(config.hydra.overrides.task)}",
              flush=True)
        self.log = open(out / "train.log", "a")
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.log), _Tee(sys.stderr, self.log)
        self.started = time.time()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if self.streams is None:
            return
        from hydra.core.utils import JobStatus

        sys.stdout, sys.stderr = self.streams
        self.streams = None
        self.log.close()
        task = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items()
                if k != "hydra"}
        try:
            task = OmegaConf.to_container(OmegaConf.create(task), resolve=True)
        except Exception:  # noqa: BLE001 - a config that does not resolve: the job failed
            pass
        result = outcome(task, job_return.status != JobStatus.COMPLETED, self.started - 0.05)
        records.write_json_atomic(Path(config.hydra.runtime.output_dir) / OUTCOME, result)

    def on_multirun_start(self, config, **kwargs) -> None:
        # A failed job makes Hydra raise when the sweep ends, before on_multirun_end: the
        # summary is then printed as the process exits.
        self.sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._summarize)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._summarize()

    def _summarize(self) -> None:
        if self.sweep_dir is not None:
            print(summary(self.sweep_dir), flush=True)
            self.sweep_dir = None
