"""The run layer: one (model, task, variant, seed) -> one run record.

    train           the entry logic (`python -m childtune.train`): composes the steps below
    validate        the one validation pass; guard: failure records and exit codes
    data, tokens    task data -> tokenized splits and loaders; the token cache
    tasks, models   the task table; tokenizers and models
    loop, optim     the training loop and evaluation; optimizers and schedules
    metrics         the task metrics
    distributed     DDP: one child network on every rank
    transfer, prune task/domain transfer; the prune ablation's kept CT_D model
    reference_rows  the tables' reference rows (nothing trained)
    memory          the allocator setting of a run
    sweep, launcher a multirun's reports; the parallel launcher

Uses the method layer and the shared top-level modules; never imports the study layer
(tests/test_layers.py)."""
