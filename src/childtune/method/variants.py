"""From the `variant` config to a child network: which gradients are masked, and how.

    vanilla         no mask
    child_tuning_f  Bernoulli(p) per step, kept gradients x 1/p       (scope: all by default)
    child_tuning_d  fixed top-p Fisher mask, no rescale               (scope: encoder layers)
    child_tuning_d_top_k  Top-K tuning with CT_D inside: the top-p Fisher mask of the top k
                    encoder layers alone (variant.k); pooler and head whole, the rest frozen
    random_mask     fixed random mask of the same size and scope as D
    lowest_fisher   fixed bottom-p Fisher mask
    top_k           fixed: only the top k encoder layers, the pooler and the head are trained
    prune           D's trained model (kept by D's run, prune.py), non-child weights zeroed

`variant.k` (null: all layers) limits the fixed masks of D, random and lowest to the top k
encoder layers: the mask is selected among the in-scope parameters of those layers, and the
rest is top_k's child network (pooler and head whole, embeddings and lower layers frozen).
Fixed masks are cached under a key of everything they depend on and reused (mask_cache.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import scopes, selection
from ..checks import number_in, positive_int
from .digest import digest
from .fisher import FISHER_MODES, STATISTICS, fisher_information
from .fisher import statistics as fisher_statistics
from .masks import ChildTuningD, ChildTuningF, GradientMasker
from .. import mask_cache
from ..errors import UserError
from ..mask_kinds import KINDS, LAYER_LIMITED, NAMES

FISHER_RECIPES = ("official",)


def check_variant(variant: dict) -> None:
    """Bad variant settings fail here, before any data is read or model loaded."""
    kind = variant.get("mask")
    if kind not in NAMES:
        raise UserError(f"variant.mask must be one of {', '.join(NAMES)}, got {kind!r}")
    if kind == "top_layers" or variant.get("k") is not None:
        _check_k(variant)
    if not KINDS[kind].sized:
        return
    number_in("variant.p", variant.get("p"), 0, 1, low_open=True, hint=" (the kept fraction)")
    if variant.get("scope") not in ("all", "layers"):
        raise UserError(f"variant.scope must be 'all' or 'layers', got {variant.get('scope')!r}")
    if not KINDS[kind].fixed and not variant.get("decay_frozen", True):
        raise UserError("variant.decay_frozen=false applies to fixed masks (D, random, lowest, "
                        "prune); CT_F masks change every step")
    if variant.get("draw_bits") is not None and (kind != "bernoulli"
                                                  or variant["draw_bits"] not in (16, 32)):
        raise UserError(f"variant.draw_bits (16 or 32) applies to CT_F's mask=bernoulli, got "
                        f"{variant['draw_bits']!r} with mask={kind}")
    if KINDS[kind].fisher and variant.get("fisher_recipe") not in FISHER_RECIPES:
        raise UserError(f"variant.fisher_recipe must be one of {FISHER_RECIPES}")
    if variant.get("count") not in (None, "official") or (variant.get("count")
                                                           and not KINDS[kind].fisher):
        raise UserError(f"variant.count must be null (exactly round(p*N) entries) or official "
                        f"(numpy's percentile, ties kept; Fisher masks only), got "
                        f"{variant.get('count')!r} with mask={kind}")
    if KINDS[kind].fisher and variant.get("fisher_mode") not in FISHER_MODES:
        raise UserError(f"variant.fisher_mode must be one of {', '.join(FISHER_MODES)} (train: "
                        f"dropout on, as the official code), got {variant.get('fisher_mode')!r}")


def _check_k(variant: dict) -> None:
    """variant.k: the top encoder layers trained (top_layers) or a fixed mask is chosen within.
    Whether the model has that many layers is checked when it is loaded (build)."""
    kind, k = variant["mask"], variant.get("k")
    if kind not in LAYER_LIMITED:
        raise UserError(f"variant.k applies to the fixed masks ({', '.join(LAYER_LIMITED)}), "
                        f"not to mask={kind}")
    positive_int("variant.k", k, what="a positive number of layers")
    if variant.get("prune"):
        raise UserError("variant.prune=true would zero the frozen embeddings and lower layers "
                        "with variant.k; prune without k")


@dataclass
class ChildNetwork:
    masker: GradientMasker | None = None
    masks: dict[str, torch.Tensor] | None = None   # fixed masks (None for vanilla and F)
    info: dict = field(default_factory=dict)        # what the record says about the mask


def check_kept(path: Path, masks: dict[str, torch.Tensor], p: float) -> None:
    """A cached fixed mask keeps exactly round(p * N) of its N entries (selection.kept_count), as
    every mask childtune writes does; any other count means the file was altered."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if kept != selection.kept_count(p, total):
        raise UserError(f"mask cache entry {path} keeps {kept} of {total} entries, not "
                        f"round(p * N) = {selection.kept_count(p, total)} for p={p}; delete it and "
                        f"rerun (the mask is recomputed)")


