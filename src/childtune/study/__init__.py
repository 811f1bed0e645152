"""The study layer: from the run records to plans, tables, figures and uploads.

    plan, progress  which runs a study needs, which are done, how long the rest takes
                    (`python -m childtune.plan`)
    aggregate       every study's tables and figures from the records (`python -m
                    childtune.aggregate`); readme: the README's table blocks
    tables          a study's tables; evidence: paired tests, reference rows, chosen rates
    figures         the figures; record_plots: the notebook's plots of single records
    wandb_tables    the tables as a Weights & Biases run
    cli             the key=value command lines of these commands

Reads records only: never imports torch, transformers, the run layer or the method layer, not
even through the shared modules it imports (tests/test_layers.py)."""
