"""DDP: two CPU processes on gloo hold identical masks and identical parameters after k steps;
the official per-rank Fisher mask (and per-rank CT_F seeds) would not. Mixed precision: masks
reach the tensors the optimizer updates."""
from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp_mp
from omegaconf import OmegaConf

from childtune import mask_cache, records
from childtune.method import masks as M, scopes, selection, variants
from childtune.method.fisher import fisher_information
from childtune.run import distributed, loop
from reliability_helpers import compose_cfg, env, overrides, records_under, write_rte

WORLD, STEPS, P = 2, 4, 0.3


class Synthetic(torch.utils.data.Dataset):
    """Random token sequences with labels; `idx` as the project's loaders provide it."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i], "idx": torch.tensor(i)}


def tiny_model(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2))


def loader(seed: int, n: int = 8 * STEPS, batch_size: int = 8):
    return torch.utils.data.DataLoader(Synthetic(n, seed), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def _train(model, masker, seed: int) -> list[str]:
    """STEPS DDP steps through the project's loop; returns a digest per step of which gradient
    entries survived the masker (the mask drawn that step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    masker.attach(optimizer)
    distributed.check_masks_reach_optimizer(masker, optimizer)
    drawn = []
    optimizer.register_step_pre_hook(  # runs after the masker's hook
        lambda *_: drawn.append(distributed.digest(p.grad != 0 for p in masker.params)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loop.train(distributed.wrap(model, seed), distributed.shard_batches(loader(seed)),
               optimizer, scheduler, epochs=1, max_grad_norm=1.0, progress=False)
    return drawn


def _rank(rank: int, out: str) -> None:
    """One rank. The group meets in a file (no TCP port another process could take between
    choosing and binding it) and is torn down before the process exits."""
    faulthandler.enable()  # a crash inside torch prints the Python stack it happened under
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/store",
                                         rank=rank, world_size=WORLD)
    distributed.setup()
    result = {}

    # CT_D the official way: every rank's Fisher on its own data gives its own mask.
    model = tiny_model()
    names = scopes.encoder_layer_names(model)
    own = selection.top_p_mask(fisher_information(model, loader(seed=100 + rank), names), P)
    result["own_mask"] = distributed.digest(own.values())
    # Ours: rank 0 builds (here from its own Fisher), every rank receives it.
    variant = {"mask": "fisher_top", "p": P, "scope": "layers", "decay_frozen": True}
    child = (variants.fixed_child(variant, model, own, {})
             if distributed.builds_child(variant) else None)
    assert (child is None) == (rank != 0)  # the other ranks build nothing
    child = distributed.share_child(child, variant, model)
    result["d_mask"] = distributed.digest(child.masks.values())
    _train(model, child.masker, seed=1)
    result["d_sync"] = distributed.check_in_sync(model, child.masks)["distributed"]

    # CT_F: the same seed on every rank -> the same mask every step, the same parameters.
    model = tiny_model()
    masker = M.ChildTuningF(model.named_parameters(), P, seed=1)
    result["f_steps"] = _train(model, masker, seed=1)
    result["f_sync"] = distributed.check_in_sync(model, None)["distributed"]

    # Control: CT_F seeded per rank (what a per-rank generator would do) drifts apart.
    model = tiny_model()
    masker = M.ChildTuningF(model.named_parameters(), P, seed=1 + rank)
    result["control_steps"] = _train(model, masker, seed=1)
    try:
        distributed.check_in_sync(model, None)
        result["control_drift"] = False
    except distributed.ReplicasDiverged:
        result["control_drift"] = True
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    distributed.teardown()
    # This test checks the ranks' masks and parameters. Leave without interpreter finalization,
    # where gloo's threads can still abort the process (pytorch#179291); the torchrun test below
    # exits the normal way, as a user's run does.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def test_two_gloo_ranks_hold_identical_masks_and_parameters(tmp_path):
    tmp_mp.spawn(_rank, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["own_mask"] != r1["own_mask"]  # the official per-rank masks differ
    assert r0["d_mask"] == r1["d_mask"] == r0["own_mask"]  # ours: rank 0's, everywhere
    assert r0["d_sync"]["ranks_identical"] and r0["d_sync"] == r1["d_sync"]
    assert len(r0["f_steps"]) == STEPS and r0["f_steps"] == r1["f_steps"]
    assert len(set(r0["f_steps"])) == STEPS  # a fresh mask every step
    assert r0["f_sync"] == r1["f_sync"] and r0["f_sync"]["params_sha256"] != r0["d_sync"][
        "params_sha256"]
    assert r0["control_steps"] != r1["control_steps"] and r0["control_drift"]


def test_torchrun_two_ranks_train_one_record_with_rank_0s_mask(tmp_path):
    data_dir, results = write_rte(tmp_path / "data"), tmp_path / "results"
    args = overrides(data_dir, results, "variant=child_tuning_d", "trainer.epochs=2")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", "-m", "childtune.train", *args],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = records_under(results)
    record = records.read_record(path)
    sync = record.section("distributed")
    assert sync["world_size"] == WORLD and sync["ranks_identical"] and sync["backend"] == "gloo"
    [entry] = (results / "cache" / "masks").glob("*.npz")
    assert sync["masks_sha256"] == distributed.digest(mask_cache.load(entry)[0].values())
    assert record.setting("distributed") == {"world_size": WORLD}
    one_process = records.identity(OmegaConf.to_container(compose_cfg(args), resolve=True))
    assert record.identity["config_hash"] != one_process["config_hash"]
    assert record.train["steps"] == 4  # 32 examples, global batch 16, 2 epochs


def test_sharded_batches_split_every_global_batch_and_drop_ones_too_small():
    def base():  # each rank builds the same seeded loader: batches of 8, 8, 1
        return loader(seed=3, n=17, batch_size=8)

    shards = [distributed.ShardedBatches(base(), distributed.Context(r, WORLD)) for r in (0, 1)]
    assert [len(s) for s in shards] == [2, 2] == [len(list(s)) for s in shards]
    shards = [distributed.ShardedBatches(base(), distributed.Context(r, WORLD)) for r in (0, 1)]
    globals_ = [b["idx"].tolist() for b in base() if len(b["idx"]) >= WORLD]
    for g, a, b in zip(globals_, *shards, strict=True):
        assert sorted(a["idx"].tolist() + b["idx"].tolist()) == sorted(g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masks_apply_under_autocast_to_the_parameters_the_optimizer_updates(dtype):
    model = tiny_model()
    names = scopes.encoder_layer_names(model)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    child = selection.random_mask(shapes, P, seed=0)
    masker = M.ChildTuningD(model, child)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    masker.attach(optimizer)
    distributed.check_masks_reach_optimizer(masker, optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    for batch in loader(seed=0):
        with torch.autocast("cpu", dtype=dtype):
            loss = model(**loop.model_inputs(model, batch)).loss
        scaler.scale(loss.float()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    for name, mask in child.items():
        assert params[name].dtype == torch.float32
        assert torch.equal(params[name][~mask], before[name][~mask])  # frozen: not moved
    assert any(not torch.equal(params[n][m], before[n][m]) for n, m in child.items())

    copies = torch.optim.AdamW([p.detach().clone() for p in model.parameters()])  # master copies
    with pytest.raises(ValueError, match="does not update the masked parameters"):
        distributed.check_masks_reach_optimizer(masker, copies)
