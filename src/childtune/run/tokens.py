"""The token cache: a split's tokenized features kept under `<runtime.cache_dir>/tokens/`,
keyed by the tokenizer's and the examples' fingerprints and max_seq_length, so that runs on the
same data skip the tokenizer. A hit is exactly what tokenizing returns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .data import Split, fingerprint, tokenize
from ..atomic import atomic_file


TOKENS_CACHE = "tokens"


def tokenizer_fingerprint(tokenizer) -> str:
    """What the tokenizer's output depends on: its class, its full serialized state (vocab,
    normalizer, pre-tokenizer, post-processor: `backend_tokenizer.to_str()` of a fast
    tokenizer; the vocab and init arguments otherwise) and its special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True,
                            default=str).encode())
    h.update(json.dumps([tokenizer.all_special_tokens, tokenizer.padding_side,
                         tokenizer.truncation_side], default=str).encode())
    return h.hexdigest()


def cached_features(split: Split, tokenizer, max_seq_length: int, cache_dir: Path | None,
                    name: str) -> list[dict]:
    """`tokenize(split, ...)`, kept under `<cache_dir>/tokens/` keyed by the tokenizer's and
    the examples' fingerprints and max_seq_length (`name`, e.g. "rte-train", only labels the
    file). A hit returns exactly what tokenizing returns; concurrent writers are safe (each
    writes its own temp file, then renames). No random state is used."""
    if cache_dir is None:
        return tokenize(split, tokenizer, max_seq_length)
    key = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer),
                                     fingerprint(split), max_seq_length]).encode())
    path = Path(cache_dir) / TOKENS_CACHE / f"{name}-{key.hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            return _unpack(np.load(path), len(split))
        except (OSError, ValueError, KeyError):
            pass   # unreadable: tokenize again and replace it
    features = tokenize(split, tokenizer, max_seq_length)
    with atomic_file(path, "wb") as f:
        np.savez(f, **_pack(features))
    return features


def _pack(features: list[dict]) -> dict[str, np.ndarray]:
    """Each key's lists concatenated, plus their lengths."""
    keys = list(features[0]) if features else []
    packed = {"lengths": np.array([len(f["input_ids"]) for f in features], dtype=np.int64),
              "keys": np.array(keys)}
    for k in keys:
        packed["values_" + k] = np.array([v for f in features for v in f[k]], dtype=np.int64)
    return packed


def _unpack(packed, n: int) -> list[dict]:
    lengths = packed["lengths"]
    if len(lengths) != n:
        raise ValueError("cached token file does not match the split")
    ends = np.cumsum(lengths).tolist()
    starts = [0] + ends[:-1]
    columns = {str(k): packed["values_" + str(k)].tolist() for k in packed["keys"]}
    return [{k: col[a:b] for k, col in columns.items()} for a, b in zip(starts, ends)]
