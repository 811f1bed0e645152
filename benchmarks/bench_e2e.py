"""Question 5: end to end, how fast does a real run train, against the HF Trainer?

One full epoch of the real RTE and CoLA training sets (embedded MiniLM, batch 16, dynamic
padding, max_seq_length 128, the threads given): the project's run (`childtune.run.train.run`, the
code path every sweep takes, with the repo's default trainer settings) with random batches and
with `data.group_by_length=true`, against the HF Trainer with the same settings (its default
optimizer, `DataCollatorWithPadding`) without and with length grouping
(`train_sampling_strategy="group_by_length"`, transformers 5's `group_by_length=True`). Examples per
second of training (our record's `train_examples_per_s`; the Trainer's
`train_samples_per_second`), alternating the contenders' order between tasks. Every contender
trains in a fresh process, as each is used: a run's process-wide settings (the thread count,
`childtune.memory`) never carry over to the next contender. When the config has
`trainer.precision`, a bf16 run of RTE is timed against fp32 on the same slice.

    python benchmarks/bench_e2e.py [--quick] [--threads 1]
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import common

TASKS = ("rte", "cola")
BATCH, MAX_LEN, LR = 16, 128, 2e-5
CONF = Path(__file__).resolve().parents[1] / "src" / "childtune" / "conf"


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def ours(task: str, n_train: int | None, work: Path, *extra: str) -> float:
    """Training examples per second of one epoch through the project's run."""
    from childtune.records import read_record
    from childtune.run.train import run

    cfg = _compose([f"task={task}", "variant=vanilla", "trainer.epochs=1",
                    f"trainer.batch_size={BATCH}", f"trainer.lr={LR}",
                    f"data.max_seq_length={MAX_LEN}",
                    f"data.n_train={'null' if n_train is None else n_train}",
                    f"results_dir={work / 'results'}", f"runtime.cache_dir={work / 'cache'}",
                    "runtime.progress=false", "force=true", *extra])
    with contextlib.redirect_stdout(io.StringIO()):
        path = run(cfg)
    return read_record(path).timings["train_examples_per_s"]


def hf(task: str, n_train: int | None, work: Path, grouped: bool) -> float:
    """Training examples per second of one epoch through the HF Trainer."""
    from omegaconf import OmegaConf
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from childtune.run import data, models
    from childtune.run.tasks import get_task

    spec = get_task(task)
    split = data.load_splits(spec, data.resolve_data_dir(None), n_train, 0)["train"]
    model_cfg = OmegaConf.create({"source": "embedded", "path": None})
    tokenizer = models.load_tokenizer(model_cfg)
    features = data.tokenize(split, tokenizer, MAX_LEN)
    items = [{**f, "labels": label} for f, label in zip(features, split.labels)]
    model = models.load_model(model_cfg, spec.num_labels)
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=BATCH, num_train_epochs=1,
        learning_rate=LR, weight_decay=0.01, max_grad_norm=1.0,
        warmup_steps=math.ceil(0.1 * math.ceil(len(items) / BATCH)),  # ours: warmup_ratio 0.1
        lr_scheduler_type="linear", logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=1,
        **({"train_sampling_strategy": "group_by_length"} if grouped else {}))  # transformers 5
    with contextlib.redirect_stdout(io.StringIO()):
        out = Trainer(model=model, args=args, train_dataset=items,
                      data_collator=DataCollatorWithPadding(tokenizer)).train()
    return out.metrics["train_samples_per_second"]


