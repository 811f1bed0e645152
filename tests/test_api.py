"""The public API as a researcher uses it: the README example, and the HF Trainer."""
from __future__ import annotations

import re

import torch

from childtune import ChildTuningD, encoder_layer_names, random_mask

from conftest import ROOT, random_batches, tiny_model


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"<!-- example:api -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_runs_and_masks_adam_moments():
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    model, masks, optimizer = namespace["model"], namespace["masks"], namespace["optimizer"]
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        exp_avg = optimizer.state[params[name]]["exp_avg"]
        assert (exp_avg[~mask] == 0).all(), name
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.3 * sum(m.numel() for m in masks.values()))


def test_hf_trainer_with_a_child_tuning_optimizer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_mask({n: p.shape for n, p in model.named_parameters()
                         if n in encoder_layer_names(model)}, 0.3, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ChildTuningD(model, masks).attach(optimizer)
    examples = [{k: v[i] for k, v in batch.items()} for batch in random_batches(4)
                for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                             max_grad_norm=1.0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=examples, optimizers=(optimizer, None)).train()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name][~mask], initial[name][~mask]), name
    assert any(not torch.equal(params[n][m], initial[n][m]) for n, m in masks.items())


def test_every_public_name_loads_from_the_method_layer():
    """`from childtune import X` for every name of __all__: each is the method layer's own
    object, and importing the package loads no layer until a name is used."""
    import subprocess
    import sys

    import childtune

    for name in childtune.__all__:
        assert getattr(childtune, name).__module__.startswith("childtune.method."), name
    code = ("import sys, childtune; loaded = [m for m in sys.modules if m.startswith("
            "('childtune.method', 'childtune.run', 'childtune.study'))]; assert not loaded, loaded")
    assert subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, text=True).returncode == 0
