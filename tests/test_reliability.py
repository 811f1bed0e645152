"""Failure records, crash safety, idempotent and parallel sweeps, determinism, launchers."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from childtune import mask_cache, records
from childtune.run import guard, train
from childtune.run.loop import TrainingDiverged
from reliability_helpers import (compose_cfg, env, overrides, records_under, train_cli,
                                 write_rte)

DIVERGES = ("trainer.lr=1e30", "trainer.warmup_ratio=0", "trainer.epochs=2")  # NaN at step 2


@pytest.fixture
def data_dir(tmp_path):
    return write_rte(tmp_path / "data")


def guarded(cfg, run=train.run):
    return guard.guarded_run(cfg, run, train.rerun_command)


def ident_of(cfg) -> dict:
    return records.identity(OmegaConf.to_container(cfg, resolve=True))


# ---------------------------------------------------------------- failure records

def test_a_diverged_run_leaves_a_failure_record_and_exits_1(tmp_path, data_dir, capsys):
    results = tmp_path / "results"
    cfg = compose_cfg(overrides(data_dir, results, *DIVERGES))
    with pytest.raises(SystemExit) as exit_:
        guarded(cfg)
    assert exit_.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("failed: tiny rte vanilla seed=1: diverged (TrainingDiverged")
    [path] = records_under(results)
    assert path == records.failure_path(results, ident_of(cfg))
    assert path.name == "seed1.failed.json"
    record = json.loads(path.read_text())
    assert (record["status"], record["reason"]) == ("failed", "diverged")
    assert record["identity"] == ident_of(cfg) and record["config"]["trainer"]["lr"] == 1e30
    assert record["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize("error, reason", [
    (TrainingDiverged("loss is nan at step 3"), "diverged"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (MemoryError(), "out_of_memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9e12 bytes"),
     "out_of_memory"),
    (KeyError("labels"), "exception"),
])
def test_failure_reasons(error, reason):
    assert guard.failure_reason(error) == reason


def test_a_later_success_replaces_the_failure_and_a_failed_rerun_keeps_the_success(
        tmp_path, data_dir, capsys):
    results = tmp_path / "results"
    cfg = compose_cfg(overrides(data_dir, results))
    ident = ident_of(cfg)

    def out_of_memory(_cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(SystemExit):
        guarded(cfg, out_of_memory)
    failed = records.failure_path(results, ident)
    assert json.loads(failed.read_text())["reason"] == "out_of_memory"
    assert [r.status for r in records.read_records(results)] == ["failed"]

    guarded(cfg)  # the same run, now succeeding
    assert not failed.exists()
    assert [r.status for r in records.read_records(results)] == ["success"]
    success = records.record_path(results, ident)
    before = success.read_text()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_:  # force=true, and this time it fails
        guarded(compose_cfg(overrides(data_dir, results, "force=true")), out_of_memory)
    assert exit_.value.code == 1
    assert "kept the earlier success record" in capsys.readouterr().err
    assert success.read_text() == before and not failed.exists()


def test_the_basic_launcher_runs_every_job_when_one_fails(tmp_path, data_dir):
    results = tmp_path / "results"
    args = overrides(data_dir, results, *DIVERGES, "trainer.lr=1e30,1e-4")
    done = train_cli(["-m", *args], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    statuses = sorted(records.read_record(p).status for p in records_under(results))
    assert statuses == ["failed", "success"]  # the failing job came first; the sweep went on
    assert len([l for l in done.stderr.splitlines() if l.startswith("failed: ")]) == 1


def test_two_parallel_joblib_jobs_share_a_mask_and_a_failure_does_not_stop_the_other(
        tmp_path, data_dir):
    """hydra/launcher=parallel: 2 jobs at once, both computing the same CT_D mask cache entry;
    the first diverges, the second finishes; each job gets cpu_count // 2 threads."""
    from joblib import cpu_count

    results = tmp_path / "results"
    args = [a for a in overrides(data_dir, results, *DIVERGES, "variant=child_tuning_d",
                                 "trainer.lr=1e30,1e-4") if not a.startswith("runtime.threads")]
    done = train_cli(["-m", "hydra/launcher=parallel", *args], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    by_status = {r.status: r for r in map(records.read_record, records_under(results))}
    assert sorted(by_status) == ["failed", "success"]
    assert by_status["success"].environment["torch_threads"] == max(1, cpu_count() // 2)
    entries = list((results / "cache" / "masks").iterdir())
    assert [e.suffix for e in entries] == [".npz"]  # one complete entry, no temp files
    masks, _ = mask_cache.load(entries[0])
    assert masks


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return state, int(parent)


def _alive(pid: int) -> bool:
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def _children(pid: int) -> list[int]:
    return sorted(int(p.name) for p in Path("/proc").glob("[0-9]*")
                  if _alive(int(p.name)) and _state_and_parent(int(p.name))[1] == pid)


def _parallel_sweep(tmp_path, data_dir, *extra):
    args = [a for a in overrides(data_dir, tmp_path / "results", *extra)
            if not a.startswith("runtime.threads")]
    return subprocess.Popen([sys.executable, "-m", "childtune.train", "-m",
                             "hydra/launcher=parallel", *args], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_children(sweep, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (children := _children(sweep.pid)):
        assert time.monotonic() < deadline and sweep.poll() is None, "no job process started"
        time.sleep(0.05)
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_parallel_sweep_runs_n_jobs_side_by_side(tmp_path, data_dir):
    """n_jobs=2 means two job processes at once (a sweep that ran one at a time took twice
    the wall time while looking healthy)."""
    sweep = _parallel_sweep(tmp_path, data_dir, "seed=1,2,3")
    most, deadline = 0, time.monotonic() + 300
    while sweep.poll() is None and most < 2 and time.monotonic() < deadline:
        most = max(most, len(_children(sweep.pid)))
        time.sleep(0.02)
    sweep.kill()
    sweep.communicate(timeout=60)
    assert most == 2


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_parallel_job_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, data_dir):
    """SIGKILL of one job process (what the OOM killer does): with joblib the whole sweep
    stopped (TerminatedWorkerError); here the other jobs finish and the killed run gets a
    failure record and a line in the sweep's summary."""
    sweep = _parallel_sweep(tmp_path, data_dir, "seed=1,2,3")
    [first, *_] = _first_children(sweep)
    os.kill(first, signal.SIGKILL)  # the job of seed=1
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, err
    by_seed = {r.identity["seed"]: r for r in records.read_records(tmp_path / "results")}
    assert {s: r.status for s, r in by_seed.items()} == {1: "failed", 2: "success",
                                                        3: "success"}
    assert by_seed[1].reason == "killed" and "SIGKILL" in by_seed[1].error
    assert "parallel: 3 jobs, 2 finished, 1 failed" in err
    assert "seed=1" in err.split("parallel: 3 jobs")[1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killing_a_parallel_sweep_stops_its_jobs(tmp_path, data_dir):
    sweep = _parallel_sweep(tmp_path, data_dir, "seed=1,2,3")
    jobs = _first_children(sweep)
    sweep.kill()
    sweep.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(map(_alive, jobs)):
        assert time.monotonic() < deadline, "a job outlived its sweep"
        time.sleep(0.1)
    assert records_under(tmp_path / "results") == []  # killed before finishing: no records


def test_the_slurm_launcher_config_renders_an_sbatch_array_without_a_cluster(tmp_path):
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    cfg = compose_cfg(["hydra/launcher=slurm"], with_hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"].endswith("SlurmLauncher")
    for key in ("_target_", "submitit_folder", "max_num_timeout"):  # not sbatch parameters
        launcher.pop(key)
    rename = SlurmExecutor._equivalence_dict()
    params = {rename.get(k, k): v for k, v in launcher.items()}
    params["mem"] = _convert_mem(params["mem"])
    script = _make_sbatch_string(command="python -m childtune.train", folder=tmp_path,
                                 map_count=40, **params)
    for line in ("#SBATCH --time=240", "#SBATCH --gpus-per-task=1", "#SBATCH --array=0-39%32",
                 "#SBATCH --job-name=childtune", "#SBATCH --cpus-per-task=4"):
        assert line in script


# ---------------------------------------------------------------- crash safety

def test_sigkill_mid_training_leaves_no_record_and_an_intact_cache_then_rerun_completes(
        tmp_path, data_dir):
    results = tmp_path / "results"
    args = overrides(data_dir, results, "variant=child_tuning_d", "trainer.epochs=20",
                     "runtime.progress=true")
    run = subprocess.Popen([sys.executable, "-m", "childtune.train", *args], cwd=tmp_path,
                           env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 300
    while b"train:" not in seen and time.monotonic() < deadline:  # tqdm's training bar
        chunk = os.read(run.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert b"train:" in seen and run.returncode == -signal.SIGKILL, seen[-500:]
    assert records_under(results) == []
    [entry] = (results / "cache" / "masks").glob("*.npz")
    mask_cache.load(entry)  # complete: the mask was written before training began

    rerun = train_cli(args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    [path] = records_under(results)
    record = json.loads(path.read_text())
    assert record["status"] == "success" and record["mask"]["source"] == "reused"
    assert record["train"]["steps"] == 40

    again = train_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip().splitlines() == [
        f"skip: {path} exists (force=true reruns it)"]

    # The record's own command reruns it: same numbers, here into a second results folder.
    command = shlex.split(record["command"])
    assert command[:3] == ["python", "-m", "childtune.train"]
    check = train_cli([*command[3:], f"results_dir={tmp_path / 'check'}"], cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    [copy] = records_under(tmp_path / "check")
    rerun_record = json.loads(copy.read_text())
    assert rerun_record["metrics"] == record["metrics"]
    assert rerun_record["train"] == record["train"]
    assert rerun_record["identity"]["config_hash"] == record["identity"]["config_hash"]


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "seed1.json"
    records.write_json_atomic(path, {"status": "success", "value": 1})
    with pytest.raises(TypeError):
        records.write_json_atomic(path, {"status": "success", "value": object()})
    assert json.loads(path.read_text())["value"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["seed1.json"]

    entry = tmp_path / "masks" / "key.npz"

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(mask_cache.np, "savez", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        mask_cache.save(entry, {"w": torch.ones(3, dtype=torch.bool)}, {})
    assert list(entry.parent.iterdir()) == []


def _hammer(writer: int, folder: str, rounds: int) -> None:
    """One of two processes writing the same record and the same mask entry, over and over."""
    record, entry = Path(folder) / "runs" / "seed1.json", Path(folder) / "masks" / "key.npz"
    generator = torch.Generator().manual_seed(writer)
    for i in range(rounds):
        masks = {"w": torch.rand(300, 200, generator=generator) < 0.3}
        mask_cache.save(entry, masks, {"writer": writer, "round": i})
        records.write_json_atomic(record, {"status": "success", "identity": {}, "writer": writer,
                                           "round": i, "payload": list(range(20_000))})


def test_two_processes_writing_one_record_and_one_cache_entry_never_clobber(tmp_path):
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_hammer, args=(w, str(tmp_path), 60)) for w in (0, 1)]
    for w in writers:
        w.start()
    record, entry = tmp_path / "runs" / "seed1.json", tmp_path / "masks" / "key.npz"
    reads = 0
    while any(w.is_alive() for w in writers):
        if record.exists() and entry.exists():
            assert records.read_record(record).raw["payload"][-1] == 19_999
            masks, meta = mask_cache.load(entry)
            assert masks["w"].shape == (300, 200) and meta["writer"] in (0, 1)
            reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 0
    assert records.read_record(record).raw["round"] == 59
    assert mask_cache.load(entry)[1]["round"] == 59
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert leftovers == []


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("variant", ["child_tuning_f", "child_tuning_d"])
def test_the_same_config_and_seed_give_identical_numbers_twice(tmp_path, data_dir, variant):
    """Two runs in one process, the D mask computed afresh each time (no cache)."""
    runs = []
    for name in ("first", "second"):
        cfg = compose_cfg(overrides(data_dir, tmp_path / name, f"variant={variant}", "seed=3",
                                    "runtime.cache_dir=null", "trainer.epochs=2"))
        runs.append(json.loads(guarded(cfg).read_text()))
    first, second = runs
    assert first["metrics"] == second["metrics"]
    assert first["train"] == second["train"]  # last loss, steps, batch order
    assert first["identity"] == second["identity"]
    for key in ("observed_keep_rate", "statistics", "fisher_quantiles"):
        assert first["mask"].get(key) == second["mask"].get(key)
    assert np.isfinite(first["train"]["last_loss"])


def test_a_record_carries_what_it_takes_to_rerun_it(tmp_path, data_dir):
    record = json.loads(guarded(compose_cfg(overrides(data_dir, tmp_path / "r"))).read_text())
    assert record["config"]["seed"] == 1 and record["config"]["model"]["name"] == "tiny"
    assert {"python", "torch", "transformers", "git_commit", "git_dirty"} <= set(
        record["environment"])
    assert "command" in record  # rerun from the command line: see the SIGKILL test
