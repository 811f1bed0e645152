"""Task data: a local GLUE-layout directory or the Hugging Face hub -> tokenized splits.

Both sources produce the same `Split` (texts and label ids). `load_splits` reads, subsamples the
training set reproducibly (`n_train`), and `make_loader` batches with dynamic padding.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .tasks import Task

DATA_DIR_ENV = "CHILDTUNE_DATA_DIR"


@dataclass
class Split:
    texts: list[tuple[str, ...]]   # one tuple of 1 or 2 texts per example
    labels: list[float] | list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Split":
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


def resolve_data_dir(configured: str | None) -> Path | None:
    """`data.dir` wins, then $CHILDTUNE_DATA_DIR; None means the hub."""
    value = configured or os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"data directory {path} does not exist; set data.dir or "
                        f"{DATA_DIR_ENV} to a folder in the GLUE layout (glue/RTE/train.tsv, ...)")
    return path


# ---------------------------------------------------------------- local files

def _label_id(task: Task, raw: str, where: str):
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise UserError(f"malformed row at {where}: score {raw!r} is not a finite number")
        return score
    if raw not in task.labels:
        raise UserError(f"malformed row at {where}: label {raw!r} not in {list(task.labels)}")
    return task.labels.index(raw)


def _read_tsv(task: Task, path: Path, split_value: str | None) -> Split:
    spec = task.local
    columns = [*spec.text_columns, spec.label_column]
    if spec.split_column is not None:
        columns.append(spec.split_column)
    needed = max(c + 1 if c >= 0 else -c for c in columns)
    texts, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_no, row in enumerate(rows, start=1):
            if (spec.header and line_no == 1) or not row:
                continue
            where = f"{path}:{line_no}"
            if len(row) < needed:
                raise UserError(f"malformed row at {where}: {len(row)} tab-separated fields, "
                                f"expected at least {needed}")
            if split_value is not None and row[spec.split_column] != split_value:
                continue
            texts.append(tuple(row[c] for c in spec.text_columns))
            labels.append(_label_id(task, row[spec.label_column], where))
    if not labels:
        raise UserError(f"{path} holds no examples" +
                        (f" for split {split_value!r}" if split_value else ""))
    return Split(texts, labels)


def _read_parquet(task: Task, path: Path) -> Split:
    import pandas as pd

    frame = pd.read_parquet(path)
    texts = list(zip(*(frame[k].astype(str).tolist() for k in task.text_keys)))
    return Split(texts, frame["label"].tolist())


def read_local(task: Task, data_dir: Path, split: str) -> Split:
    spec = task.local
    path = data_dir / spec.folder / spec.files[split]
    if path.is_file():
        try:
            return _read_tsv(task, path, spec.split_values.get(split))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason}: byte "
                            f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None
    if spec.parquet_fallback:
        parquet = data_dir / spec.parquet_fallback / f"glue-{task.hub_splits[split]}.parquet"
        if parquet.is_file():
            return _read_parquet(task, parquet)
    raise UserError(f"task {task.name!r} needs {path}, which is missing under data directory "
                    f"{data_dir}; point {DATA_DIR_ENV} (or data.dir) at a folder that has it")


# ---------------------------------------------------------------- hub

def read_hub(task: Task, split: str) -> Split:
    try:
        import datasets

        ds = datasets.load_dataset(task.hub_path, task.hub_name, split=task.hub_splits[split])
    except Exception as exc:  # any network / hub failure gets the same advice
        raise UserError(f"could not load {task.hub_path}/{task.hub_name or ''} from the Hugging "
                        f"Face hub ({type(exc).__name__}); offline, set {DATA_DIR_ENV} to a local "
                        f"GLUE-layout data directory") from None
    texts = list(zip(*(ds[k] for k in task.text_keys)))
    return Split([tuple(t) for t in texts], list(ds["label"]))


# ---------------------------------------------------------------- splits and batches

def read_split(task: Task, data_dir: Path | None, split: str) -> Split:
    """One split, from the local directory when there is one, else from the hub."""
    return read_local(task, data_dir, split) if data_dir else read_hub(task, split)


def load_splits(task: Task, data_dir: Path | None, n_train: int | None,
                subsample_seed: int) -> dict[str, Split]:
    """Train split (subsampled to n_train if given) and every eval split of the task."""
    splits = {"train": read_split(task, data_dir, "train")}
    if n_train is not None:
        full = len(splits["train"])
        if not 0 < n_train <= full:
            raise UserError(f"data.n_train={n_train} must be between 1 and the training set size "
                            f"{full} for task {task.name!r} (or null for the full set)")
        order = np.random.default_rng(subsample_seed).permutation(full)[:n_train]
        splits["train"] = splits["train"].subset(sorted(order.tolist()))
    for name in task.eval_splits:
        splits[name] = read_split(task, data_dir, name)
    return splits


class Encoded(torch.utils.data.Dataset):
    """Tokenized examples (no padding); items are indices, batches are padded by `collate`."""

    def __init__(self, split: Split, tokenizer, max_seq_length: int, regression: bool):
        columns = list(zip(*split.texts))
        enc = tokenizer(*columns, truncation=True, max_length=max_seq_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(split))]
        self.labels = torch.tensor(split.labels, dtype=torch.float if regression else torch.long)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        longest = max(len(self.features[i]["input_ids"]) for i in indices)
        batch = {}
        for key in self.features[indices[0]]:
            pad = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([f[key] + [pad] * (longest - len(f[key]))
                                       for f in (self.features[i] for i in indices)])
        batch["labels"] = self.labels[indices]
        batch["idx"] = torch.tensor(indices)
        return batch


def make_loader(encoded: Encoded, batch_size: int, shuffle_seed: int | None):
    """Shuffled with its own generator when shuffle_seed is given: the batch order then depends
    on that seed only, never on how much of the global random stream something else consumed."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(encoded, batch_size=batch_size,
                                       shuffle=shuffle_seed is not None, generator=generator,
                                       collate_fn=encoded.collate)
