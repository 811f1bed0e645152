"""`hydra/launcher=parallel`: up to n_jobs runs of a multirun side by side, one process each.

    python -m childtune.train -m hydra/launcher=parallel experiment=main protocol=cpu

Why not joblib's pool: when the OOM killer (or anyone) SIGKILLs one joblib worker, joblib
raises TerminatedWorkerError, loses the sibling job in flight and never runs the queued ones;
and killing the sweep leaves its workers running, writing records. Here every job is its own
forked process:

- a job whose process dies (a signal, or an exit without reporting) gets a failure record
  (reason `killed`) like any failed run, the other jobs go on, and the sweep ends with a
  summary line naming the killed runs and exit 1 (Hydra raises the first failed job);
- each job process asks the kernel to kill it when the sweep's process dies
  (PR_SET_PDEATHSIG), and the sweep kills its jobs when it is interrupted;
- each job gets cpu_count // n_jobs torch threads (as joblib gives its workers), unless
  runtime.threads says otherwise.

The job itself runs exactly as under joblib (the joblib plugin's `execute_job`)."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shlex
import signal
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_joblib_launcher._core import execute_job
from omegaconf import OmegaConf, open_dict

PR_SET_PDEATHSIG = 1


class WorkerKilled(RuntimeError):
    """A parallel job's process ended without reporting (killed by a signal, e.g. OOM)."""
    failure_reason = "killed"


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the sweep still kills its jobs on Ctrl-C
        pass
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os._exit(1)


def _job(conn, parent: int, threads: int, args: tuple) -> None:
    """Runs in the forked job process; sends the JobReturn back."""
    _die_with_parent(parent)
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    ret = execute_job(*args)
    # what the sweeper reads (its configs hold Hydra's structured configs, not picklable here)
    slim = JobReturn(overrides=ret.overrides, working_dir=ret.working_dir,
                     task_name=ret.task_name, status=ret.status, _return_value=ret._return_value)
    try:
        conn.send(slim)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value or exception
        slim._return_value = RuntimeError(f"{type(exc).__name__}: {exc}")
        conn.send(slim)
    conn.close()


def _receive(reader, index: int, results: dict) -> None:
    try:
        results[index] = reader.recv()
    except EOFError:  # the job's process died before it could report
        pass


class ParallelLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, **_ignored) -> None:
        self.n_jobs = n_jobs
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import cpu_count

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be a positive integer, got "
                             f"{self.n_jobs!r}")
        threads = max(1, cpu_count() // self.n_jobs)
        from hydra.core.singleton import Singleton

        state = Singleton.get_state()
        queue = list(enumerate(job_overrides))
        results: dict[int, JobReturn] = {}
        running: dict = {}  # sentinel -> (index, process, reader)
        context = mp.get_context("fork")
        try:
            while queue or running:
                # `running` holds two entries a job (its sentinel and its pipe): count jobs
                while queue and len({job[1] for job in running.values()}) < self.n_jobs:
                    index, overrides = queue.pop(0)
                    reader, writer = context.Pipe(duplex=False)
                    args = (initial_job_idx + index, overrides, self.hydra_context,
                            self.config, self.task_function, state)
                    process = context.Process(target=_job,
                                              args=(writer, os.getpid(), threads, args))
                    process.start()
                    writer.close()
                    running[process.sentinel] = (index, process, reader)
                    running[reader] = running[process.sentinel]
                for ready in wait(list(running)):
                    if ready not in running:
                        continue
                    index, process, reader = running[ready]
                    if reader in running:  # read before joining: a large result fills the pipe
                        _receive(reader, index, results)
                        del running[reader]
                    if ready is reader:
                        continue
                    process.join()
                    del running[ready]
                    if index not in results:
                        results[index] = self._killed(job_overrides[index], process.exitcode)
        finally:
            for index, process, _ in running.values():
                process.kill()
        ordered = [results[i] for i in range(len(job_overrides))]
        self._summary(job_overrides, ordered)
        return ordered

    def _killed(self, overrides: Sequence[str], exitcode: int | None) -> JobReturn:
        """The failure record of a job whose process died, and its JobReturn."""
        from childtune.run import guard

        how = (f"was killed by signal {signal.Signals(-exitcode).name}"
               if exitcode and exitcode < 0 else f"exited with code {exitcode} without reporting")
        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides))
        with open_dict(sweep_config):
            del sweep_config["hydra"]
        config = OmegaConf.to_container(sweep_config, resolve=True)
        command = "python -m childtune.train " + " ".join(
            shlex.quote(o) for o in filter_overrides(overrides))
        line = guard.record_failure(config, WorkerKilled(f"the job's process {how}"),
                                    command)
        print(line, file=sys.stderr, flush=True)
        return JobReturn(overrides=list(overrides), cfg=sweep_config, status=JobStatus.FAILED,
                         _return_value=guard.JobFailed(f"some jobs of this multirun did not "
                                                       f"finish (first: {line})"))

    @staticmethod
    def _summary(job_overrides, results: Sequence[JobReturn]) -> None:
        failed = [r for r in results if r.status != JobStatus.COMPLETED]
        print(f"parallel: {len(results)} jobs, {len(results) - len(failed)} finished, "
              f"{len(failed)} failed", file=sys.stderr, flush=True)
        for ret in failed:
            print(f"  failed: {' '.join(filter_overrides(ret.overrides or []))}",
                  file=sys.stderr, flush=True)
