"""childtune: a reproduction suite for Child-Tuning (Xu et al., EMNLP 2021).

The public API works in any torch training loop or with the HF Trainer:

    from childtune import ChildTuningD, ChildTuningF, fisher_information, top_p_mask
"""
from .fisher import fisher_information
from .masks import (ChildTuningD, ChildTuningF, bottom_p_mask, encoder_layer_names,
                    mask_statistics, prune_, random_mask, top_p_mask)

__all__ = ["ChildTuningD", "ChildTuningF", "bottom_p_mask", "encoder_layer_names",
           "fisher_information", "mask_statistics", "prune_", "random_mask", "top_p_mask"]
__version__ = "0.1.0"
