"""Child networks and the gradient masking that trains them.

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

import math
import re

import numpy as np
import torch


def kept_count(p: float, n: int) -> int:
    """The exact number of kept entries: round(p * n), halves rounded up."""
    return int(math.floor(p * n + 0.5))


def encoder_layer_names(model: torch.nn.Module) -> list[str]:
    """The official CT_D scope: trainable parameters whose name contains 'layer' (the encoder
    blocks; embeddings, pooler and classifier are left out)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and "layer" in n]


def scope_names(model: torch.nn.Module, scope: str, k: int | None = None) -> list[str]:
    """The parameters a mask is selected among; with `k`, only those inside the top k encoder
    layers (Top-K tuning's trained layers)."""
    if scope == "layers":
        names = encoder_layer_names(model)
    elif scope == "all":
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        raise ValueError(f"scope must be 'layers' or 'all', got {scope!r}")
    if k is None:
        return names
    first = first_top_layer(model, k)
    return [n for n in names if (index := layer_index(n)) is not None and index >= first]


# ---------------------------------------------------------------- selecting child networks

# Elements per pass of the chunked kernels below. Under torch's parallel grain size (32768), so
# every op on a chunk runs inline on the calling thread: no thread barrier (on a busy machine a
# barrier can wait a whole scheduler time slice for a descheduled thread) and the scratch
# buffers stay in L1/L2 cache. The results never depend on it or on the thread count.
_CHUNK = 30_720
_MIN_CANDIDATES = 1 << 16  # the exact selection gathers at most max(this, n/128) values


def _ranked_selection(scores: dict[str, torch.Tensor], k: int, largest: bool) -> dict[str, torch.Tensor]:
    """Exactly k entries: the k best under the total order (value, then lower flat index first
    for `largest`); for the bottom, the k last of that same order. So top-k and bottom-k are
    disjoint whenever 2k <= N, and ties never depend on the sort algorithm.

    The flat index runs over the tensors in dict order. The threshold is found by an exact
    selection that never concatenates the scores (see `_kth_largest`); the only full-size
    allocation is the returned bool masks (1 byte per value)."""
    flats = [s.detach().reshape(-1).float() for s in scores.values()]
    n = sum(f.numel() for f in flats)
    if k <= 0 or k >= n:
        return {name: torch.full(s.shape, k >= n, dtype=torch.bool, device=s.device)
                for name, s in scores.items()}
    for name, f in zip(scores, flats):
        if any(torch.isnan(chunk.sum()) for chunk in _chunks([f])) and torch.isnan(f).any():
            raise ValueError(f"scores for {name!r} contain NaN; a child network needs finite "
                             f"scores (did the Fisher pass diverge?)")
    # t is the k-th largest (top) or the k-th smallest = (n-k+1)-th largest (bottom) value.
    t, n_above, n_tied = _kth_largest(flats, k if largest else n - k + 1)
    if largest:
        need = k - n_above                    # ties taken from the front of the flat order
        order = range(len(flats))
    else:
        need = k - (n - n_above - n_tied)     # ties taken from the back of the flat order
        order = reversed(range(len(flats)))
    take_all = need == n_tied   # the usual case (no ties at all): one comparison per tensor
    chosen: list[torch.Tensor] = [flats[0]] * len(flats)
    for i in order:
        f = flats[i]
        if take_all:
            chosen[i] = _compare(f, torch.ge if largest else torch.le, t)
            continue
        mask = _compare(f, torch.gt if largest else torch.lt, t)
        if need > 0:
            tied = (f == t).nonzero().flatten()
            take = tied[:need] if largest else tied[max(tied.numel() - need, 0):]
            mask[take] = True
            need -= take.numel()
        chosen[i] = mask
    return {name: m.view(s.shape) for (name, s), m in zip(scores.items(), chosen)}


def _chunks(flats: list[torch.Tensor]):
    for f in flats:
        for start in range(0, f.numel(), _CHUNK):
            yield f[start:start + _CHUNK]


