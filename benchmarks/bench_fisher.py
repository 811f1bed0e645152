"""Question 3: what does the Fisher pass of CT_D cost next to an epoch of forward + backward?

The same batches (16 x 64 tokens) through: a plain epoch of forward + backward, our
`fisher_information` over the encoder layers, and an official-style Fisher loop (per tensor:
`clip_grad_norm_`, then `+= grad**2 / N`), alternating.

    python benchmarks/bench_fisher.py [--quick] [--threads 1]
"""
from __future__ import annotations


import torch

import common


def epoch(model, batches) -> None:
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def official_style_fisher(model, batches, names) -> dict:
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    for batch in batches:
        model(**batch).loss.backward()
        for n in names:
            torch.nn.utils.clip_grad_norm_(params[n], 1.0)
            fisher[n] += (params[n].grad ** 2) / len(batches)
        model.zero_grad()
    return fisher


def run(quick: bool = False, threads: int = 1) -> dict:
    from childtune import fisher_information
    from childtune.method.scopes import encoder_layer_names

    common.setup(threads)
    model = common.minilm()
    model.train()
    names = encoder_layer_names(model)
    n_batches, rounds = (1, 2) if quick else (4, 5)
    batches = [common.token_batch(seed=i) for i in range(n_batches)]
    times = common.interleaved({
        "epoch": lambda: epoch(model, batches),
        "ours": lambda: fisher_information(model, batches, names, max_grad_norm=1.0),
        "official": lambda: official_style_fisher(model, batches, names),
    }, rounds, warmup=0 if quick else 1)
    med = {k: common.median(v) for k, v in times.items()}
    rows = [["one epoch of forward + backward", med["epoch"] / n_batches * 1e3, 1.0],
             ["ours: fisher_information", med["ours"] / n_batches * 1e3, med["ours"] / med["epoch"]],
             ["official-style Fisher loop", med["official"] / n_batches * 1e3,
              med["official"] / med["epoch"]]]
    table = common.markdown_table(["Fisher pass (encoder layers, 10.6M values)", "ms / batch",
                                   "ratio vs epoch"], rows)
    return {"keys": {"fisher_vs_epoch_ratio": med["ours"] / med["epoch"],
                     "official_fisher_vs_epoch_ratio": med["official"] / med["epoch"]},
            "table": table}


if __name__ == "__main__":
    common.cli(run, __doc__)
