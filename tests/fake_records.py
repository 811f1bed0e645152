"""The tests' fake run records, built by the one builder train uses (records.build)."""
from __future__ import annotations

from childtune import records


def fake_identity(**fields) -> records.Identity:
    """A run identity (records.identity's fields), these `fields` replacing the defaults."""
    return {"study": "adhoc", "model": "tiny", "task": "rte", "variant": "vanilla", "p": None,
            "seed": 1, "n_train": None, "lr": 1e-4, "regularizer": "none",
            "config_hash": "0123456789", **fields}


def fake_record(ident: records.Identity, value: float | None, metric: str = "accuracy",
                split: str = "dev", config: dict | None = None,
                **sections) -> records.RunRecord:
    """A success record whose headline `metric` on `split` is `value` (`metrics` in
    `sections` replaces the one-score default); `config` defaults to the identity's study under
    the cpu protocol."""
    if config is None:
        config = {"study": ident["study"], "protocol": {"name": "cpu"}}
    sections.setdefault("metrics", {split: {metric: value}})
    return records.build("success", ident, config, headline=(metric, split), **sections)


def fake_failure(ident: records.Identity, reason: str, error: str,
                 config: dict | None = None) -> records.RunRecord:
    if config is None:
        config = {"study": ident["study"], "protocol": {"name": "cpu"}}
    return records.build("failed", ident, config, reason=reason, error=error)