def cpu_flags() -> dict:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    return {f: f in flags for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")}


def has_precision() -> bool:
    return "precision" in _compose([]).trainer


CONTENDERS = {
    "ours, random batches": lambda t, n, w, threads: ours(t, n, w, f"runtime.threads={threads}"),
    "ours, grouped batches": lambda t, n, w, threads: ours(t, n, w, f"runtime.threads={threads}",
                                                           "data.group_by_length=true"),
    "HF Trainer": lambda t, n, w, threads: hf(t, n, w, grouped=False),
    "HF Trainer, group_by_length": lambda t, n, w, threads: hf(t, n, w, grouped=True)}


def isolated(name: str, task: str, n_train: int | None, work: Path, threads: int) -> float:
    """`CONTENDERS[name]`'s examples per second, trained in a fresh process."""
    argv = [sys.executable, __file__, "--one", json.dumps([name, task, n_train, str(work),
                                                           threads])]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def run(quick: bool = False, threads: int = 1, n_train: int | None = None) -> dict:
    """`n_train`: a slice of that many training examples instead of the full set (quick: 64)."""
    from childtune.run import data

    common.setup(threads)
    if data.resolve_data_dir(None) is None:
        note = "skipped: the end-to-end section needs the real data (set CHILDTUNE_DATA_DIR)"
        return {"keys": {}, "table": note, "skipped": note}
    n_train = 64 if quick else n_train   # quick: a 64-example slice, not an epoch of the task
    speed: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r, task in enumerate(TASKS):   # rotate the order: a load change hits all alike
            names = list(CONTENDERS)
            for name in names[r % len(names):] + names[:r % len(names)]:
                speed.setdefault(task, {})[name] = isolated(name, task, n_train, work, threads)
        bf16 = _bf16_ratio(work, 64 if quick else 800, threads) if has_precision() else None
    ratio_same = [speed[t]["ours, random batches"] / speed[t]["HF Trainer"] for t in TASKS] + [
        speed[t]["ours, grouped batches"] / speed[t]["HF Trainer, group_by_length"]
        for t in TASKS]
    grouped = [speed[t]["ours, grouped batches"] / speed[t]["ours, random batches"]
               for t in TASKS]
    keys = {"e2e_vs_hf_trainer_ratio": sum(ratio_same) / len(ratio_same),
            "e2e_grouped_speedup": sum(grouped) / len(grouped)}
    for t in TASKS:
        keys |= {f"e2e_{t}_{key}_examples_per_s": speed[t][name]
                 for key, name in zip(("ours", "ours_grouped", "hf", "hf_grouped"), CONTENDERS)}
    if bf16 is not None:
        keys["bf16_vs_fp32_step_ratio"] = bf16
    rows = [[f"{t.upper()}: {name}", speed[t][name],
             speed[t][name] / speed[t]["ours, random batches"]]
            for t in TASKS for name in CONTENDERS]
    table = common.markdown_table(
        ["one epoch, batch 16 (" + (f"{n_train}-example slice" if n_train else
                                     "full training set") + ")",
         "examples / s", "vs ours, random batches"], rows)
    flags = cpu_flags()
    table += ("\n\nbf16 vs fp32 step time (RTE slice): " +
              (f"{bf16:.3f}" if bf16 is not None else
               "not measured: this code has no trainer.precision") +
              "; CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    return {"keys": keys, "table": table, "examples_per_s": speed, "cpu_flags": flags,
            "n_train": n_train or "full", "isolated_processes": True}


def _bf16_ratio(work: Path, n_train: int, threads: int) -> float:
    """Step time with trainer.precision=bf16 over fp32 (< 1: bf16 is faster), one epoch of an
    RTE slice each, alternating twice."""
    times = {"fp32": [], "bf16": []}
    for r in range(2):
        for name in (("fp32", "bf16") if r == 0 else ("bf16", "fp32")):
            extra = [f"runtime.threads={threads}"] + (
                ["trainer.precision=bf16"] if name == "bf16" else [])
            times[name].append(1 / ours("rte", n_train, work, *extra))
    return common.median(times["bf16"]) / common.median(times["fp32"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:   # isolated(): one contender, print its examples/s
        name, task, n_train, work, threads = json.loads(sys.argv[2])
        common.setup(threads)
        print(CONTENDERS[name](task, n_train, Path(work), threads))
    else:
        common.cli(run, __doc__)
