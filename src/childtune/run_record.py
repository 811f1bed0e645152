"""The run record's type: one builder, one reader, and the accessors readers look things up by.

A record is the JSON object one run leaves under results/runs/ (records.py: its path, the
atomic write, reading it back). `Sections` is its schema: every top-level key a record may
hold. `build` is the one builder (train's runs, reference rows, failure records, the tests'
fake records); `RunRecord.from_json` the one reader (records.read_record). A reader asks the
record (`record.headline`, `record.metric(split, name)`, `record.train_curve`, ...) instead of
walking its dicts.

A RunRecord holds the JSON object as written (`to_json`), so every record on disk reads as it
is: keys this code does not know are kept, and a section a record lacks (records written
before it existed have no history, eval_loss or parameters) reads as absent (None, or an empty
dict for the sections readers iterate), never as an error.

Schema version (the `schema` key): SCHEMA is the version this code writes; a record without
the key is version 1. The version goes up only when a key is renamed or removed or changes
meaning (and the reader then learns to read both); adding a section keeps the version (older
readers keep it unread). A record of a newer version than SCHEMA is refused (records.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

SCHEMA = 1
STATUSES = ("success", "failed")


class Identity(TypedDict):
    """What names a run (records.identity): what tables group by. `regularizer` is absent
    from records written before the regularizers existed."""
    study: str
    model: str
    task: str
    variant: str
    p: float | None
    seed: int
    n_train: int | None
    lr: float | None
    regularizer: str
    config_hash: str


class Train(TypedDict, total=False):
    steps: int
    skipped_steps: int          # absent from early records (none skipped)
    examples: int
    last_loss: float
    batch_order_sha256: str
    warmup_steps: int


class Timings(TypedDict, total=False):
    train_seconds: float
    eval_seconds: float
    fisher_seconds: float
    train_examples_per_s: float | None


class Sections(TypedDict, total=False):
    """Every top-level key of a record (success: `status: success`; failure: `failed`)."""
    schema: int                 # absent: version 1
    status: str                 # one of STATUSES
    identity: Identity
    config: dict                # the resolved config
    # a success record
    headline: dict              # {metric, split, value}: the task's headline score
    metrics: dict               # split -> metric -> value (null: not computable)
    eval_loss: dict             # split -> mean loss
    metrics_before_prune: dict  # prune runs: split -> metric -> value before zeroing
    prune: dict                 # prune runs: where the model came from (prune.summary)
    reference: dict             # reference rows: row -> split -> {metrics, prediction, share}
    mask: dict                  # the child network: kind, p, statistics, cache_key, ...
    parameters: dict            # entry counts: total, trainable, child, ...
    history: dict               # per-step train curve, eval curve (trainer.eval_every)
    regularizer: dict           # name and hyper-parameters
    distributed: dict           # torchrun: world size, digests of the ranks' parameters
    train: Train
    timings: Timings
    transfer: dict              # task / domain transfer: source run, accuracy on other tasks
    data: dict                  # the data by file name and content: files, sha256, sizes
    logger: dict | None         # the logger run (wandb), None without one
    environment: dict           # versions, git commit, machine
    command: str                # the command line that reruns it
    finished_at: str
    # a failure record
    reason: str                 # diverged, not_finite, out_of_memory, exception, ...
    error: str
    traceback: list
    failed_at: str


SECTIONS = frozenset(Sections.__annotations__)


@dataclass(frozen=True)
class Headline:
    metric: str
    split: str
    value: float | None


def _known(sections: dict) -> dict:
    unknown = sorted(set(sections) - SECTIONS | set(sections) & {"schema"})
    if unknown:
        raise TypeError(f"not a record section: {', '.join(unknown)} (declare new sections in "
                        f"run_record.Sections; the builder writes the schema version)")
    return sections


def build(status: str, identity: Identity, config: dict, *,
          headline: tuple[str, str] | None = None, **sections) -> RunRecord:
    """The one builder of a record. `headline`: the (metric, split) of the task's headline
    score, its value read from `sections["metrics"]`; `sections`: the record's other keys
    (Sections). A section given as None is written as null; one not given is absent."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    raw = {"schema": SCHEMA, "status": status, "identity": identity, "config": config,
           **_known(sections)}
    if headline is not None:
        metric, split = headline
        raw["headline"] = {"metric": metric, "split": split,
                           "value": sections["metrics"][split][metric]}
    return RunRecord(raw)


