"""Issue 15: where does a training step's time go, ours next to the HF Trainer, same batches?

Both train a fresh copy of the embedded MiniLM (the same starting weights) on the same real RTE
batches (the same examples in the same order, each padded to its longest, batch 16,
max_seq_length 128) with the same settings: fused AdamW (weight decay 0.01, none on bias and
LayerNorm), linear schedule with 10% warmup, clipping at 1.0, fp32, no progress bar, no
logging. The same timers wrap the same functions in both, per step:

    dataloader  next() on the DataLoader's iterator (sampler + collate; collate also alone)
    forward     the model's forward (loss included)
    backward    Tensor.backward
    clip        torch.nn.utils.clip_grad_norm_ (or its parts get_total_norm and
                clip_grads_with_norm_, which childtune.run.loop.clip_grad_norm calls)
    optimizer   optimizer.step() (global step hooks: pre to post)
    scheduler   LRScheduler.step
    zero_grad   Module.zero_grad / Optimizer.zero_grad
    other       the step (gap between step ends) minus all of the above: the loop itself

Every run is a fresh process (the memory setting of `childtune.run.memory` is process-wide, so no
contender inherits another's). Contenders alternate in rotated order, `--rounds` rounds of
`--steps` steps each; the first `--skip` steps of every run are dropped; figures are medians
over the remaining steps. `ours` is our loop with what `childtune.run.train.run` sets up around
it; `--baseline REV` adds ours as of git revision REV (e.g. main), for before/after;
`--hf-kept` adds the HF Trainer in a process with our memory setting.

    python benchmarks/profile_phases.py [--steps 24] [--rounds 3] [--baseline main] [--task cola]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import common

BATCH, MAX_LEN, LR, WARMUP_RATIO = 16, 128, 2e-5, 0.1
PHASES = ("dataloader", "forward", "backward", "clip", "optimizer", "scheduler", "zero_grad")
ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """Per-step phase seconds: `timed(name, fn)` wraps fn; `step_end()` closes a step."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.last_end: float | None = None

    def timed(self, name: str, fn):
        @functools.wraps(fn)   # the Trainer reads the model's forward signature
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - start
        return wrapper

    def step_end(self, grad_norm=None) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.current["step"] = now - self.last_end
            if grad_norm is not None:
                self.current["grad_norm"] = float(grad_norm)
            self.steps.append(dict(self.current))
        self.last_end, self.current = now, defaultdict(float)


