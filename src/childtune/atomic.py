"""Crash- and concurrency-safe file writes: a unique temp file next to the target, fsync, rename.

    with atomic_file(path, "wb") as f:
        f.write(...)

Readers see the old file or the whole new one, never a part: an exception removes the temp
file, and a SIGKILL leaves at most a hidden `.<name>.<random>.tmp` that nothing reads. Two
processes writing the same path each write their own temp file; the last rename wins and the
file is always complete."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide records from a shared group
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
