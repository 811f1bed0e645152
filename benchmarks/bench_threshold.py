"""Question 2: how fast, and in how much memory, is the exact global top-k Fisher threshold?

Fisher-like scores (squared Gaussians of per-tensor scales; most word-embedding rows exactly
zero, as for tokens a task never uses) shaped like the embedded MiniLM's 22.7M parameters, and
synthetic uniform scores shaped like BERT-large's 335M. Contenders: `top_p_mask` (ours),
the previous implementation (`torch.cat` + `kthvalue`) and the official recipe (numpy
`append` in a loop + `percentile`, then `>=`; full mode, 22.7M set only).

    python benchmarks/bench_threshold.py [--quick] [--threads 1]
"""
from __future__ import annotations

import gc
import sys
import time

import numpy as np
import torch

import common

P = 0.3


def minilm_like_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, param in common.minilm().named_parameters():
        scale = 10 ** (-4 * torch.rand(1, generator=g).item())
        value = (torch.randn(param.shape, generator=g) * scale) ** 2
        if "word_embeddings" in name:   # rows of tokens the task never sees get no gradient
            value[torch.rand(param.shape[0], generator=g) < 0.9] = 0.0
        scores[name] = value
    return scores


def bert_large_like_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    """335M uniform scores in BERT-large's tensor shapes (float32 has only 2**24 distinct
    values in [0, 1), so there are ties at the threshold too)."""
    h, ffn = 1024, 4096
    shapes = [(28996, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(24):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (ffn, h), (ffn,), (h, ffn), (h,), (h,), (h,)]
    shapes += [(h, h), (h,), (2, h), (2,)]
    g = torch.Generator().manual_seed(seed)
    scores = {f"t{i}": torch.rand(s, generator=g) for i, s in enumerate(shapes)}
    n = sum(v.numel() for v in scores.values())
    scores["pad"] = torch.rand(335_000_000 - n, generator=g)   # to 335M values in all
    return scores


def previous_top_p_mask(scores, p):
    """The implementation before issue 6 (the reference semantics): one concatenated copy."""
    from childtune.method.selection import kept_count

    flat = torch.cat([s.flatten().float() for s in scores.values()])
    n = flat.numel()
    k = kept_count(p, n)
    t = flat.kthvalue(n - k + 1).values
    chosen = flat > t
    chosen[(flat == t).nonzero().flatten()[: k - int(chosen.sum())]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def official_style_mask(scores, p):
    """The official threshold: numpy append in a loop, a global percentile, `>=`."""
    r = None
    for v in scores.values():
        v = v.view(-1).numpy()
        r = v if r is None else np.append(r, v)
    polar = np.percentile(r, (1 - p) * 100)
    return {name: s >= float(polar) for name, s in scores.items()}


METHODS = {"ours": lambda s: __import__("childtune").top_p_mask(s, P),
           "previous": lambda s: previous_top_p_mask(s, P),
           "official": lambda s: official_style_mask(s, P)}
SETS = {"22m": minilm_like_scores, "335m": bert_large_like_scores}


def peak_extra(method: str, scores: str) -> float:
    """Peak resident-memory growth per value while `method` selects on `scores`, measured in
    a fresh process whose allocator returns every large block to the system (so the peak is
    the live memory, not whatever a previous benchmark left cached). Includes the masks."""
    import os
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--peak", method, scores], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _print_peak(method: str, scores: str) -> None:
    values = SETS[scores]()
    n = sum(v.numel() for v in values.values())
    METHODS[method]({"warm-up": torch.rand(1000)})   # load lazily initialised code first
    _, extra = common.peak_extra_bytes(lambda: METHODS[method](values))
    print(extra / n)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return common.median(times), out


def run(quick: bool = False, threads: int = 1) -> dict:
    from childtune import top_p_mask

    common.setup(threads)
    rows, keys = [], {}
    small = minilm_like_scores()
    n = sum(v.numel() for v in small.values())
    ours_s, ours = timed(lambda: top_p_mask(small, P), 2 if quick else 5)
    prev_s, prev = timed(lambda: previous_top_p_mask(small, P), 1 if quick else 3)
    identical = all(torch.equal(ours[k], prev[k]) for k in small)
    del ours, prev
    extra = peak_extra("ours", "22m")
    rows += [["ours: top_p_mask", f"{n / 1e6:.1f}M", ours_s, extra, "yes" if identical else "NO"],
             ["previous: torch.cat + kthvalue", f"{n / 1e6:.1f}M", prev_s,
              peak_extra("previous", "22m"), "reference"]]
    keys.update(threshold_s_22m=ours_s, threshold_extra_bytes_per_value_22m=extra,
                previous_threshold_s_22m=prev_s)
    if not quick:
        off_s, _ = timed(lambda: official_style_mask(small, P), 1)
        rows.append(["official: np.append loop + percentile", f"{n / 1e6:.1f}M", off_s,
                     peak_extra("official", "22m"), "(percentile, ties kept)"])
        keys["official_threshold_s_22m"] = off_s
    small = None  # free before the 335M set
    gc.collect()

    big = bert_large_like_scores()
    n = sum(v.numel() for v in big.values())
    big_s, _ = timed(lambda: top_p_mask(big, P), 1)
    if not quick:
        prev_big_s, _ = timed(lambda: previous_top_p_mask(big, P), 1)
    big = None
    gc.collect()
    big_extra = peak_extra("ours", "335m")
    rows.append(["ours: top_p_mask", f"{n / 1e6:.0f}M", big_s, big_extra, "-"])
    keys.update(threshold_s_335m=big_s, threshold_extra_bytes_per_value_335m=big_extra)
    if not quick:
        rows.append(["previous: torch.cat + kthvalue", f"{n / 1e6:.0f}M", prev_big_s,
                     peak_extra("previous", "335m"), "-"])
        keys["previous_threshold_s_335m"] = prev_big_s
    table = common.markdown_table(["threshold (p = 0.3)", "values", "seconds",
                                   "peak extra bytes / value (masks incl.)", "same mask as previous"],
                                  rows)
    return {"keys": keys, "table": table}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak"]:   # internal: one memory measurement (see peak_extra)
        _print_peak(*sys.argv[2:4])
    else:
        common.cli(run, __doc__)