@dataclass(frozen=True)
class RunRecord:
    raw: dict                   # the JSON object, as written or read
    path: str | None = None     # where records.read_records found it (relative to results_dir)

    @classmethod
    def from_json(cls, raw, path: str | None = None) -> RunRecord:
        """The one reader of a record's JSON object (ValueError: not a record)."""
        if not isinstance(raw, dict) or "status" not in raw:
            raise ValueError("no 'status' field")
        if not isinstance(raw.get("identity"), dict):
            raise ValueError("no 'identity' field")
        return cls(raw, path)

    def to_json(self) -> dict:
        return dict(self.raw)

    def adding(self, **sections) -> RunRecord:
        """The record with these sections added (or replaced)."""
        return RunRecord({**self.raw, **_known(sections)}, self.path)

    # ------------------------------------------------------------ what every record has

    @property
    def schema(self) -> int:
        return self.raw.get("schema", 1)

    @property
    def status(self) -> str:
        return self.raw["status"]

    @property
    def succeeded(self) -> bool:
        return self.raw["status"] == "success"

    @property
    def identity(self) -> Identity:
        return self.raw["identity"]

    @property
    def config(self) -> dict:
        return self.raw.get("config") or {}

    def setting(self, dotted: str):
        """A value of the resolved config by its dotted key (`runtime.cache_dir`), None when
        the config has no such key."""
        value: Any = self.config
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def has(self, section: str) -> bool:
        return section in self.raw

    def section(self, name: str):
        """A section as written (None when absent)."""
        return self.raw.get(name)

    @property
    def environment(self) -> dict:
        """Versions, git commit and machine ({} when absent)."""
        return self.raw.get("environment") or {}

    @property
    def command(self) -> str | None:
        return self.raw.get("command")

    @property
    def finished_at(self) -> str | None:
        return self.raw.get("finished_at")

    @property
    def reason(self) -> str | None:
        """Why a failed run failed (diverged, not_finite, out_of_memory, exception, ...)."""
        return self.raw.get("reason")

    @property
    def error(self) -> str | None:
        return self.raw.get("error")

    # ------------------------------------------------------------ scores

    @property
    def headline(self) -> Headline | None:
        """The task's headline score (None in a failure record)."""
        h = self.raw.get("headline")
        return None if h is None else Headline(h["metric"], h["split"], h.get("value"))

    @property
    def metrics(self) -> dict[str, dict]:
        """split -> metric -> value ({} when absent)."""
        return self.raw.get("metrics") or {}

    @property
    def metrics_before_prune(self) -> dict[str, dict]:
        return self.raw.get("metrics_before_prune") or {}

    @property
    def eval_loss(self) -> dict[str, float | None]:
        return self.raw.get("eval_loss") or {}

    def metric(self, split: str, name: str, before_prune: bool = False) -> float | None:
        """One score (a prune run's before pruning, with `before_prune`); None if absent."""
        by_split = self.metrics_before_prune if before_prune else self.metrics
        return (by_split.get(split) or {}).get(name)

    def headline_value(self, before_prune: bool = False) -> float | None:
        h = self.headline
        if h is None:
            return None
        return self.metric(h.split, h.metric, before_prune=True) if before_prune else h.value

    def transfer_accuracy(self, task: str) -> float | None:
        """Domain transfer: the accuracy on another task (None when not evaluated on it)."""
        evals = (self.raw.get("transfer") or {}).get("eval") or {}
        return (evals.get(task) or {}).get("accuracy")

    @property
    def reference(self) -> dict:
        """Reference rows: row name -> split -> its entry ({} for a run)."""
        return self.raw.get("reference") or {}

    def reference_row(self, row: str, split: str) -> dict | None:
        """A reference row on one split: {metrics, prediction, share (classification)}."""
        return (self.reference.get(row) or {}).get(split)

    def split_size(self, split: str) -> int | None:
        return ((self.raw.get("data") or {}).get("sizes") or {}).get(split)

    # ------------------------------------------------------------ the child network

    @property
    def mask(self) -> dict:
        return self.raw.get("mask") or {}

    @property
    def mask_cache_key(self) -> str | None:
        return self.mask.get("cache_key")

    @property
    def kept_per_layer(self) -> dict[str, float] | None:
        """Layer -> kept fraction of a fixed mask (None without mask statistics)."""
        return (self.mask.get("statistics") or {}).get("per_layer")

    @property
    def fisher_histogram(self) -> dict | None:
        """{counts, edges, zeros} of log10 Fisher (None without one)."""
        return self.mask.get("fisher_log10_histogram")

    # ------------------------------------------------------------ training

    @property
    def train(self) -> Train:
        return self.raw.get("train") or {}

    @property
    def timings(self) -> Timings:
        return self.raw.get("timings") or {}

    @property
    def train_curve(self) -> dict | None:
        """Per optimizer step: {loss: [...], lr: [...]} (None in records without history)."""
        return (self.raw.get("history") or {}).get("train")

    @property
    def eval_curve(self) -> dict | None:
        """Evaluations every trainer.eval_every steps: {step: [...], split: {metric: [...]}}."""
        return (self.raw.get("history") or {}).get("eval")

    @property
    def headline_curve(self) -> tuple[list, list] | None:
        """(steps, headline values) of the eval curve, None without one."""
        curve, h = self.eval_curve, self.headline
        values = ((curve or {}).get(h.split) or {}).get(h.metric) if h else None
        return (curve["step"], values) if values else None

    @property
    def logger(self) -> dict | None:
        return self.raw.get("logger")
