"""childtune: a reproduction suite for Child-Tuning (Xu et al., EMNLP 2021).

The public API works in any torch training loop or with the HF Trainer:

    from childtune import ChildTuningD, ChildTuningF, fisher_information, top_p_mask

The names load on first use, so torch-free modules (records, plan, aggregate, tables) can be
imported without torch."""
from importlib import import_module

_PUBLIC = {"fisher_information": "method.fisher",
           **{name: "method.masks" for name in ("ChildTuningD", "ChildTuningF", "prune_")},
           **{name: "method.selection" for name in ("bottom_p_mask", "percentile_mask",
                                                    "random_mask", "top_p_mask")},
           **{name: "method.scopes" for name in ("encoder_layer_names", "mask_statistics")}}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
