"""Experiment loggers. `logger=none` (the default) logs nothing and imports nothing."""
from __future__ import annotations


class NullLogger:
    """The interface every logger implements; train.py calls these in this order."""

    def log_step(self, values: dict) -> None:
        """Per optimizer step: step, epoch, loss, lr, grad_norm."""

    def log_record(self, record: dict) -> None:
        """Once, with the finished record (metrics, mask statistics, timings)."""

    def info(self) -> dict | None:
        """What the record stores about the logger run (e.g. its id and directory)."""
        return None

    def close(self, failed: bool) -> None:
        """Always called, on success and on every failure path."""


def build_logger(logger_cfg, config: dict, ident: dict) -> NullLogger:
    if logger_cfg.name == "none":
        return NullLogger()
    raise ValueError(f"unknown logger {logger_cfg.name!r}")
