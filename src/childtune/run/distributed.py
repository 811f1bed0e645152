"""Data-parallel training (torchrun / DDP) in which every rank holds the same child network.

    torchrun --nproc_per_node=2 -m childtune.train variant=child_tuning_d data.n_train=1000

The official code computes the CT_D mask on every rank, from that rank's own shuffle and
dropout, so ranks can hold different masks and the replicas drift apart. Here:

- Fixed masks (CT_D, random, lowest-Fisher, prune): rank 0 builds the child network (the
  Fisher pass over the whole training set, exactly as a one-process run does, or the cache)
  and broadcasts it; the other ranks compute nothing. A DDP run so uses the very mask of the
  one-process run with the same seed (and shares its cache entry).
- CT_F: the masker draws from its own generator, seeded by the run seed on every rank and
  advanced once per optimizer step; DDP hands every rank the same averaged gradient, so every
  rank draws the same masks and makes the same update.
- Data: every rank builds the same seeded global batch and trains on its slice
  (examples rank, rank + world, ...), so the averaged gradient is the global batch's gradient
  (for equal slices) and the schedule has the one-process number of steps. Dropout is reseeded
  per rank (rank 0 keeps the one-process stream).
- After training the ranks compare digests of their parameters and masks; a mismatch fails
  the run. Rank 0 alone evaluates and writes the record, which stores the check.

Mixed precision: with `torch.autocast` (bf16/fp16) and `GradScaler` the parameters stay fp32 and
are the tensors the optimizer updates, so the step pre-hook masks the gradients that are
applied (a step GradScaler skips for inf/NaN skips the mask draw on every rank alike). Where an
optimizer holds *copies* (fp16 master weights, DeepSpeed) a mask on the model's parameters
would silently never apply, the official code's trap: `check_masks_reach_optimizer` refuses it.

Backend: NCCL when GPUs are present (each rank on its LOCAL_RANK device, runtime.device=auto),
else gloo; these helpers only use collectives that both support."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..mask_kinds import FIXED
from ..method.digest import digest
from .hooks import RunHook

TIMEOUT = timedelta(minutes=60)  # the other ranks wait this long for rank 0's Fisher pass


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int


_context: Context | None = None


def setup(cfg=None) -> Context | None:
    """Joins the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise. With a
    Hydra `cfg`, adds `distributed.world_size` to it: a DDP run's numbers differ from a
    one-process run's, so its record gets its own config hash (one-process hashes unchanged)."""
    global _context
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    _context = Context(dist.get_rank(), dist.get_world_size())
    if cfg is not None:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.distributed = {"world_size": _context.world_size}
    return _context


def teardown() -> None:
    """Leaves the process group: every rank waits for the others, then destroys it. A rank that
    exits with the group alive can abort in gloo's C++ teardown ("terminate called without an
    active exception", SIGABRT) while a slower rank still talks to it (seen under load), and a
    group that only dies in interpreter finalization can abort there (pytorch#179291). So
    unreachable DDP wrappers and pending work, which hold the group, are collected before the
    barrier, and the group's last references after it is destroyed."""
    global _context
    if _context is not None and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
    _context = None


def is_main() -> bool:
    return _context is None or _context.rank == 0


# ---------------------------------------------------------------- the child network

