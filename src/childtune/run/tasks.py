"""The one table of tasks: text columns, labels, metrics, headline metric, eval splits, files.

Local files follow the standard GLUE layout under the data directory. Column positions are
0-based indices into each TSV row (negative counts from the end), as in the GLUE processors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


@dataclass(frozen=True)
class LocalFiles:
    """Where a task's splits live under the data directory and how to parse them."""

    folder: str                       # e.g. "glue/RTE"
    files: dict[str, str]             # split -> file name ("train" -> "train.tsv")
    text_columns: tuple[int, ...]     # one or two text columns
    label_column: int
    header: bool = True
    split_column: int | None = None   # SICK: one file, split named in a column
    split_values: dict[str, str] = field(default_factory=dict)  # split -> value in split_column
    parquet_fallback: str | None = None  # "hf_parquet/glue/wnli": glue-<hub split>.parquet


@dataclass(frozen=True)
class Task:
    name: str
    text_keys: tuple[str, ...]          # hub column names (HF run_glue's task_to_keys)
    labels: tuple[str, ...] | None      # label names in id order; None = regression
    metrics: tuple[str, ...]
    headline: str                       # metric reported in tables
    eval_splits: tuple[str, ...]        # evaluated with the last checkpoint
    local: LocalFiles
    hub_path: str = "nyu-mll/glue"
    hub_name: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


def _glue(folder, text_columns, label_column, eval_splits=("dev",), header=True, **extra):
    files = {"train": "train.tsv", **{s: f"{s}.tsv" for s in eval_splits}}
    return LocalFiles(folder=folder, files=files, text_columns=text_columns,
                      label_column=label_column, header=header, **extra)


_HUB_DEV = {"train": "train", "dev": "validation"}

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", ("sentence",), ("0", "1"), ("mcc",), "mcc", ("dev",),
         _glue("glue/CoLA", (3,), 1, header=False), hub_name="cola", hub_splits=_HUB_DEV),
    Task("sst2", ("sentence",), ("0", "1"), ("accuracy",), "accuracy", ("dev",),
         _glue("glue/SST-2", (0,), 1), hub_name="sst2", hub_splits=_HUB_DEV),
    Task("mrpc", ("sentence1", "sentence2"), ("0", "1"), ("accuracy", "f1"), "f1", ("dev",),
         _glue("glue/MRPC", (3, 4), 0), hub_name="mrpc", hub_splits=_HUB_DEV),
    Task("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"), "pearson", ("dev",),
         _glue("glue/STS-B", (7, 8), 9), hub_name="stsb", hub_splits=_HUB_DEV),
    Task("qqp", ("question1", "question2"), ("0", "1"), ("accuracy", "f1"), "accuracy", ("dev",),
         _glue("glue/QQP", (3, 4), 5), hub_name="qqp", hub_splits=_HUB_DEV),
    Task("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
         ("accuracy",), "accuracy", ("dev_matched", "dev_mismatched"),
         _glue("glue/MNLI", (8, 9), -1, eval_splits=("dev_matched", "dev_mismatched")),
         hub_name="mnli",
         hub_splits={"train": "train", "dev_matched": "validation_matched",
                     "dev_mismatched": "validation_mismatched"}),
    Task("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
         "accuracy", ("dev",), _glue("glue/QNLI", (1, 2), 3), hub_name="qnli",
         hub_splits=_HUB_DEV),
    Task("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
         "accuracy", ("dev",), _glue("glue/RTE", (1, 2), 3), hub_name="rte",
         hub_splits=_HUB_DEV),
    Task("wnli", ("sentence1", "sentence2"), ("0", "1"), ("accuracy",), "accuracy", ("dev",),
         _glue("glue/WNLI", (1, 2), 3, parquet_fallback="hf_parquet/glue/wnli"),
         hub_name="wnli", hub_splits=_HUB_DEV),
    # SICK (Marelli et al. 2014): 3-way entailment, MNLI's label order; TRIAL is its dev split.
    Task("sick", ("sentence_A", "sentence_B"), ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),
         ("accuracy",), "accuracy", ("dev", "test"),
         LocalFiles(folder="nli/SICK",
                    files={"train": "SICK.txt", "dev": "SICK.txt", "test": "SICK.txt"},
                    text_columns=(1, 2), label_column=3, split_column=-1,
                    split_values={"train": "TRAIN", "dev": "TRIAL", "test": "TEST"}),
         hub_path="RobZamp/sick", hub_name=None,
         hub_splits={"train": "train", "dev": "validation", "test": "test"}),
]}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None
