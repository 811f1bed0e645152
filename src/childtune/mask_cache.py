"""The mask cache: the fixed masks of the cached kinds (mask_kinds.CACHED) kept between runs,
`<runtime.cache_dir>/masks/<key>.npz`, under a key of everything the mask depends on.

A file holds `bits` (every mask's entries in dict order, bit-packed: 1 bit per entry), the
parameter `names` and `shapes` (JSON) and `meta` (JSON: the key's parts and the Fisher
statistics), written atomically (atomic.py). Entries are caches: deleting one costs a
recomputation, never a result.

This module owns the key, the path and the file format for both sides: the run side
(method/variants.py) saves and loads masks as tensors, the figures read the packed bits. It
imports numpy only (torch inside `save` and `load`), so the study side reads masks torch-free."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import UserError
from .mask_kinds import KINDS

FOLDER = "masks"


def key_parts(variant: dict, cache_parts: dict, seed: int, max_grad_norm) -> dict:
    """What a fixed mask depends on: `cache_parts` (model, task, data, batch size: the Fisher
    pass's inputs), the seed, the clipping and the variant's mask settings. A mask chosen
    without a Fisher pass (random) depends on the model, the seed and its settings alone."""
    parts = {**cache_parts, "seed": seed, "max_grad_norm": max_grad_norm,
             **{k: variant.get(k) for k in ("mask", "p", "scope", "fisher_seed",
                                            "fisher_recipe", "fisher_mode")}}
    if not KINDS[variant["mask"]].fisher:
        parts = {k: parts[k] for k in ("model", "seed", "mask", "p", "scope", "fisher_seed")}
    for extra in ("k", "count"):  # only when set: the keys of masks without them stay as they were
        if variant.get(extra) is not None:
            parts[extra] = variant[extra]
    return parts


def key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def folder(cache_dir) -> Path:
    return Path(cache_dir) / FOLDER


def path(cache_dir, mask_key: str) -> Path:
    return folder(cache_dir) / f"{mask_key}.npz"


def save(path: Path, masks: dict, meta: dict) -> None:
    """Bit-packed (1 bit per entry), written atomically (atomic.py): a killed run or two runs
    writing the same entry at once never leave a partial file."""
    import torch

    flat = torch.cat([m.flatten() for m in masks.values()]).numpy()
    with atomic_file(path, "wb") as f:
        np.savez(f, bits=np.packbits(flat), names=json.dumps(list(masks)),
                 shapes=json.dumps([list(m.shape) for m in masks.values()]),
                 meta=json.dumps(meta))


def load(path: Path, model=None) -> tuple[dict, dict]:
    """The masks ({name: bool tensor}) and meta of an entry. An unreadable entry, or one that
    does not fit `model`, is a UserError naming the file: entries are written atomically, so it
    was damaged outside childtune; deleting it is safe."""
    import torch

    try:
        with np.load(path) as data:
            names, shapes = json.loads(str(data["names"])), json.loads(str(data["shapes"]))
            total = sum(math.prod(s) for s in shapes)
            flat = torch.from_numpy(np.unpackbits(data["bits"], count=total).astype(bool))
            meta = json.loads(str(data["meta"]))
        if flat.numel() != total:
            raise ValueError(f"{flat.numel()} mask bits for {total} entries")
        params = dict(model.named_parameters()) if model is not None else None
        wrong = [n for n, shape in zip(names, shapes)
                 if params is not None and (n not in params or list(params[n].shape) != shape)]
        if wrong:
            raise ValueError(f"{wrong[0]} is not a parameter of that shape in the model")
    except Exception as exc:  # zip, npy, json and shape errors all mean the same thing here
        raise UserError(f"mask cache entry {path} is unreadable or does not fit the model "
                        f"({type(exc).__name__}: {str(exc)[:80]}); delete it and rerun "
                        f"(the mask is recomputed)") from None
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = flat[start:start + n].view(shape).clone()
        start += n
    return out, meta


def read_bits(path: Path) -> tuple[np.ndarray, str]:
    """The packed bits of an entry, without torch, and its layout (names and shapes) as a key,
    so that only masks of one layout are compared (the figures' overlap)."""
    with np.load(path) as data:
        return data["bits"].copy(), str(data["names"]) + str(data["shapes"])
