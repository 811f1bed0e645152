"""Exact selection of a child network among scores: the global top (or bottom) round(p*N)
entries, the official percentile rule, and a uniformly random child network of that size.

    top_p_mask(fisher, p=0.3)       # CT_D's child network
    bottom_p_mask(fisher, p=0.3)    # the lowest-Fisher ablation
    random_mask(shapes, p=0.3, seed=1)

Masks are dicts {parameter name: bool tensor of the parameter's shape}, True = child."""
from __future__ import annotations

import math

import numpy as np
import torch

from . import chunking
from .chunking import chunks


def kept_count(p: float, n: int) -> int:
    """The exact number of kept entries: round(p * n), halves rounded up."""
    return int(math.floor(p * n + 0.5))


# The exact selection gathers at most max(this, n/128) values.
_MIN_CANDIDATES = 1 << 16


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
        if any(torch.isnan(chunk.sum()) for chunk in chunks([f])) and torch.isnan(f).any():
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


def _compare(f: torch.Tensor, op, value: float) -> torch.Tensor:
    """op(f, value) as a new bool tensor, written chunk by chunk."""
    out = torch.empty(f.shape, dtype=torch.bool, device=f.device)
    for start in range(0, f.numel(), chunking.CHUNK):
        op(f[start:start + chunking.CHUNK], value, out=out[start:start + chunking.CHUNK])
    return out


def _count(flats: list[torch.Tensor], op, value: float) -> int:
    """How many values satisfy `op(x, value)`; chunked, comparing into a cached float buffer
    (exact: a chunk's count is an integer below 2**24)."""
    scratch = torch.empty(min(chunking.CHUNK, max(f.numel() for f in flats)))
    total = 0
    for chunk in chunks(flats):
        out = scratch[:chunk.numel()]
        total += int(op(chunk, value, out=out).sum())
    return total


def _between(flats: list[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
    """All values in [lo, hi], chunk by chunk."""
    scratch = torch.empty(2, min(chunking.CHUNK, max(f.numel() for f in flats)), dtype=torch.bool)
    parts = []
    for chunk in chunks(flats):
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
