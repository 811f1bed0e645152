"""Trained models kept between runs, named by the identity of the run that trained them.

    <runtime.cache_dir>/encoders/runs/<model>/<task>/<variant>/<hash>/seed<N>.pt   task transfer
    <runtime.cache_dir>/models/runs/<model>/<task>/<variant>/<hash>/seed<N>.pt     prune ablation

(the path of the record of the run that trained it, with .pt for .json). A file holds {"identity": ..., "state": state_dict}, written atomically (atomic.py). These are
caches: deleting one costs a retraining, never a result."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import records
from .atomic import atomic_file


def path(cache_dir, kind: str, ident: dict) -> Path:
    return records.record_path(Path(cache_dir) / kind, ident).with_suffix(".pt")


def save(model, path: Path, ident: dict, keep: Callable[[str], bool] = lambda name: True) -> None:
    """The entries of the model's state dict whose names `keep` accepts."""
    import torch

    state = {k: v for k, v in model.state_dict().items() if keep(k)}
    with atomic_file(path, "wb") as f:
        torch.save({"identity": ident, "state": state}, f)


def load(model, path: Path, keep: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Loads the saved entries `keep` accepts; returns the names that do not fit (entries the
    model lacks, and entries `keep` accepts that the file lacks)."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in saved["state"].items() if keep(k)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    return [k for k in missing if keep(k)] + list(unexpected)