@contextlib.contextmanager
def patched(clock: Clock, model_class):
    """The timers, installed on the classes both loops call into."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    targets = [(torch.Tensor, "backward"), (torch.nn.utils, "clip_grad_norm_"),
               (torch.nn.utils, "get_total_norm"), (torch.nn.utils, "clip_grads_with_norm_"),
               (torch.optim.lr_scheduler.LRScheduler, "step"), (torch.nn.Module, "zero_grad"),
               (torch.optim.Optimizer, "zero_grad"), (_BaseDataLoaderIter, "__next__"),
               (model_class, "forward")]
    names = ["backward", "clip", "clip", "clip", "scheduler", "zero_grad", "zero_grad",
             "dataloader", "forward"]
    saved = [(owner, attr, owner.__dict__[attr]) for owner, attr in targets]
    for (owner, attr, fn), name in zip(saved, names):
        setattr(owner, attr, clock.timed(name, fn))
    started = {}
    handles = [register_optimizer_step_pre_hook(
                   lambda *_: started.__setitem__("t", time.perf_counter())),
               register_optimizer_step_post_hook(lambda *_: clock.current.__setitem__(
                   "optimizer", clock.current["optimizer"] + time.perf_counter() - started["t"]))]
    try:
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
        for handle in handles:
            handle.remove()


class Setup:
    """The RTE slice, its batch order, the tokenizer and the starting weights."""

    def __init__(self, steps: int, task: str, grouped: bool):
        from omegaconf import OmegaConf

        from childtune.run import data, models
        from childtune.run.tasks import get_task

        self.model_cfg = OmegaConf.create({"source": "embedded", "path": None})
        self.tokenizer = models.load_tokenizer(self.model_cfg)
        split = data.load_splits(get_task(task), data.resolve_data_dir(None), steps * BATCH,
                                 0)["train"]
        self.encoded = data.Encoded(split, self.tokenizer, MAX_LEN, regression=False)
        generator = torch.Generator().manual_seed(1)
        self.order = (data.length_grouped_indices(self.encoded.lengths(), BATCH, generator)
                      if grouped else torch.randperm(len(split), generator=generator).tolist())
        self.steps = steps
        torch.manual_seed(0)
        self.state = models.load_model(self.model_cfg, 2).state_dict()

    def model(self):
        from childtune.run import models

        model = models.load_model(self.model_cfg, 2)
        model.load_state_dict(self.state)
        return model


def ours(setup: Setup, clock: Clock) -> None:
    """What `childtune.run.train.run` does around the loop: one thread, the memory setting."""
    from omegaconf import OmegaConf

    from childtune.run import loop, optim

    try:
        from childtune.run import memory   # issue 15
        memory.keep_freed_memory()
    except ImportError:                # an earlier revision
        pass
    model = setup.model()
    enc = setup.encoded
    loader = torch.utils.data.DataLoader(enc, batch_size=BATCH, sampler=setup.order,
                                         collate_fn=clock.timed("collate", enc.collate))
    cfg = OmegaConf.create({"optimizer": "adamw_fused", "lr": LR, "weight_decay": 0.01,
                            "adam_betas": [0.9, 0.999], "adam_eps": 1e-8})
    optimizer = optim.build_optimizer(model, cfg)
    scheduler = optim.linear_schedule(optimizer, setup.steps,
                                      optim.warmup_steps(setup.steps, WARMUP_RATIO))
    torch.manual_seed(1)
    clock.step_end()
    with patched(clock, type(model)):
        loop.train(model, loader, optimizer, scheduler, 1, 1.0, progress=False,
                   on_step=lambda values: clock.step_end(values["grad_norm"]))


def hf(setup: Setup, clock: Clock, keep_freed_memory: bool = False) -> None:
    from transformers import (DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    if keep_freed_memory:
        from childtune.run import memory

        memory.keep_freed_memory()
    enc = setup.encoded
    items = [{**enc.features[i], "labels": int(enc.labels[i])} for i in setup.order]
    collator = DataCollatorWithPadding(setup.tokenizer)
    model = setup.model()

    class StepEnd(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            clock.step_end()

        def on_step_end(self, *args, **kwargs):
            clock.step_end()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1,
            learning_rate=LR, weight_decay=0.01, max_grad_norm=1.0,
            warmup_steps=math.ceil(WARMUP_RATIO * setup.steps), lr_scheduler_type="linear",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=1,
            train_sampling_strategy="sequential")
        trainer = Trainer(model=model, args=args, train_dataset=items, callbacks=[StepEnd()],
                          data_collator=clock.timed("collate", collator))
        with patched(clock, type(model)), contextlib.redirect_stdout(io.StringIO()):
            trainer.train()


CONTENDERS = {"ours": ours, "hf_trainer": hf,
              "hf_trainer_kept": lambda s, c: hf(s, c, keep_freed_memory=True)}


def one(name: str, steps: int, task: str, grouped: bool) -> list[dict]:
    """One contender's run, in this process: its steps' phase seconds."""
    common.setup(1)
    clock = Clock()
    CONTENDERS[name](Setup(steps, task, grouped), clock)
    return clock.steps


def in_subprocess(name: str, src: Path, steps: int, task: str, grouped: bool) -> list[dict]:
    """`one` in a fresh process whose `childtune` is the one under `src`: no contender
    inherits another's process state (the memory setting is process-wide)."""
    argv = [sys.executable, __file__, "--one", name, "--steps", str(steps), "--task", task]
    out = subprocess.run(argv + (["--grouped"] if grouped else []), check=True, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(src)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def source_at(rev: str, into: Path) -> Path:
    """The src/ folder of git revision `rev`, extracted under `into`."""
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def summary(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median ms per phase over the steps, `other` = step minus the phases."""
    med = {k: statistics.median(s.get(k, 0.0) for s in steps) * 1e3
           for k in ("step", "collate", *PHASES)}
    med["other"] = statistics.median(
        s["step"] - sum(s.get(k, 0.0) for k in PHASES) for s in steps) * 1e3
    return med


def run(steps: int, rounds: int, skip: int, baseline: str | None, task: str = "rte",
        grouped: bool = False, hf_kept: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {"ours": ROOT / "src", "hf_trainer": ROOT / "src"}
        if hf_kept:
            contenders["hf_trainer_kept"] = ROOT / "src"
        if baseline:
            contenders[f"ours@{baseline}"] = source_at(baseline, Path(tmp))
        per_step: dict[str, list] = {name: [] for name in contenders}
        per_run: dict[str, list] = {name: [] for name in contenders}   # step ms, run by run
        load = [os.getloadavg()[0]]
        for r in range(rounds):
            names = list(contenders)
            for name in names[r % len(names):] + names[:r % len(names)]:
                steps_run = in_subprocess(name.split("@")[0], contenders[name], steps, task,
                                          grouped)[skip:]
                per_step[name] += steps_run
                per_run[name].append(round(summary(steps_run)["step"], 1))
            load.append(os.getloadavg()[0])
    medians = {name: summary(s) for name, s in per_step.items()}
    ratios = {f"hf_over_{name}": medians["hf_trainer"]["step"] / medians[name]["step"]
              for name in contenders if name != "hf_trainer"}
    norms = [s["grad_norm"] for s in per_step["ours"]]
    return {"medians_ms": medians, "step_time_ratios": ratios,
            "steps_measured": {n: len(s) for n, s in per_step.items()}, "per_run_step_ms": per_run,
            "ours_steps_with_grad_norm_below_1": sum(n < 1.0 for n in norms) / len(norms),
            "load_average_1m": load, "machine": common.machine(1), "task": task,
            "grouped": grouped, "steps_per_run": steps}


def table(result: dict) -> str:
    medians = result["medians_ms"]
    rows = [[phase, *(medians[n][phase] for n in medians)]
            for phase in ("step", "collate", *PHASES, "other")]
    return common.markdown_table(["median ms / step", *medians], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--task", default="rte")
    parser.add_argument("--grouped", action="store_true", help="length-grouped batch order")
    parser.add_argument("--hf-kept", action="store_true",
                        help="also the HF Trainer in a process that keeps freed memory")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)  # in_subprocess
    a = parser.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.task, a.grouped)))
        sys.exit(0)
    result = run(a.steps, a.rounds, a.skip, a.baseline, a.task, a.grouped, a.hf_kept)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("step_time_ratios", "load_average_1m")}))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
