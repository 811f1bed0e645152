"""Reference rows for the tables, not fine-tuning runs (variant=reference, nothing trained).

Per task, on each eval split:
- the majority class: the dev set's most frequent label predicted for every example (the best
  constant prediction on that split, ties to the lower label id), scored with the task's own
  metrics. CoLA's MCC is 0 by construction, MRPC's F1 is that of calling every pair a
  paraphrase. For a regression task a constant prediction has no correlation with anything:
  its Pearson/Spearman are undefined and recorded as null;
- for a regression task (STS-B, a sentence-pair similarity), the zero-shot cosine similarity:
  each sentence embedded by the pretrained model with no training (mean of the last hidden
  states over the tokens, as sentence-transformers pools all-MiniLM-L6-v2), the cosine of the
  two embeddings scored against the gold scores with the task's metrics.

The record is written by `python -m childtune.train` like any run's; its `metrics` and
`headline` are the majority class's, `reference` holds both rows."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from . import data, models
from .metrics import compute
from ..records import RunRecord, build

POOLING = "mean over tokens of the last hidden states (attention-masked)"


def majority_class(task, split) -> dict:
    """The best constant prediction on this split, and its metrics (null when undefined)."""
    if task.is_regression:
        return {"prediction": float(np.mean(split.labels)),
                "metrics": {name: None for name in task.metrics},
                "note": "constant predictions: correlation undefined"}
    counts = Counter(split.labels)
    label = max(sorted(counts), key=lambda k: counts[k])
    metrics = compute(task.metrics, [label] * len(split), split.labels)
    return {"prediction": task.labels[label], "share": counts[label] / len(split),
            "metrics": metrics}


@torch.no_grad()
def _embed(encoder, tokenizer, sentences: list[str], max_len: int, batch: int) -> torch.Tensor:
    out = []
    for start in range(0, len(sentences), batch):
        enc = tokenizer(sentences[start:start + batch], truncation=True, max_length=max_len,
                        padding=True, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def zero_shot_cosine(encoder, tokenizer, split, task, max_len: int, batch: int = 64) -> dict:
    """The pretrained sentence embeddings' cosine similarity, scored as the task's predictions."""
    first, second = ([t[i] for t in split.texts] for i in (0, 1))
    cosine = torch.nn.functional.cosine_similarity(
        _embed(encoder, tokenizer, first, max_len, batch),
        _embed(encoder, tokenizer, second, max_len, batch))
    return {"pooling": POOLING, "metrics": compute(task.metrics, cosine.numpy(), split.labels)}


def evaluate(cfg, task, splits: dict) -> dict:
    """Both reference rows for every eval split of the task (zero-shot: pair regression only)."""
    rows = {"majority_class": {name: majority_class(task, splits[name])
                               for name in task.eval_splits}}
    if task.is_regression and len(task.text_keys) == 2:
        tokenizer = models.load_tokenizer(cfg.model)
        encoder = models.load_model(cfg.model, task.num_labels).base_model.eval()
        rows["zero_shot_cosine"] = {
            name: zero_shot_cosine(encoder, tokenizer, splits[name], task,
                                   cfg.data.max_seq_length) for name in task.eval_splits}
    return rows


def record(cfg, config: dict, ident: dict, task) -> RunRecord:
    """The reference run's record (the caller adds environment, command and finished_at)."""
    data_dir = data.resolve_data_dir(cfg.data.dir)
    splits = data.load_splits(task, data_dir, None, cfg.data.subsample_seed)
    rows = evaluate(cfg, task, splits)
    metrics = {name: row["metrics"] for name, row in rows["majority_class"].items()}
    return build("success", ident, config, metrics=metrics,
                 headline=(task.headline, task.eval_splits[0]), reference=rows,
                 data=data.describe(task, data_dir, splits))
