"""One run's objects in one place. train.run fills a RunContext step by step (steps.py) and
hands it to the hooks at their points (hooks.py), which read and set its fields."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loop
from .hooks import Hooks
from .tasks import Task


@dataclass
class RunContext:
    # what the run is
    cfg: Any                        # the composed config (DictConfig)
    config: dict                    # the same, resolved: what the identity and record hold
    ident: dict                     # records.identity(config)
    task: Task
    hooks: Hooks                    # transfer, prune, DDP: those the config asks for
    progress: bool = False          # progress bars (a single run only)
    # the data (steps.load_data)
    data_dir: Path | None = None
    data_info: dict | None = None   # the record's `data`: files, sha256, sizes
    tokenizer: Any = None
    encoded: dict = field(default_factory=dict)   # split name -> data.Encoded
    # the model and what trains it
    model: Any = None               # the model (steps.load_model)
    module: Any = None              # what the loop trains: the model, or DDP's wrapper of it
    mask_cache_parts: dict = field(default_factory=dict)  # more that a fixed mask depends on
    child: Any = None               # variants.ChildNetwork (steps.build_child)
    regularizer: Any = None         # regularizers.Regularizer
    train_loader: Any = None        # steps.make_loaders
    eval_loaders: dict = field(default_factory=dict)
    total_steps: int = 0            # steps.build_optimizer
    warmup: int = 0
    optimizer: Any = None
    scheduler: Any = None
    logger: Any = None              # steps.open_logger
    precision: Any = None           # loop.Precision (steps.train)
    # what the run found
    trained: dict | None = None     # loop.train's summary (or prune's kept model's)
    curve: loop.EvalCurve = field(default_factory=loop.EvalCurve)  # trainer.eval_every
    in_sync: dict = field(default_factory=dict)  # DDP: the record's `distributed`
    result: dict | None = None      # metrics, eval_loss (prune: also before pruning)
    eval_seconds: float = 0.0

    @property
    def cache_dir(self) -> Path | None:
        """runtime.cache_dir: the token, mask, model and encoder caches (None: no caching)."""
        return Path(self.cfg.runtime.cache_dir) if self.cfg.runtime.cache_dir else None

    @property
    def writes(self) -> bool:
        """Whether this process writes the record and logs (every hook agrees: DDP rank 0)."""
        return self.hooks.all("writes", self)

    def evaluate(self) -> tuple[dict, dict, float]:
        """Metrics and mean loss per eval split of the model as it is, and the seconds."""
        return loop.evaluate(self.model, self.eval_loaders, self.task.is_regression,
                             self.task.metrics, self.precision, self.progress)
