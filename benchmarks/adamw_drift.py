"""How far torch's AdamW and the 2021 HF AdamW (the official code's) move MiniLM apart in a few
steps, in units of the learning rate: the size of README's "AdamW" difference.

    python benchmarks/adamw_drift.py [--steps 4] [--lr 2e-5] [--task rte]

Both optimizers start from the same model and see the same real training batches and dropout
stream (batch 16, max_seq_length 128, grad-norm clip 1.0, constant lr); reported: max, 99.9th
percentile and median of |p_torch - p_hf2021| / lr over all parameters, with weight decay 0.01
and with none (eps placement alone). Not timed: any machine, any load."""
from __future__ import annotations

import argparse
import itertools
import json

import torch
from omegaconf import OmegaConf

import common
from childtune.run import data, loop, models, optim
from childtune.run.tasks import get_task


def batches(task_name: str, steps: int) -> list[dict]:
    task = get_task(task_name)
    splits = data.load_splits(task, data.resolve_data_dir(None), None, 0)
    tokenizer = models.load_tokenizer(OmegaConf.create({"source": "embedded", "path": None}))
    encoded = data.Encoded(splits["train"], tokenizer, 128, task.is_regression)
    return list(itertools.islice(data.make_loader(encoded, 16, 1), steps))


def trained(optimizer_name: str, weight_decay: float, lr: float, train_batches) -> torch.Tensor:
    model = common.minilm()   # cached: copy its weights, never train it in place
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = OmegaConf.create({"optimizer": optimizer_name, "lr": lr, "weight_decay": weight_decay,
                            "adam_eps": 1e-8, "adam_betas": [0.9, 0.999]})
    optimizer = optim.build_optimizer(model, cfg)
    torch.manual_seed(1)   # dropout
    loop.train(model, train_batches, optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0), epochs=1, max_grad_norm=1.0, progress=False)
    flat = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    model.load_state_dict(state)
    return flat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--task", default="rte")
    args = parser.parse_args()
    common.setup(1)
    train_batches = batches(args.task, args.steps)
    out = {"model": "minilm", "task": args.task, "steps": args.steps, "lr": args.lr}
    for wd in (0.01, 0.0):
        drift = (trained("adamw_torch", wd, args.lr, train_batches)
                 - trained("adamw_hf2021", wd, args.lr, train_batches)).abs() / args.lr
        out[f"weight_decay={wd}"] = {
            "max": float(drift.max()),
            "p99.9": float(torch.quantile(drift[::7][:16_000_000], 0.999)),
            "median": float(drift.median()),
            "fraction_above_0.5_lr": float((drift > 0.5).float().mean())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
