"""The method layer: Child-Tuning itself, usable in any torch training loop or with the HF
Trainer, without Hydra (the public API, `from childtune import ...`, names its objects).

    masks         the maskers (CT_F per step, fixed masks for CT_D / random / lowest / top_k)
                  and pruning by a mask
    selection     exact top-p / bottom-p / percentile / random selection of mask entries
    scopes        which parameters a mask covers (encoder layers, top k layers); mask statistics
    fisher        the Fisher pass of CT_D and the statistics a record keeps of it
    variants      a `variant` config -> a child network (reads mask_kinds, uses mask_cache)
    regularizers  the prior methods (pretrained decay, mixout, RecAdam, R3F)
    batches, chunking, digest   what a batch is; the chunk length of the kernels; tensor digests

Never imports the run or study layer, Hydra, the records or the tables (tests/test_layers.py)."""
