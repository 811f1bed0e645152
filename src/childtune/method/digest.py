"""The SHA-256 of tensors' bytes: a fixed child network's `mask.sha256` in the record, and what
the ranks of a DDP run compare after training (their parameters and masks, distributed.py)."""
from __future__ import annotations

import hashlib

import torch


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
