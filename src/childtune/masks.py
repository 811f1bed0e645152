"""Child networks and the gradient masking that trains them.

A masker multiplies each masked parameter's gradient in place just before `optimizer.step()`
(a step pre-hook), i.e. after gradient clipping and before the optimizer's moment updates, so
Adam's moments see the masked gradient, as in the official code. Works with any torch
optimizer, and with the HF Trainer (pass the optimizer in `optimizers=(optimizer, None)`).

    masker = ChildTuningF(model.named_parameters(), p=0.3, seed=1)   # CT_F
    masker = ChildTuningD(model, top_p_mask(fisher, p=0.3))          # CT_D (fixed mask)
    masker.attach(optimizer)

Masks are dicts {parameter name: bool tensor of the parameter's shape}, True = child (updated).
"""
from __future__ import annotations

import math
import re

import torch


def kept_count(p: float, n: int) -> int:
    """The exact number of kept entries: round(p * n), halves rounded up."""
    return int(math.floor(p * n + 0.5))


def encoder_layer_names(model: torch.nn.Module) -> list[str]:
    """The official CT_D scope: trainable parameters whose name contains 'layer' (the encoder
    blocks; embeddings, pooler and classifier are left out)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and "layer" in n]


def scope_names(model: torch.nn.Module, scope: str) -> list[str]:
    if scope == "layers":
        return encoder_layer_names(model)
    if scope == "all":
        return [n for n, p in model.named_parameters() if p.requires_grad]
    raise ValueError(f"scope must be 'layers' or 'all', got {scope!r}")


# ---------------------------------------------------------------- selecting child networks

def _ranked_selection(scores: dict[str, torch.Tensor], k: int, largest: bool) -> dict[str, torch.Tensor]:
    """Exactly k entries: the k best under the total order (value, then lower flat index first
    for `largest`); for the bottom, the k last of that same order. So top-k and bottom-k are
    disjoint whenever 2k <= N, and ties never depend on the sort algorithm."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    n = flat.numel()
    chosen = torch.zeros(n, dtype=torch.bool)
    if k >= n:
        chosen[:] = True
    elif k > 0:
        if largest:
            t = flat.kthvalue(n - k + 1).values
            chosen = flat > t
            ties = (flat == t).nonzero().flatten()[: k - int(chosen.sum())]
        else:
            t = flat.kthvalue(k).values
            chosen = flat < t
            need = k - int(chosen.sum())
            ties = (flat == t).nonzero().flatten()
            ties = ties[ties.numel() - need:]
        chosen[ties] = True
    return _unflatten(chosen, scores)


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start:start + t.numel()].view(t.shape).clone()
        start += t.numel()
    return out


def top_p_mask(scores: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """CT_D's child network: the global top round(p*N) entries of the Fisher information."""
    n = sum(s.numel() for s in scores.values())
    return _ranked_selection(scores, kept_count(p, n), largest=True)


def bottom_p_mask(scores: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """The ablation's lowest-Fisher child network: the global bottom round(p*N) entries."""
    n = sum(s.numel() for s in scores.values())
    return _ranked_selection(scores, kept_count(p, n), largest=False)


def random_mask(shapes: dict[str, torch.Size], p: float, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random child network with exactly round(p*N) entries, uniformly chosen."""
    n = sum(math.prod(s) for s in shapes.values())
    generator = torch.Generator().manual_seed(seed)
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: kept_count(p, n)]] = True
    return _unflatten(flat, {k: torch.empty(s, dtype=torch.bool) for k, s in shapes.items()})


def top_layers_mask(model: torch.nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Top-K tuning's fixed child network: the top k encoder layers, the pooler and the head
    (everything outside the backbone) are kept whole; the embeddings and the lower layers are
    frozen. Covers every trainable parameter."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    layers = {layer_index(n) for n in encoder_layer_names(model)} - {None}
    if not 0 < k <= len(layers):
        raise ValueError(f"k={k} must be between 1 and the model's {len(layers)} encoder layers")
    backbone = f"{getattr(model, 'base_model_prefix', '')}."

    def kept(name: str) -> bool:
        index = layer_index(name)
        if index is not None:
            return index >= len(layers) - k
        return not name.startswith(backbone) or "pooler" in name

    params = dict(model.named_parameters())
    return {n: torch.full_like(params[n], kept(n), dtype=torch.bool) for n in names}


@torch.no_grad()
def prune_(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of the parameters the masks cover (the 'prune' ablation)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


# ---------------------------------------------------------------- gradient maskers

class _GradientMasker:
    params: list[torch.nn.Parameter]

    def attach(self, optimizer: torch.optim.Optimizer):
        """Mask gradients right before every `optimizer.step()`; returns the hook handles."""
        return [optimizer.register_step_pre_hook(lambda *_: self.apply())]

    def apply(self) -> None:
        raise NotImplementedError


class ChildTuningF(_GradientMasker):
    """CT_F: a fresh Bernoulli(p) mask per step for every masked parameter; kept gradient
    entries are scaled by 1/p. Draws come from the masker's own generator, so the global
    random stream (dropout) is the same as in a vanilla run."""

    def __init__(self, named_params, p: float, seed: int):
        self.named = [(n, q) for n, q in named_params if q.requires_grad]
        self.params = [q for _, q in self.named]
        self.p = float(p)
        self.generator = torch.Generator().manual_seed(seed)
        self.kept = 0
        self.seen = 0

    @torch.no_grad()
    def apply(self) -> None:
        for param in self.params:
            grad = param.grad
            if grad is None:
                continue
            keep = torch.rand(grad.shape, generator=self.generator) < self.p
            self.kept += int(keep.sum())
            self.seen += keep.numel()
            grad.mul_(keep.to(grad.dtype).mul_(1.0 / self.p))

    def keep_rate(self) -> float | None:
        return self.kept / self.seen if self.seen else None


class ChildTuningD(_GradientMasker):
    """A fixed child network (CT_D, random or lowest-Fisher): gradients of non-child entries
    are zeroed every step, with no rescaling. Parameters without a mask update freely.

    With AdamW, masked entries keep zero moments and so move only by decoupled weight decay
    (the official behaviour). `freeze_exactly=True` restores them after every step instead, so
    they never move at all (no weight decay on frozen entries)."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor],
                 freeze_exactly: bool = False):
        named = dict(model.named_parameters())
        missing = sorted(set(masks) - set(named))
        if missing:
            raise ValueError(f"masks name parameters the model lacks: {missing[:3]}")
        self.params = [named[n] for n in masks]
        self.masks = [masks[n].to(named[n].device) for n in masks]
        self.freeze_exactly = freeze_exactly
        self._before: list[torch.Tensor] = []

    def attach(self, optimizer: torch.optim.Optimizer):
        handles = super().attach(optimizer)
        if self.freeze_exactly:
            handles.append(optimizer.register_step_post_hook(lambda *_: self._restore()))
        return handles

    @torch.no_grad()
    def apply(self) -> None:
        for param, mask in zip(self.params, self.masks):
            if param.grad is not None:
                param.grad.mul_(mask)
        if self.freeze_exactly:
            self._before = [param.detach().clone() for param in self.params]

    @torch.no_grad()
    def _restore(self) -> None:
        for param, mask, before in zip(self.params, self.masks, self._before):
            param.copy_(torch.where(mask, param, before))
        self._before = []


# ---------------------------------------------------------------- statistics

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
