"""What a batch is: a dict of the model's inputs (input_ids, attention_mask, labels, ...) plus
bookkeeping keys the model never sees: `idx`, each example's position in its split (set by
data.Encoded.collate; the loop puts predictions back in order by it, DDP shards by it).
Batches without bookkeeping keys (any HF-style loader) work the same."""
from __future__ import annotations

import torch

NON_MODEL_KEYS = ("idx",)


def model_inputs(model: torch.nn.Module, batch: dict) -> dict:
    """The batch without bookkeeping keys (`idx`), on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items() if k not in NON_MODEL_KEYS}


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss of the batch (an HF model computes it from `labels`)."""
    return model(**model_inputs(model, batch)).loss
