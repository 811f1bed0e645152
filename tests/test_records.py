"""The typed run record (run_record.py, records.py): every record committed under results/
reads through the one reader, and the one builder writes each of them back byte for byte; the
schema version rule; what the builder and the writers refuse."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from childtune import records
from childtune.errors import UserError
from childtune.run_record import SECTIONS

from fake_records import fake_failure, fake_identity, fake_record

RESULTS = Path(__file__).resolve().parents[1] / "results"
# results/ and each archived generation of it (results/archive/<name>/): each has its runs/
RESULTS_DIRS = sorted({p.parent for p in RESULTS.glob("**/runs")})


def committed() -> list[tuple[Path, records.RunRecord]]:
    out = []
    for results_dir in RESULTS_DIRS:
        out += [(results_dir / r.path, r) for r in records.read_records(results_dir)]
    return out


def test_every_committed_record_reads_through_the_reader():
    found = committed()
    files = sorted(p for d in RESULTS_DIRS for p in (d / "runs").rglob("*.json"))
    assert len(RESULTS_DIRS) >= 2 and len(found) == len(files) > 200
    assert sorted(path for path, _ in found) == files
    kinds = set()
    for path, record in found:
        assert record.raw == json.loads(path.read_text())  # nothing dropped or changed
        assert record.schema == records.SCHEMA
        assert record.identity["config_hash"] == path.parent.name
        assert f"seed{record.identity['seed']}" == path.name.split(".")[0]
        if not record.succeeded:
            assert record.status == "failed" and record.reason
            continue
        h = record.headline
        assert h.value == record.metric(h.split, h.metric) == record.headline_value()
        kinds |= {name for name in ("history", "eval_loss", "parameters", "reference",
                                    "metrics_before_prune") if record.has(name)}
        if record.identity["variant"] == "prune":
            assert record.headline_value(before_prune=True) is not None
        if record.train_curve is not None:
            assert len(record.train_curve["loss"]) == record.train["steps"]
        if record.kept_per_layer is not None:
            assert all(0 <= v <= 1 for v in record.kept_per_layer.values())
        assert record.timings.get("train_seconds", 0) >= 0 and record.setting("task.name") \
            == record.identity["task"]
    # both generations: with and without history, eval_loss, parameters
    assert {"history", "eval_loss", "parameters", "reference", "metrics_before_prune"} <= kinds
    assert any(not r.has("history") for _, r in found)


def test_the_builder_writes_every_committed_record_back_as_it_is():
    """Byte for byte where today's records.dumps wrote the file (older files put each number
    of a list on a line of its own: there the JSON objects are equal)."""
    same_bytes = 0
    for path, record in committed():
        raw, text = record.to_json(), path.read_text()
        assert set(raw) <= SECTIONS, set(raw) - SECTIONS
        h = raw.pop("headline", None)
        status, ident, config = raw.pop("status"), raw.pop("identity"), raw.pop("config")
        raw.pop("schema")
        rebuilt = records.dumps(records.build(status, ident, config,
                                              headline=h and (h["metric"], h["split"]),
                                              **raw).to_json())
        assert json.loads(rebuilt) == json.loads(text), path
        if records.dumps(json.loads(text)) == text:
            assert rebuilt == text, path
            same_bytes += 1
    assert same_bytes > 0


def test_a_record_without_a_schema_is_version_1_and_a_newer_one_is_refused(tmp_path):
    ident = fake_identity()
    path = records.write_record(tmp_path, fake_record(ident, 0.5))
    raw = json.loads(path.read_text())
    assert raw["schema"] == records.SCHEMA == 1
    del raw["schema"]
    records.write_json_atomic(path, raw)
    old = records.read_record(path)
    assert old.schema == 1 and old.headline == records.Headline("accuracy", "dev", 0.5)
    records.write_json_atomic(path, {**raw, "schema": records.SCHEMA + 1})
    with pytest.raises(UserError, match="record schema 2; this childtune reads schema 1"):
        records.read_record(path)


def test_absent_sections_read_as_absent_and_unknown_keys_are_kept(tmp_path):
    ident = fake_identity()
    path = records.record_path(tmp_path, ident)
    records.write_json_atomic(path, {"status": "success", "identity": ident,
                                     "headline": {"metric": "mcc", "split": "dev", "value": None},
                                     "from_the_future": [1]})
    record = records.read_record(path)
    assert (record.metrics, record.eval_loss, record.train, record.mask) == ({}, {}, {}, {})
    assert (record.train_curve, record.eval_curve, record.headline_curve) == (None, None, None)
    assert (record.kept_per_layer, record.transfer_accuracy("sick"), record.logger) \
        == (None, None, None)
    assert record.headline_value() is None and record.setting("runtime.cache_dir") is None
    assert record.raw["from_the_future"] == [1]


def test_the_builder_and_the_writers_refuse_what_is_not_a_record(tmp_path):
    ident = fake_identity()
    with pytest.raises(TypeError, match="not a record section: headlines"):
        records.build("success", ident, {}, metrics={}, headlines=1)
    with pytest.raises(TypeError, match="the builder writes the schema version"):
        records.build("success", ident, {}, schema=2)
    with pytest.raises(ValueError, match="status must be one of"):
        records.build("done", ident, {})
    with pytest.raises(TypeError, match="built by records.build"):
        records.write_record(tmp_path, {"status": "success", "identity": ident})
    with pytest.raises(ValueError, match="status 'failed'"):
        records.write_failure(tmp_path, fake_record(ident, 0.5))
    assert not (tmp_path / "runs").exists()


def test_the_headline_is_read_from_the_metrics_and_none_is_written_as_null(tmp_path):
    record = fake_record(fake_identity(), 0.25, "mcc", metrics={"dev": {"mcc": 0.25, "a": 1}},
                         logger=None)
    assert record.raw["headline"] == {"metric": "mcc", "split": "dev", "value": 0.25}
    path = records.write_record(tmp_path, record.adding(data={"sizes": {"dev": 8}}))
    written = json.loads(path.read_text())
    assert written["logger"] is None and "history" not in written
    assert records.read_record(path).split_size("dev") == 8
    failure = records.write_failure(tmp_path, fake_failure(fake_identity(seed=2), "diverged",
                                                           "loss is nan"))
    assert records.read_record(failure).reason == "diverged"
