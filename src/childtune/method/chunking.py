"""The chunk length of the chunked kernels (exact selection, the maskers, the Fisher pass).

Elements per pass. Under torch's parallel grain size (32768), so every op on a chunk runs
inline on the calling thread: no thread barrier (on a busy machine a barrier can wait a whole
scheduler time slice for a descheduled thread) and the scratch buffers stay in L1/L2 cache.
The results never depend on it or on the thread count. Read it as `chunking.CHUNK` at call
time (not bound by `from ... import`), so that one setting governs every kernel."""
from __future__ import annotations

import torch

CHUNK = 30_720


def chunks(flats: list[torch.Tensor]):
    """The flat tensors' values, CHUNK at a time, tensor by tensor."""
    for f in flats:
        for start in range(0, f.numel(), CHUNK):
            yield f[start:start + CHUNK]