def _fixed_masks(variant: dict, model, fisher_loader, max_grad_norm, seed, progress):
    names = scopes.scope_names(model, variant["scope"], variant.get("k"))
    kind, p = variant["mask"], variant["p"]
    fisher_seed = variant.get("fisher_seed")
    fisher_seed = seed if fisher_seed is None else fisher_seed
    if kind == "random":
        shapes = {n: p_.shape for n, p_ in model.named_parameters() if n in set(names)}
        return selection.random_mask(shapes, p, fisher_seed), {}
    start = time.perf_counter()
    # The Fisher pass draws dropout and shuffling from its own seeded streams, so the training
    # that follows sees the same random stream as a vanilla run with the same seed, and a run
    # that reuses a cached mask the same as one that computes it: the streams of the CPU and
    # of the model's GPUs (manual_seed seeds the GPUs too) are restored afterwards.
    cuda = sorted({q.device.index or 0 for q in model.parameters() if q.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(fisher_seed)
        fisher = fisher_information(model, fisher_loader(fisher_seed), names,
                                    max_grad_norm=max_grad_norm, progress=progress,
                                    mode=variant["fisher_mode"])
    seconds = time.perf_counter() - start
    if variant.get("count") == "official":
        selected = selection.percentile_mask(fisher, p, largest=kind == "fisher_top")
    else:
        pick = selection.top_p_mask if kind == "fisher_top" else selection.bottom_p_mask
        selected = pick(fisher, p)
    summary = {"fisher_seconds": seconds, **fisher_statistics(fisher)}
    return selected, summary


def build(variant: dict, model, *, fisher_loader, max_grad_norm: float | None, seed: int,
          cache_dir: Path | None, cache_parts: dict, progress: bool = False) -> ChildNetwork:
    """`fisher_loader(seed)` makes the Fisher pass's loader; `cache_parts` is what, besides the
    variant, the mask depends on (model, task, data, batch size)."""
    kind = variant["mask"]
    if kind == "none":
        return ChildNetwork(info={"kind": "none"})
    if kind == "bernoulli":
        named = [(n, q) for n, q in model.named_parameters()
                 if n in set(scopes.scope_names(model, variant["scope"]))]
        # draw_bits: 16 since issue 15; configs without the key (older records) drew 32 bits
        bits = variant.get("draw_bits") or 32
        return ChildNetwork(masker=ChildTuningF(named, variant["p"], seed=seed, bits=bits),
                            info={"kind": kind, "p": variant["p"], "scope": variant["scope"],
                                  "draw_bits": bits})
    # top_k's child network; with variant.k, the fixed mask below replaces its in-scope entries
    top_layers = _top_layers(model, variant["k"]) if variant.get("k") is not None else {}
    if kind == "top_layers":
        return fixed_child(variant, model, top_layers, {})

    key_parts = mask_cache.key_parts(variant, cache_parts, seed, max_grad_norm)
    key = mask_cache.key(key_parts)
    path = mask_cache.path(cache_dir, key) if cache_dir else None
    if path is not None and path.is_file():
        masks, meta = mask_cache.load(path, model)
        check_kept(path, masks, variant["p"])
        info = {"source": "reused", "fisher_seconds": 0.0, "computed_fisher_seconds":
                meta.get("fisher_seconds"),
                **{k: meta[k] for k in STATISTICS if k in meta}}
    else:
        masks, summary = _fixed_masks(variant, model, fisher_loader, max_grad_norm, seed, progress)
        if path is not None:
            mask_cache.save(path, masks, {"key_parts": key_parts, **summary})
        info = {"source": "computed", "fisher_seconds": 0.0, **summary}
    return fixed_child(variant, model, {**top_layers, **masks}, {**info, "cache_key": key})


def _top_layers(model, k: int) -> dict[str, torch.Tensor]:
    try:
        return scopes.top_layers_mask(model, k)
    except ValueError as exc:
        raise UserError(f"variant.{exc}; pass a smaller variant.k") from None


def fixed_child(variant: dict, model, masks: dict[str, torch.Tensor], info: dict) -> ChildNetwork:
    """The child network of a fixed mask (D, random, lowest-Fisher, prune, top_k) given its
    masks."""
    masker = ChildTuningD(model, masks, freeze_exactly=not variant.get("decay_frozen", True))
    info.update({"kind": variant["mask"], "p": variant.get("p"), "scope": variant.get("scope"),
                 **({"k": variant["k"]} if variant.get("k") is not None else {}),
                 "statistics": scopes.mask_statistics(masks, model),
                 "sha256": digest(masks.values())})  # the digest DDP's masks_sha256 uses
    return ChildNetwork(masker=masker, masks=masks, info=info)


def parameter_counts(model, child: ChildNetwork) -> dict:
    """Parameter entries: all of them, the trainable ones and, where a mask exists, the child
    network's size: the trainable entries a fixed mask lets the gradient reach (the rest of its
    scope moves by weight decay alone, or not at all); for CT_F, whose mask is new every step,
    the expected size of a step's child network (p of its scope, plus what lies outside it)."""
    params = dict(model.named_parameters())
    trainable = sum(q.numel() for q in params.values() if q.requires_grad)
    out = {"total": sum(q.numel() for q in params.values()), "trainable": trainable}
    if child.masks is not None:
        masks = {n: m for n, m in child.masks.items() if params[n].requires_grad}
        scope = sum(m.numel() for m in masks.values())
        out |= {"masked_scope": scope,
                "child": trainable - scope + sum(int(m.sum()) for m in masks.values())}
    elif isinstance(child.masker, ChildTuningF):
        scope = sum(q.numel() for q in child.masker.params)
        out |= {"masked_scope": scope,
                "child_expected": round(trainable - scope + child.masker.p * scope)}
    return out