def broadcast_masks(masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (the others pass None): names and shapes, then the bits."""
    layout = [[(name, list(m.shape)) for name, m in masks.items()] if masks is not None else None]
    dist.broadcast_object_list(layout, src=0)
    sizes = [int(torch.Size(shape).numel()) for _, shape in layout[0]]
    flat = (torch.cat([m.flatten() for m in masks.values()]).to(torch.uint8)
            if masks is not None else torch.empty(sum(sizes), dtype=torch.uint8))
    dist.broadcast(flat, src=0)
    parts = flat.bool().split(sizes)
    return {name: part.view(shape).clone() for (name, shape), part in zip(layout[0], parts)}


def builds_child(variant: dict) -> bool:
    """Whether this process builds the child network: under DDP a fixed mask (any kind but
    none and bernoulli) is built on rank 0 only; CT_F and vanilla on every rank (nothing to
    share)."""
    return _context is None or _context.rank == 0 or variant["mask"] not in FIXED


def share_child(child, variant: dict, model):
    """Rank 0's fixed mask on every rank (`child` is None where builds_child said no): rank 0
    keeps its own child network, the others build theirs from the broadcast masks."""
    if _context is None or variant["mask"] not in FIXED:
        return child
    from ..method.variants import fixed_child

    masks = broadcast_masks(child.masks if child is not None else None)
    if child is None:
        child = fixed_child(variant, model, masks, {"source": "broadcast from rank 0"})
    return child


def check_masks_reach_optimizer(masker, optimizer: torch.optim.Optimizer) -> None:
    """The masked tensors must be the ones the optimizer updates (not fp16/DeepSpeed copies)."""
    if masker is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in held for p in masker.params):
        raise ValueError("the optimizer does not update the masked parameters (it holds copies, "
                         "e.g. fp16 master weights or DeepSpeed): the mask would never apply; "
                         "attach the masker to the tensors the optimizer steps")


# ---------------------------------------------------------------- data and model

class ShardedBatches:
    """This rank's slice of every global batch of `loader`. Global batches smaller than the
    world size (a last batch of 1 on 2 ranks) are dropped on every rank alike."""

    def __init__(self, loader, ctx: Context):
        self.loader, self.ctx = loader, ctx

    def _kept(self, n: int) -> bool:
        return n >= self.ctx.world_size

    def __len__(self) -> int:
        n, b = len(self.loader.dataset), self.loader.batch_size
        sizes = [b] * (n // b) + ([n % b] if n % b else [])
        return sum(self._kept(s) for s in sizes)

    def __iter__(self):
        for batch in self.loader:
            if self._kept(len(batch["idx"])):
                yield {k: v[self.ctx.rank::self.ctx.world_size] for k, v in batch.items()}


def shard_batches(loader):
    return loader if _context is None else ShardedBatches(loader, _context)


def wrap(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The module to train: DDP under torchrun (dropout reseeded per rank), else `model`."""
    if _context is None:
        return model
    if _context.rank:
        torch.manual_seed(seed + (_context.rank << 32))
    return torch.nn.parallel.DistributedDataParallel(model)


# ---------------------------------------------------------------- replicas in sync

class ReplicasDiverged(RuntimeError):
    pass


def check_in_sync(model: torch.nn.Module, masks: dict | None) -> dict:
    """Collective: every rank's parameter and mask digests. Returns what the record keeps
    ({} outside DDP); raises ReplicasDiverged if any rank differs from rank 0."""
    if _context is None:
        return {}
    mine = {"params": digest(model.parameters()),
            "masks": digest(masks.values()) if masks else None}
    every = [None] * _context.world_size
    dist.all_gather_object(every, mine)
    if any(d != every[0] for d in every):
        raise ReplicasDiverged(f"ranks hold different parameters or masks after training: "
                               f"{[d['params'][:12] for d in every]}")
    return {"distributed": {"world_size": _context.world_size, "backend": dist.get_backend(),
                            "params_sha256": mine["params"], "masks_sha256": mine["masks"],
                            "ranks_identical": True}}


# ---------------------------------------------------------------- the run's hook

class DdpHook(RunHook):
    """The run's points under torchrun (hooks.py): rank 0's fixed mask on every rank, this
    rank's slice of every batch, the DDP-wrapped model, the ranks compared after training, and
    rank 0 alone evaluating, logging and writing the record."""

    def builds_child(self, ctx) -> bool:
        return builds_child(ctx.config["variant"])

    def after_child(self, ctx) -> None:
        ctx.child = share_child(ctx.child, ctx.config["variant"], ctx.model)

    def after_loaders(self, ctx) -> None:
        ctx.train_loader = shard_batches(ctx.train_loader)

    def before_training(self, ctx) -> None:
        ctx.module = wrap(ctx.model, ctx.cfg.seed)

    def after_training(self, ctx) -> None:
        ctx.in_sync = check_in_sync(ctx.model, ctx.child.masks)

    def writes(self, ctx) -> bool:
        return is_main()


def hook() -> DdpHook | None:
    """The DDP hook when torchrun started this process (setup joined its group), else None."""
    return DdpHook() if _context is not None else None
