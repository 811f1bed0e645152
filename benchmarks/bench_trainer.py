"""Question 4: is the project's training loop as fast as the Hugging Face Trainer?

The same model (embedded MiniLM), task (RTE-shaped: 2 labels; real RTE text when the data
directory is set, else random word pieces) and batching (16 examples padded to 64 tokens),
alternating blocks of steps: `childtune.run.loop.train` with the project's AdamW, the HF Trainer
with its default optimizer (`adamw_torch_fused` in transformers 5), the HF Trainer with
`adamw_torch` (the project's optimizer class), and our loop with `AdamW(fused=True)`. Step time = median gap between step ends.

    python benchmarks/bench_trainer.py [--quick] [--threads 1]
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time

import torch

import common

BATCH, LENGTH = 16, 64


class FixedLength(torch.utils.data.Dataset):
    """Examples padded/truncated to LENGTH tokens; items are dicts, collated by stacking."""

    def __init__(self, n: int):
        self.items = _rte_items(n) or _random_items(n)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _random_items(n: int) -> list[dict]:
    batch = common.token_batch(batch_size=n, length=LENGTH, seed=1)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _rte_items(n: int) -> list[dict] | None:
    from childtune.errors import UserError
    from childtune.run import data, models
    from childtune.run.tasks import get_task

    try:
        data_dir = data.resolve_data_dir(None)
        if data_dir is None:
            return None
        split = data.load_splits(get_task("rte"), data_dir, n, 0)["train"]
    except UserError:
        return None
    from omegaconf import OmegaConf

    tokenizer = models.load_tokenizer(OmegaConf.create({"source": "embedded", "path": None}))
    enc = tokenizer(*zip(*split.texts), truncation=True, max_length=LENGTH, padding="max_length",
                    return_tensors="pt")
    labels = torch.tensor(split.labels)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(n)]


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def ours(model, dataset, steps: int, fused: bool = False) -> list[float]:
    from omegaconf import OmegaConf

    from childtune.run import loop, optim

    ends = []
    indexed = lambda items: {**collate(items), "idx": torch.arange(len(items))}  # noqa: E731
    cfg = OmegaConf.create({"optimizer": "adamw_torch", "lr": 5e-5, "weight_decay": 0.01,
                            "adam_betas": [0.9, 0.999], "adam_eps": 1e-8})
    optimizer = (torch.optim.AdamW(optim.param_groups(model, 0.01), lr=5e-5, fused=True)
                 if fused else optim.build_optimizer(model, cfg))
    scheduler = optim.linear_schedule(optimizer, steps, optim.warmup_steps(steps, 0.1))
    subset = torch.utils.data.Subset(dataset, range(steps * BATCH))
    loader = torch.utils.data.DataLoader(subset, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(0),
                                         collate_fn=indexed)
    loop.train(model, loader, optimizer, scheduler, 1, 1.0, progress=False,
               on_step=lambda _: ends.append(time.perf_counter()))
    return [b - a for a, b in zip(ends, ends[1:])]


def hf(model, dataset, steps: int, optim_name: str | None) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    ends = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        extra = {"optim": optim_name} if optim_name else {}
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps,
            learning_rate=5e-5, weight_decay=0.01, warmup_steps=math.ceil(0.1 * steps),
            max_grad_norm=1.0,
            lr_scheduler_type="linear", logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, **extra)
        with contextlib.redirect_stdout(io.StringIO()):   # the Trainer prints its metrics
            Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                    callbacks=[Clock()]).train()
    return [b - a for a, b in zip(ends, ends[1:])]


def run(quick: bool = False, threads: int = 1) -> dict:
    import accelerate

    common.setup(threads)
    model = common.minilm()
    steps, rounds = (3, 1) if quick else (6, 3)
    dataset = FixedLength(steps * BATCH)
    gaps = {"ours": [], "hf_default": []} if quick else {
        "ours": [], "hf_default": [], "hf_adamw_torch": [], "ours_fused": []}
    for r in range(rounds):
        order = list(gaps)[r % len(gaps):] + list(gaps)[:r % len(gaps)]
        for name in order:
            if name.startswith("ours"):
                gaps[name] += ours(model, dataset, steps, fused=name == "ours_fused")
            else:
                gaps[name] += hf(model, dataset, steps,
                                 None if name == "hf_default" else "adamw_torch")
    med = {k: common.median(v) for k, v in gaps.items()}
    keys = {"trainer_throughput_ratio": med["hf_default"] / med["ours"]}
    rows = [["childtune.run.loop.train (project AdamW)", med["ours"] * 1e3, BATCH / med["ours"],
             1.0],
            ["HF Trainer, default optim (adamw_torch_fused)", med["hf_default"] * 1e3,
             BATCH / med["hf_default"], med["hf_default"] / med["ours"]]]
    if not quick:
        keys.update(trainer_throughput_ratio_same_optimizer=med["hf_adamw_torch"] / med["ours"],
                    trainer_throughput_ratio_fused_adamw=med["hf_default"] / med["ours_fused"])
        rows += [["HF Trainer, optim=adamw_torch", med["hf_adamw_torch"] * 1e3,
             BATCH / med["hf_adamw_torch"], med["hf_adamw_torch"] / med["ours"]],
            ["childtune.run.loop.train with AdamW(fused=True)", med["ours_fused"] * 1e3,
             BATCH / med["ours_fused"], med["ours_fused"] / med["ours"]]]
    table = common.markdown_table(["training loop (16 x 64 tokens)", "ms / step", "examples / s",
                                   "step time / ours (> 1: ours faster)"], rows)
    return {"keys": keys,
            "table": table, "accelerate": accelerate.__version__,
            "data": "RTE" if _rte_items(1) else "random word pieces"}


if __name__ == "__main__":
    common.cli(run, __doc__)
