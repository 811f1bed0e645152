"""The gradient masking that trains a child network (the maskers), and pruning by a mask.
Which entries form a fixed child network is chosen in selection.py (by score) and scopes.py
(by layer).

A masker multiplies each masked parameter's gradient in place just before `optimizer.step()`
(a step pre-hook), i.e. after gradient clipping and before the optimizer's moment updates, so
Adam's moments see the masked gradient, as in the official code. Works with any torch
optimizer, and with the HF Trainer (pass the optimizer in `optimizers=(optimizer, None)`).

    masker = ChildTuningF(model.named_parameters(), p=0.3, seed=1)   # CT_F
    masker = ChildTuningD(model, top_p_mask(fisher, p=0.3))          # CT_D (fixed mask)
    masker.attach(optimizer)

Masks are dicts {parameter name: bool tensor of the parameter's shape}, True = child (updated).
"""
from __future__ import annotations

import numpy as np
import torch

from . import chunking


@torch.no_grad()
def prune_(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of the parameters the masks cover (the 'prune' ablation)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


# ---------------------------------------------------------------- gradient maskers

class GradientMasker:
    """What every masker does: mask the gradients before each optimizer step."""

    params: list[torch.nn.Parameter]

    def attach(self, optimizer: torch.optim.Optimizer):
        """Mask gradients right before every `optimizer.step()`; returns the hook handles."""
        return [optimizer.register_step_pre_hook(lambda *_: self.apply())]

    def apply(self) -> None:
        raise NotImplementedError

    def _scratch(self, dtype: torch.dtype) -> torch.Tensor:
        """One reusable buffer per gradient dtype, a chunk long (so it stays in cache)."""
        buffers = self.__dict__.setdefault("_buffers", {})
        if dtype not in buffers:
            longest = max((q.numel() for q in self.params), default=1)
            buffers[dtype] = torch.empty(min(chunking.CHUNK, longest), dtype=dtype)
        return buffers[dtype]


def _multiply_in_chunks(grad: torch.Tensor, scratch: torch.Tensor, fill) -> None:
    """grad *= m chunk by chunk (CPU tensors), where `fill(out, start)` writes m[start:start+len(out)] into
    `out` (a slice of the cached scratch buffer). A plain float multiply per entry, so the
    result is bit-identical to multiplying by the whole mask tensor at once."""
    flat = grad.view(-1) if grad.is_contiguous() else grad.contiguous().view(-1)
    for start in range(0, flat.numel(), chunking.CHUNK):
        chunk = flat[start:start + chunking.CHUNK]
        factor = scratch[:chunk.numel()]
        fill(factor, start)
        chunk.mul_(factor)
    if flat.data_ptr() != grad.data_ptr():
        grad.copy_(flat.view(grad.shape))


class ChildTuningF(GradientMasker):
    """CT_F: a fresh Bernoulli(p) mask per step for every masked parameter; kept gradient
    entries are multiplied by 1/p (rounded to the gradient's dtype), masked ones by 0. Draws
    come from the masker's own bit generator (seeded by `seed`), so the global random stream
    (dropout) is the same as in a vanilla run; with p = 1 nothing is drawn and the gradients
    are left bit-identical.

    How an entry is drawn (`bits`, 16 by default; 32 was the rule before issue 15, kept so
    that older configs, which name no `variant.draw_bits`, reproduce): per tensor, the masker's
    SFC64 bit generator (numpy; raw 64-bit words, a stream numpy keeps fixed for a given seed)
    gives 64-bit words, each read as 64 / bits uniform signed `bits`-bit integers s (entry i
    of a tensor reads part i % (64 / bits) of word i // (64 / bits), in memory order; the
    unused parts of a tensor's last word are dropped), and an entry is kept iff
    s < K - 2**(bits - 1) with K = min(round(p * 2**bits), 2**bits - 1). So the keep
    probability is p quantised to K / 2**bits: within 2**-17 of p with 16 bits (2**-16 for p
    above 1 - 2**-17), within 2**-33 with 32 bits. The scale is the nominal 1/p, not
    2**bits / K: E[kept * 1/p] = 1 + d with |d| <= 2**-17 / p for 16 bits (5e-5 relative for
    p = 0.1; far below the minibatch noise of any gradient). (`torch.rand(...) < p`, the
    textbook way, quantises p to 2**-24; the official `Bernoulli(p).sample()` to float32.)

    Speed: 16-bit draws take a quarter of a word per entry, half the random bits of the
    32-bit rule, and the comparison writes the 1.0/0.0 factor straight into a cached float
    buffer. The draws are serial and the tensors are walked chunk by chunk with a chunk
    length divisible by 4, so the masks depend on the seed only, never on the thread count or
    the chunking. `kept` / `seen` count the entries kept and drawn (the observed keep rate)."""

    def __init__(self, named_params, p: float, seed: int, bits: int = 16):
        if bits not in (16, 32):
            raise ValueError(f"bits must be 16 or 32, got {bits!r}")
        self.named = [(n, q) for n, q in named_params if q.requires_grad]
        self.params = [q for _, q in self.named]
        self.p = float(p)
        self.seed = seed
        self.bits = bits
        self.generator = np.random.SFC64(seed)   # CPU gradients; others: _apply_on_device
        self.kept = 0
        self.seen = 0
        self._device_generators: dict[torch.device, torch.Generator] = {}  # GPU gradients
        self._device_kept: dict[torch.device, torch.Tensor] = {}   # their kept counts, on device
        self._per_word = 64 // bits
        self._np_dtype, self._torch_dtype = ((np.int16, torch.int16) if bits == 16
                                             else (np.int32, torch.int32))
        # A uniform s in [-2**(bits-1), 2**(bits-1)) is below K - 2**(bits-1) w.p. K / 2**bits.
        self._threshold = min(round(self.p * 2 ** bits), 2 ** bits - 1) - 2 ** (bits - 1)
        self._scale = 1.0 / self.p

    @torch.no_grad()
    def apply(self) -> None:
        for param in self.params:
            grad = param.grad
            if grad is None:
                continue
            if self.p >= 1.0:
                self.kept += grad.numel()
                self.seen += grad.numel()
            elif grad.device.type == "cpu":
                _multiply_in_chunks(grad, self._scratch(grad.dtype), self._draw)
            else:
                self._apply_on_device(grad)

    def _draw(self, out: torch.Tensor, start: int) -> None:
        """Fill `out` with a fresh mask times 1/p: 1/p where kept, 0 where masked."""
        n = out.numel()
        words = self.generator.random_raw(-(-n // self._per_word))
        parts = words.view(self._np_dtype)[:n]
        torch.lt(torch.from_numpy(parts), self._threshold, out=out)   # 1.0 / 0.0
        exact_sum = out.dtype in (torch.float32, torch.float64)  # a chunk's count < 2**24
        self.kept += int(out.sum()) if exact_sum else int(out.count_nonzero())
        self.seen += n
        out.mul_(self._scale)

    def _apply_on_device(self, grad: torch.Tensor) -> None:
        """Gradients on a GPU: the same rule, drawn on their device in one go per tensor, from
        a torch generator of that device seeded by `seed` (Philox on CUDA). So GPU masks are a
        different stream than CPU masks of the same seed, but the same on every rank (DDP).
        The kept count stays on the device until `keep_rate()` (no sync per step)."""
        if grad.device not in self._device_generators:
            self._device_generators[grad.device] = torch.Generator(
                device=grad.device).manual_seed(self.seed)
            self._device_kept[grad.device] = torch.zeros((), dtype=torch.int64,
                                                         device=grad.device)
        n = grad.numel()
        words = torch.empty(-(-n // self._per_word), dtype=torch.int64, device=grad.device)
        words.random_(-2 ** 63, None, generator=self._device_generators[grad.device])
        keep = words.view(self._torch_dtype)[:n].view(grad.shape) < self._threshold
        self._device_kept[grad.device] += keep.sum()
        self.seen += n
        grad.mul_(keep.to(grad.dtype).mul_(self._scale))

    def keep_rate(self) -> float | None:
        kept = self.kept + sum(int(k) for k in self._device_kept.values())
        return kept / self.seen if self.seen else None


def _zero_first_moment_is_no_update(optimizer: torch.optim.Optimizer) -> bool:
    """Adam-type optimizers whose update of an entry is exactly 0 while its exp_avg is 0,
    whatever its exp_avg_sq: torch's Adam(W) (every kernel: per-tensor, foreach, fused) and
    optimizers that declare it (childtune.run.optim.AdamWHF2021)."""
    return (type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
            or getattr(type(optimizer), "zero_first_moment_is_no_update", False))


class ChildTuningD(GradientMasker):
    """A fixed child network (CT_D, random or lowest-Fisher): gradients of non-child entries
    are zeroed every step, with no rescaling. Parameters without a mask update freely.

    With AdamW, masked entries keep zero moments and so move only by decoupled weight decay
    (the official behaviour). `freeze_exactly=True` restores them after every step instead, so
    they never move at all (no weight decay on frozen entries).

    Speed, never the numbers: torch's Adam(W) kernels are slower on second moments that are
    exactly 0 (benchmarks/README.md, "torch's AdamW is slow on exact zeros", times a step with
    and without the trick below). So once a parameter's Adam(W) state exists, its frozen
    entries' `exp_avg_sq` (and `max_exp_avg_sq`) are set to the dtype's largest value. Their
    update is lr * exp_avg / (sqrt(v) + eps) with exp_avg exactly 0, i.e. exactly 0 whatever v
    is; this is checked first (a coupled weight decay, `Adam(weight_decay>0)`, makes exp_avg
    nonzero, and then nothing is changed). Parameters stay bit-identical (tested)."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor],
                 freeze_exactly: bool = False):
        named = dict(model.named_parameters())
        missing = sorted(set(masks) - set(named))
        if missing:
            raise ValueError(f"masks name parameters the model lacks: {missing[:3]}")
        self.params = [named[n] for n in masks]
        self.masks = [masks[n].to(named[n].device) for n in masks]
        # The same masks as bytes (0/1), read chunk by chunk into a float buffer: multiplying
        # by a float 0/1 gives exactly grad * bool_mask, at the speed of a float multiply.
        self._bytes = [m.to(torch.bool).contiguous().view(-1).view(torch.uint8).cpu()
                       for m in self.masks]
        self.freeze_exactly = freeze_exactly
        self._before: list[torch.Tensor] = []

    def attach(self, optimizer: torch.optim.Optimizer, fill_frozen_moments: bool = True):
        handles = super().attach(optimizer)
        if self.freeze_exactly:
            handles.append(optimizer.register_step_post_hook(lambda *_: self._restore()))
        if fill_frozen_moments and _zero_first_moment_is_no_update(optimizer):
            pending = set(range(len(self.params)))
            handles.append(optimizer.register_step_post_hook(
                lambda *_: self._fill_frozen_moments(optimizer, pending)))
        return handles

    @torch.no_grad()
    def _fill_frozen_moments(self, optimizer: torch.optim.Optimizer, pending: set[int]) -> None:
        """The speed trick of the class docstring, once per parameter, after the step that
        created its state."""
        for i in list(pending):
            state = optimizer.state.get(self.params[i]) or {}
            if "exp_avg_sq" not in state:
                continue
            pending.discard(i)
            frozen = ~self.masks[i]
            if state["exp_avg"].masked_select(frozen).any():
                continue
            for key in ("exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    state[key].masked_fill_(frozen, torch.finfo(state[key].dtype).max)

    @torch.no_grad()
    def apply(self) -> None:
        for param, mask, mask_bytes in zip(self.params, self.masks, self._bytes):
            if param.grad is None:
                continue
            if param.grad.device.type != "cpu":
                self._apply_on_device(param.grad, mask)
                continue
            _multiply_in_chunks(param.grad, self._scratch(param.grad.dtype),
                                lambda out, start, m=mask_bytes: out.copy_(m[start:start + out.numel()]))
        if self.freeze_exactly:
            self._before = [param.detach().clone() for param in self.params]

    @staticmethod
    def _apply_on_device(grad: torch.Tensor, mask: torch.Tensor) -> None:
        """Gradients on a GPU: one multiply by the mask kept on their device."""
        grad.mul_(mask)

    @torch.no_grad()
    def _restore(self) -> None:
        for param, mask, before in zip(self.params, self.masks, self._before):
            param.copy_(torch.where(mask, param, before))
        self._before = []


# ---------------------------------------------------------------- statistics