"""How much the Fisher pass's mode changes CT_D's child network on the embedded MiniLM.

    python benchmarks/fisher_mode_overlap.py [task=rte] [n_train=1000] [p=0.3]

Builds the model and loader exactly as `python -m childtune.train variant=child_tuning_d seed=1`
does, then computes the top-p Fisher mask three times: eval mode (dropout off: the pass before
the fix), train mode with fisher_seed 1 (the official recipe, the default now) and train mode with
fisher_seed 2 (how much two train-mode masks differ anyway). Prints the overlaps
(|A and B| / |A|; the masks are the same size) and the kept fraction per encoder layer of the
train-mode mask. Needs the data directory ($CHILDTUNE_DATA_DIR); about 4 Fisher passes' time."""
from __future__ import annotations

import sys
import time

import torch
from omegaconf import OmegaConf

from childtune.method import scopes, selection
from childtune.method.fisher import fisher_information
from childtune.run import data, models
from childtune.run.tasks import get_task
from childtune.run.train import seed_everything


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    task = get_task(args.get("task", "rte"))
    n_train = int(args["n_train"]) if args.get("n_train", "1000") != "all" else None
    p = float(args.get("p", 0.3))
    model_cfg = OmegaConf.create({"name": "minilm", "source": "embedded"})
    splits = data.load_splits(task, data.resolve_data_dir(None), n_train, 0)
    encoded = data.Encoded(splits["train"], models.load_tokenizer(model_cfg), 128,
                           task.is_regression)
    seed_everything(1)
    model = models.load_model(model_cfg, task.num_labels)
    names = scopes.encoder_layer_names(model)

    def mask(mode: str, fisher_seed: int):
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fisher_seed)
            fisher = fisher_information(model, data.make_loader(encoded, 16, fisher_seed), names,
                                        mode=mode)
        print(f"{mode} mode, fisher_seed {fisher_seed}: {time.perf_counter() - start:.0f} s",
              flush=True)
        return selection.top_p_mask(fisher, p)

    old, new, other = mask("eval", 1), mask("train", 1), mask("train", 2)

    def overlap(a, b) -> float:
        both = sum(int((a[n] & b[n]).sum()) for n in a)
        return both / sum(int(a[n].sum()) for n in a)

    print(f"{task.name}, {len(encoded)} training examples, p={p}, "
          f"{sum(m.numel() for m in new.values())} in-scope entries")
    print(f"overlap eval-mode vs train-mode mask (seed 1): {overlap(old, new):.4f}")
    print(f"overlap train-mode masks, fisher_seed 1 vs 2:  {overlap(new, other):.4f}")
    stats = scopes.mask_statistics(new, model)
    print("kept fraction per layer (train mode, seed 1):",
          {k: round(v, 4) for k, v in stats["per_layer"].items()})
    print("kept fraction per module:", {k: round(v, 4) for k, v in stats["per_module"].items()})


if __name__ == "__main__":
    main()
