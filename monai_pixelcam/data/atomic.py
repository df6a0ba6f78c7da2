"""Atomic file writes: every file the package writes appears whole or not at all.

A run killed while writing (a checkpoint, a stored map, a datalist, a figure) must not leave a truncated
file where a complete one was, so each writer writes a temporary file in the target's folder and renames
it over the target (``os.replace`` is atomic within one file system).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_json_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it to ``path``.

    The temporary name ends with the target's name, so writers that pick a format from the suffix
    (nibabel's ``.nii.gz``) still work. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:12]}.tmp.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(payload, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return Path(path)
