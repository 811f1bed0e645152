"""Which parameters a child network is selected among (its scope), named by layer and module
type: the official CT_D scope, Top-K tuning's top layers, and how a mask spreads over them."""
from __future__ import annotations

import re

import torch


def encoder_layer_names(model: torch.nn.Module) -> list[str]:
    """The official CT_D scope: trainable parameters whose name contains 'layer' (the encoder
    blocks; embeddings, pooler and classifier are left out)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and "layer" in n]


def scope_names(model: torch.nn.Module, scope: str, k: int | None = None) -> list[str]:
    """The parameters a mask is selected among; with `k`, only those inside the top k encoder
    layers (Top-K tuning's trained layers)."""
    if scope == "layers":
        names = encoder_layer_names(model)
    elif scope == "all":
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        raise ValueError(f"scope must be 'layers' or 'all', got {scope!r}")
    if k is None:
        return names
    first = first_top_layer(model, k)
    return [n for n in names if (index := layer_index(n)) is not None and index >= first]


def first_top_layer(model: torch.nn.Module, k: int) -> int:
    """The index of the lowest of the model's top k encoder layers; a ValueError unless
    0 < k <= the number of layers."""
    n_layers = len({layer_index(n) for n in encoder_layer_names(model)} - {None})
    if not 0 < k <= n_layers:
        raise ValueError(f"k={k} must be between 1 and the model's {n_layers} encoder layers")
    return n_layers - k


def top_layers_mask(model: torch.nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Top-K tuning's fixed child network: the top k encoder layers, the pooler and the head
    (everything outside the backbone) are kept whole; the embeddings and the lower layers are
    frozen. Covers every trainable parameter."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    first = first_top_layer(model, k)
    backbone = f"{getattr(model, 'base_model_prefix', '')}."

    def kept(name: str) -> bool:
        index = layer_index(name)
        if index is not None:
            return index >= first
        return not name.startswith(backbone) or "pooler" in name

    params = dict(model.named_parameters())
    return {n: torch.full_like(params[n], kept(n), dtype=torch.bool) for n in names}


_MODULE_TYPES = [
    ("attn_q", r"attention\.self\.query|\.q_proj|\.q\b"),
    ("attn_k", r"attention\.self\.key|\.k_proj|\.k\b"),
    ("attn_v", r"attention\.self\.value|\.v_proj|\.v\b"),
    ("attn_o", r"attention\.output\.dense|\.o_proj|\.o\b"),
    ("layernorm", r"LayerNorm|layer_norm"),
    ("ffn_in", r"intermediate\.dense|ff\.layer_1"),
    ("ffn_out", r"output\.dense|ff\.layer_2"),
    ("embeddings", r"embeddings|word_embedding|mask_emb"),
    ("pooler", r"pooler|sequence_summary"),
    ("classifier", r"classifier|logits_proj"),
]


def module_type(name: str) -> str:
    for label, pattern in _MODULE_TYPES:
        if re.search(pattern, name):
            return label
    return "other"


def layer_index(name: str) -> int | None:
    match = re.search(r"layer\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def mask_statistics(masks: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """Kept fraction overall, per encoder layer and per module type; plus how much of the
    model the mask covers."""
    total_params = sum(p.numel() for p in model.parameters())
    kept = {n: int(m.sum()) for n, m in masks.items()}
    size = {n: m.numel() for n, m in masks.items()}

    def grouped(key):
        acc: dict = {}
        for name in masks:
            group = key(name)
            k, s = acc.get(group, (0, 0))
            acc[group] = (k + kept[name], s + size[name])
        return {str(g): k / s for g, (k, s) in sorted(acc.items(), key=lambda kv: str(kv[0]))}

    n_masked = sum(size.values())
    return {
        "kept": sum(kept.values()),
        "masked_entries": n_masked,
        "kept_fraction": sum(kept.values()) / n_masked if n_masked else None,
        "scope_fraction_of_model": n_masked / total_params,
        "per_layer": grouped(lambda n: layer_index(n) if layer_index(n) is not None else "none"),
        "per_module": grouped(module_type),
    }
