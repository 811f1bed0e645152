"""Task data: a local GLUE-layout directory or the Hugging Face hub -> tokenized splits.

Both sources produce the same `Split` (texts and label ids). `load_splits` reads, subsamples the
training set reproducibly (`n_train`), and `make_loader` batches with dynamic padding. The
tokenized features are cached by tokens.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tasks import Task
from ..errors import UserError

DATA_DIR_ENV = "CHILDTUNE_DATA_DIR"


@dataclass
class Split:
    texts: list[tuple[str, ...]]   # one tuple of 1 or 2 texts per example
    labels: list[float] | list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Split":
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


def fingerprint(split: Split) -> str:
    """sha256 over the examples' texts and labels, in order: equal fingerprints, equal data.
    (Tokenization and truncation are not in it: they are settings of the run.)"""
    digest = hashlib.sha256()
    for texts, label in zip(split.texts, split.labels):
        digest.update(json.dumps([list(texts), label], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def describe(task: Task, data_dir: Path | None, splits: dict[str, Split]) -> dict:
    """What a record says of its data: each split's file (relative to the data directory),
    content fingerprint and size; never the machine's path."""
    return {"files": {name: source_file(task, data_dir, name) for name in splits},
            "sha256": {name: fingerprint(split) for name, split in splits.items()},
            "sizes": {name: len(split) for name, split in splits.items()}}


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


def source_file(task: Task, data_dir: Path | None, split: str) -> str:
    """The file a split is read from, relative to the data directory (`glue/RTE/train.tsv`), or
    `hub:<path>/<name>:<split>`; raises if the local file is missing."""
    if data_dir is None:
        return f"hub:{task.hub_path}/{task.hub_name or ''}:{task.hub_splits[split]}"
    spec = task.local
    tsv = f"{spec.folder}/{spec.files[split]}"
    if (data_dir / tsv).is_file():
        return tsv
    if spec.parquet_fallback:
        parquet = f"{spec.parquet_fallback}/glue-{task.hub_splits[split]}.parquet"
        if (data_dir / parquet).is_file():
            return parquet
    raise UserError(f"task {task.name!r} needs {data_dir / tsv}, which is missing under data "
                    f"directory {data_dir}; point {DATA_DIR_ENV} (or data.dir) at a folder that "
                    f"has it")


def read_local(task: Task, data_dir: Path, split: str) -> Split:
    name = source_file(task, data_dir, split)
    if name.endswith(".parquet"):
        return _read_parquet(task, data_dir / name)
    path = data_dir / name
    try:
        return _read_tsv(task, path, task.local.split_values.get(split))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason}: byte "
                        f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None


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
    """Tokenized examples (no padding); items are indices, batches are padded by `collate`
    on the tokenizer's side with its pad ids. `features` (from `tokens.cached_features`) skips the
    tokenizer; they are what it would return."""

    def __init__(self, split: Split, tokenizer, max_seq_length: int, regression: bool,
                 features: list[dict] | None = None):
        self.features = features if features is not None else tokenize(split, tokenizer,
                                                                        max_seq_length)
        self.labels = torch.tensor(split.labels, dtype=torch.float if regression else torch.long)
        # as the tokenizer pads: XLNet's on the left (its head reads the last token)
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0,
                           "token_type_ids": tokenizer.pad_token_type_id}
        self.pad_left = tokenizer.padding_side == "left"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> list[int]:
        """Tokens per example (before padding)."""
        return [len(f["input_ids"]) for f in self.features]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        longest = max(len(self.features[i]["input_ids"]) for i in indices)
        batch = {}
        for key in self.features[indices[0]]:
            pad = self.pad_values.get(key, 0)
            batch[key] = torch.tensor([self._padded(f[key], [pad] * (longest - len(f[key])))
                                       for f in (self.features[i] for i in indices)])
        batch["labels"] = self.labels[indices]
        batch["idx"] = torch.tensor(indices)
        return batch

    def _padded(self, values: list[int], padding: list[int]) -> list[int]:
        return padding + values if self.pad_left else values + padding


def tokenize(split: Split, tokenizer, max_seq_length: int) -> list[dict]:
    """One dict of token lists (input_ids, attention_mask, ...) per example, unpadded."""
    columns = list(zip(*split.texts))
    enc = tokenizer(*columns, truncation=True, max_length=max_seq_length)
    return [{k: enc[k][i] for k in enc.keys()} for i in range(len(split))]


def make_loader(encoded: Encoded, batch_size: int, shuffle_seed: int | None,
                group_by_length: bool = False):
    """Shuffled with its own generator when shuffle_seed is given: the batch order then depends
    on that seed only, never on how much of the global random stream something else consumed.
    `group_by_length`: batches of similar lengths, in HF's order (`length_grouped_indices`)."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    if group_by_length:
        if generator is None:
            raise ValueError("group_by_length needs a shuffle seed")
        sampler = LengthGroupedSampler(encoded.lengths(), batch_size, generator)
        return torch.utils.data.DataLoader(encoded, batch_size=batch_size, sampler=sampler,
                                           generator=generator, collate_fn=encoded.collate)
    return torch.utils.data.DataLoader(encoded, batch_size=batch_size,
                                       shuffle=shuffle_seed is not None, generator=generator,
                                       collate_fn=encoded.collate)


# ---------------------------------------------------------------- throughput: grouped batches,
# sorted evaluation, the tokenization cache (none of them changes a prediction)

def length_grouped_indices(lengths: list[int], batch_size: int,
                           generator: torch.Generator) -> list[int]:
    """HF's `get_length_grouped_indices` (transformers 4.x-5.x, default mega-batch size): a
    permutation from `generator` (`torch.randperm`, as the random batches draw theirs), cut
    into mega-batches of min(50, n // (4 * batch_size)) (at least 1) batches, each sorted by
    length, longest first (a stable sort: ties keep the permutation's order); then the longest
    example overall swaps places with the first one, so the longest batch comes first."""
    mult = max(1, min(len(lengths) // (batch_size * 4), 50))
    size = mult * batch_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megas = [sorted(order[i:i + size], key=lambda j: lengths[j], reverse=True)
             for i in range(0, len(order), size)]
    longest = max(range(len(megas)), key=lambda m: (lengths[megas[m][0]], -m))  # first maximum
    megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [i for mega in megas for i in mega]


class LengthGroupedSampler(torch.utils.data.Sampler):
    """`length_grouped_indices` anew each epoch, from one generator. Given to the DataLoader too
    (which draws a worker seed from it per epoch, as for random batches), so the first epoch
    regroups exactly the permutation random batches of the same seed use (later epochs differ:
    torch's RandomSampler draws one more, empty, permutation per epoch), and the global random
    stream (dropout) is untouched."""

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        # lazily, at the first batch, as RandomSampler: after the DataLoader's own draw
        yield from length_grouped_indices(self.lengths, self.batch_size, self.generator)


def make_eval_loader(encoded: Encoded, batch_size: int):
    """Evaluation batches sorted by length, longest first (less padding). `loop.predict` puts
    the predictions back in the split's order by each batch's `idx`."""
    lengths = encoded.lengths()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return torch.utils.data.DataLoader(encoded, batch_size=batch_size, sampler=order,
                                       collate_fn=encoded.collate)
