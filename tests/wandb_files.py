"""Read back an offline wandb run (`run-<id>.wandb`) without a server, for the tests.

The file is a ":W&B" header followed by LevelDB-log framed protobuf `Record`s: 32 KiB blocks,
each chunk a 7-byte header (crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, parts = 7, []
    while pos + HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < HEADER.size:  # block tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if kind == 0 and length == 0:
            break
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (FULL, LAST):
            yield b"".join(parts)
            parts = []


def _value(item) -> object:
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind in ("integer", "number", "text", "boolean"):
        return getattr(item, kind)
    return json.loads(item.value_json) if item.value_json else None


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(run_dir: Path, timeout: float = 60.0) -> dict:
    """{"run": RunRecord, "config", "history": [rows], "summary", "exit": code}. `finish()`
    returns before wandb's service has flushed the file, so wait for the exit record."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = _parse(path.read_bytes())
        except Exception:  # a record still being written
            out = {"exit": None}
        if out["exit"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse(data: bytes) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": None, "config": {}, "history": [], "summary": {}, "exit": None}
    for payload in _payloads(data):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            for item in record.run.config.update:
                out["config"][_key(item)] = _value(item)
        elif kind == "config":
            for item in record.config.update:
                out["config"][_key(item)] = _value(item)
        elif kind == "history":
            out["history"].append({_key(i): _value(i) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][_key(item)] = _value(item)
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out