def _compare(f: torch.Tensor, op, value: float) -> torch.Tensor:
    """op(f, value) as a new bool tensor, written chunk by chunk."""
    out = torch.empty(f.shape, dtype=torch.bool, device=f.device)
    for start in range(0, f.numel(), _CHUNK):
        op(f[start:start + _CHUNK], value, out=out[start:start + _CHUNK])
    return out


def _count(flats: list[torch.Tensor], op, value: float) -> int:
    """How many values satisfy `op(x, value)`; chunked, comparing into a cached float buffer
    (exact: a chunk's count is an integer below 2**24)."""
    scratch = torch.empty(min(_CHUNK, max(f.numel() for f in flats)))
    total = 0
    for chunk in _chunks(flats):
        out = scratch[:chunk.numel()]
        total += int(op(chunk, value, out=out).sum())
    return total


def _between(flats: list[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
    """All values in [lo, hi], chunk by chunk."""
    scratch = torch.empty(2, min(_CHUNK, max(f.numel() for f in flats)), dtype=torch.bool)
    parts = []
    for chunk in _chunks(flats):
        inside, below_hi = scratch[:, :chunk.numel()]
        torch.ge(chunk, lo, out=inside)
        inside &= torch.le(chunk, hi, out=below_hi)
        parts.append(chunk[inside])
    return torch.cat(parts)


def _float_key(x: float) -> int:
    """A monotone integer key of a float32 value (its bit pattern, sign-folded), used to
    bisect between two floats."""
    bits = torch.tensor([x], dtype=torch.float32).view(torch.int32).item() & 0xFFFFFFFF
    return bits ^ 0x80000000 if bits < 0x80000000 else ~bits & 0xFFFFFFFF


def _key_float(key: int) -> float:
    bits = key ^ 0x80000000 if key >= 0x80000000 else ~key & 0xFFFFFFFF
    return torch.tensor([bits - (1 << 32) if bits >= 1 << 31 else bits],
                        dtype=torch.int32).view(torch.float32).item()


def _kth_largest(flats: list[torch.Tensor], rank: int) -> tuple[float, int, int]:
    """The rank-th largest value t over all tensors (1-based, no NaN), with how many values are
    > t and == t. Exact, without a concatenated copy:

    1. a strided sample guesses a narrow bracket [lo, hi] around t;
    2. one counting pass checks it: count(x > hi) < rank <= count(x >= lo), else the bracket is
       moved and, while it holds too many values, bisected on the float bit patterns;
    3. the few values inside the bracket are gathered and `kthvalue` picks t among them.
    Only step 2's counts and step 3's candidates (at most n/128 values) are held."""
    n = sum(f.numel() for f in flats)
    limit = max(_MIN_CANDIDATES, n >> 7)
    lo, hi = -math.inf, math.inf
    n_ge_lo, n_gt_hi = n, 0          # invariant: n_gt_hi < rank <= n_ge_lo
    stride = max(1, n >> 18)
    sample = torch.cat([f[::stride] for f in flats])
    m = sample.numel()
    at = (rank - 1) * m / n          # t's position in the sample, counted from the top
    spread = 3.5 * math.sqrt(m * (rank / n) * (1 - rank / n)) + 16
    guesses = [float(sample.kthvalue(m - int(i)).values)   # the (i+1)-th largest sampled
               for i in (at - spread, at + spread) if 0 <= i < m]
    for guess in guesses:   # larger guess first; each either tightens hi or raises lo
        lo, hi, n_ge_lo, n_gt_hi = _narrow(flats, guess, rank, lo, hi, n_ge_lo, n_gt_hi)
    while n_ge_lo - n_gt_hi > limit and lo < hi:
        a, b = _float_key(lo), _float_key(hi)
        mid = _key_float((a + b + 1) // 2)
        lo, hi, n_ge_lo, n_gt_hi = _narrow(flats, mid, rank, lo, hi, n_ge_lo, n_gt_hi)
    if not lo < hi:          # the bracket is a single value
        return lo, n_gt_hi, n_ge_lo - n_gt_hi
    candidates = _between(flats, lo, hi)
    inner = rank - n_gt_hi   # t is the inner-th largest candidate
    t = float(candidates.kthvalue(candidates.numel() - inner + 1).values)
    return (t, n_gt_hi + int((candidates > t).count_nonzero()),
            int((candidates == t).count_nonzero()))


def _narrow(flats, value: float, rank: int, lo, hi, n_ge_lo, n_gt_hi):
    """Split the bracket at `value` (if inside it) by counting the values >= it."""
    value += 0.0   # -0.0 -> +0.0: bounds compare like the values, so the bisection advances
    if not lo < value <= hi:
        return lo, hi, n_ge_lo, n_gt_hi
    n_ge = _count(flats, torch.ge, value)
    if n_ge >= rank:                 # t >= value
        return value, hi, n_ge, n_gt_hi
    below = torch.nextafter(torch.tensor(value), torch.tensor(-math.inf)).item()
    return lo, below, n_ge_lo, n_ge  # t < value, so t <= the next float below it


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start:start + t.numel()].view(t.shape).clone()
        start += t.numel()
    return out


def top_p_mask(scores: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """CT_D's child network: the global top round(p*N) entries of the Fisher information."""
    n = sum(s.numel() for s in scores.values())
    return _ranked_selection(scores, kept_count(p, n), largest=True)


def bottom_p_mask(scores: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """The ablation's lowest-Fisher child network: the global bottom round(p*N) entries."""
    n = sum(s.numel() for s in scores.values())
    return _ranked_selection(scores, kept_count(p, n), largest=False)


def percentile_mask(scores: dict[str, torch.Tensor], p: float,
                    largest: bool = True) -> dict[str, torch.Tensor]:
    """The official rule (`variant.count=official`): keep every value >= numpy's linear-
    interpolation percentile at (1 - p) * 100 of all values, ties kept. Without ties that is
    floor(p*N + 1 - p) entries (the threshold sits at position (1 - p)(N - 1) of the sorted
    values), one more than round(p*N) for some N when p < 0.5 and one fewer for some when
    p > 0.5 (up to numpy's rounding of that position). `largest=False` (the lowest-Fisher
    ablation, which the official code lacks): values <= the percentile at p * 100. Holds a
    concatenated float32 copy of the values, as the official code does."""
    values = np.concatenate([s.detach().reshape(-1).float().cpu().numpy() for s in scores.values()])
    polar = np.percentile(values, (1 - p) * 100 if largest else p * 100)
    return {name: torch.from_numpy(s.detach().float().cpu().numpy() >= polar if largest
                                   else s.detach().float().cpu().numpy() <= polar).to(s.device)
            for name, s in scores.items()}


def random_mask(shapes: dict[str, torch.Size], p: float, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random child network with exactly round(p*N) entries, uniformly chosen."""
    n = sum(math.prod(s) for s in shapes.values())
    generator = torch.Generator().manual_seed(seed)
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: kept_count(p, n)]] = True
    return _unflatten(flat, {k: torch.empty(s, dtype=torch.bool) for k, s in shapes.items()})


def top_layers_mask(model: torch.nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Top-K tuning's fixed child network: the top k encoder layers, the pooler and the head
    (everything outside the backbone) are kept whole; the embeddings and the lower layers are
    frozen. Covers every trainable parameter."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    first = first_top_layer(model, k)
    backbone = f"{getattr(model, 'base_model_prefix', '')}."

    def kept(name: str) -> bool:
        index = layer_index(name)
        if index is not None:
            return index >= first
        return not name.startswith(backbone) or "pooler" in name

    params = dict(model.named_parameters())
    return {n: torch.full_like(params[n], kept(n), dtype=torch.bool) for n in names}


def first_top_layer(model: torch.nn.Module, k: int) -> int:
    """The index of the lowest of the model's top k encoder layers; a ValueError unless
    0 < k <= the number of layers."""
    n_layers = len({layer_index(n) for n in encoder_layer_names(model)} - {None})
    if not 0 < k <= n_layers:
        raise ValueError(f"k={k} must be between 1 and the model's {n_layers} encoder layers")
    return n_layers - k


@torch.no_grad()
def prune_(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of the parameters the masks cover (the 'prune' ablation)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


# ---------------------------------------------------------------- gradient maskers

class _GradientMasker:
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
            buffers[dtype] = torch.empty(min(_CHUNK, longest), dtype=dtype)
        return buffers[dtype]


def _multiply_in_chunks(grad: torch.Tensor, scratch: torch.Tensor, fill) -> None:
    """grad *= m chunk by chunk (CPU tensors), where `fill(out, start)` writes m[start:start+len(out)] into
    `out` (a slice of the cached scratch buffer). A plain float multiply per entry, so the
    result is bit-identical to multiplying by the whole mask tensor at once."""
    flat = grad.view(-1) if grad.is_contiguous() else grad.contiguous().view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK]
        factor = scratch[:chunk.numel()]
        fill(factor, start)
        chunk.mul_(factor)
    if flat.data_ptr() != grad.data_ptr():
        grad.copy_(flat.view(grad.shape))


class ChildTuningF(_GradientMasker):
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
    optimizers that declare it (childtune.optim.AdamWHF2021)."""
    return (type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
            or getattr(type(optimizer), "zero_first_moment_is_no_update", False))


class ChildTuningD(_GradientMasker):
    """A fixed child network (CT_D, random or lowest-Fisher): gradients of non-child entries
    are zeroed every step, with no rescaling. Parameters without a mask update freely.

    With AdamW, masked entries keep zero moments and so move only by decoupled weight decay
    (the official behaviour). `freeze_exactly=True` restores them after every step instead, so
    they never move at all (no weight decay on frozen entries).

    Speed, never the numbers: torch's Adam(W) kernels are 2-3x slower on second moments that
    are exactly 0 (measured: a foreach AdamW step over 21M values, 70% frozen, 149 ms; 61 ms
    with the trick below). So once a parameter's Adam(W) state exists, its frozen entries'
    `exp_avg_sq` (and `max_exp_avg_sq`) are set to the dtype's largest value. Their update is
    lr * exp_avg / (sqrt(v) + eps) with exp_avg exactly 0, i.e. exactly 0 whatever v is; this
    is checked first (a coupled weight decay, `Adam(weight_decay>0)`, makes exp_avg nonzero,
    and then nothing is changed). Parameters stay bit-identical (tested)."""

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

_MODULE_TYPES = [
    ("attn_q", r"attention\.self\.query|\.q_proj|\.q\b"),
    ("attn_k", r"attention\.self\.key|\.k_proj|\.k\b"),
    ("attn_v", r"attention\.self\.value|\.v_proj|\.v\b"),
    ("attn_o", r"attention\.output\.dense|\.o_proj|\.o\b"),
    ("layernorm", r"LayerNorm|layer_norm"),
    ("ffn_in", r"intermediate\.dense|ff\.layer_1"),
    ("ffn_out", r"output\.dense|ff\.layer_2"),
    ("embeddings", r"embeddings|word_embedding|mask_emb"),
    ("pooler", r"pooler|sequence_summary"),
    ("classifier", r"classifier|logits_proj"),
]


def module_type(name: str) -> str:
    for label, pattern in _MODULE_TYPES:
        if re.search(pattern, name):
            return label
    return "other"


def layer_index(name: str) -> int | None:
    match = re.search(r"layer\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def mask_statistics(masks: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """Kept fraction overall, per encoder layer and per module type; plus how much of the
    model the mask covers."""
    total_params = sum(p.numel() for p in model.parameters())
    kept = {n: int(m.sum()) for n, m in masks.items()}
    size = {n: m.numel() for n, m in masks.items()}

    def grouped(key):
        acc: dict = {}
        for name in masks:
            group = key(name)
            k, s = acc.get(group, (0, 0))
            acc[group] = (k + kept[name], s + size[name])
        return {str(g): k / s for g, (k, s) in sorted(acc.items(), key=lambda kv: str(kv[0]))}

    n_masked = sum(size.values())
    return {
        "kept": sum(kept.values()),
        "masked_entries": n_masked,
        "kept_fraction": sum(kept.values()) / n_masked if n_masked else None,
        "scope_fraction_of_model": n_masked / total_params,
        "per_layer": grouped(lambda n: layer_index(n) if layer_index(n) is not None else "none"),
        "per_module": grouped(module_type),
    }
