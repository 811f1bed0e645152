"""The mask kinds (`variant.mask`), one row each: what every part of the suite that builds,
checks, shares, keeps or plans a child network reads (torch-free, so the study side can too).

    none           no mask (vanilla)
    bernoulli      CT_F: a fresh Bernoulli(p) mask every step
    fisher_top     CT_D: the top-p Fisher entries, fixed
    fisher_bottom  the bottom-p Fisher entries, fixed (lowest_fisher)
    random         a fixed random mask of D's size and scope
    top_layers     the top k encoder layers, the pooler and the head (top_k)

How each kind is built: method/variants.py."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaskKind:
    name: str
    fixed: bool = False          # one mask for the whole run (built once; rank 0's under DDP)
    cached: bool = False         # kept in the mask cache (mask_cache.py), reused by later runs
    fisher: bool = False         # chosen by a Fisher pass (variant.fisher_*, variant.count)
    sized: bool = False          # keeps the fraction variant.p of variant.scope
    layer_limited: bool = False  # variant.k limits it to the top k encoder layers


KINDS = {kind.name: kind for kind in (
    MaskKind("none"),
    MaskKind("bernoulli", sized=True),
    MaskKind("fisher_top", fixed=True, cached=True, fisher=True, sized=True, layer_limited=True),
    MaskKind("fisher_bottom", fixed=True, cached=True, fisher=True, sized=True,
             layer_limited=True),
    MaskKind("random", fixed=True, cached=True, sized=True, layer_limited=True),
    MaskKind("top_layers", fixed=True, layer_limited=True),
)}
CT_D = "fisher_top"  # the kind whose trained model the prune ablation prunes (run/prune.py)

NAMES = tuple(KINDS)
FIXED = tuple(name for name, kind in KINDS.items() if kind.fixed)
CACHED = tuple(name for name, kind in KINDS.items() if kind.cached)
FISHER = tuple(name for name, kind in KINDS.items() if kind.fisher)
SIZED = tuple(name for name, kind in KINDS.items() if kind.sized)
LAYER_LIMITED = tuple(name for name, kind in KINDS.items() if kind.layer_limited)
