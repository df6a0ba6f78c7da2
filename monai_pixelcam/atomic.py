"""Atomic file writes: every file the package writes appears whole or not at all.

A run killed while writing (a checkpoint, a stored map, a datalist, a figure, a slide's outputs) must not
leave a truncated file where a complete one was, so each writer writes a temporary file in the target's
folder and renames it over the target (``os.replace`` is atomic within one file system). This module is the
one place that does it: JSON, PNG, CSV, NIfTI and any other format through :func:`atomic_path`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "TMP_MARKER",
    "atomic_path",
    "remove_stale_temporaries",
    "write_json_atomic",
    "write_text_atomic",
    "write_png_atomic",
    "write_csv_atomic",
    "write_nifti_atomic",
]

#: Part of every temporary file name (``.<hex>.tmp.<target name>``); a finished write leaves none behind.
TMP_MARKER = ".tmp."
_TMP_NAME = re.compile(r"\.[0-9a-f]{12}" + re.escape(TMP_MARKER) + r".+")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left under ``folder`` (recursively) when a run was killed
    (``kill -9`` skips its cleanup); call it before a run that owns ``folder`` writes anything. Returns them."""
    stale = [p for p in Path(folder).rglob(f"*{TMP_MARKER}*") if p.is_file() and _TMP_NAME.fullmatch(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it to ``path``.

    The temporary name ends with the target's name, so writers that pick a format from the suffix
    (nibabel's ``.nii.gz``) still work. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:12]}{TMP_MARKER}{path.name}")
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


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_png_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as a PNG at ``path`` atomically.

    Args:
        array: ``H x W`` (uint8, uint16 or bool; bool is written as 0/255), ``H x W x 3`` or
            ``H x W x 4`` uint8.
    """
    from PIL import Image

    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or (
        arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8
    )
    if not ok:
        raise ValueError(f"{path}: cannot write a PNG from an array of shape {arr.shape} and dtype {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return path


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Write a CSV (header + rows) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    writer.writerows([list(r) for r in rows])
    return write_text_atomic(buf.getvalue(), path)


def write_nifti_atomic(path: str | os.PathLike, score: np.ndarray) -> Path:
    """Write an ``H x W`` float map as a 2D NIfTI (``.nii.gz``) through nibabel, atomically.

    The array is stored transposed, ``W x H`` (x = column, y = row), with an identity affine: the layout
    MONAI's default image readers use (``LoadImage`` of the PNG mask and of this file give the same
    orientation). ``nibabel.load(path).get_fdata().T`` gives back the ``H x W`` map.
    """
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(score, dtype=np.float32).T)
    image = nib.Nifti1Image(data, affine=np.eye(4))
    image.header.set_data_dtype(np.float32)
    with atomic_path(path) as tmp:  # the temporary name ends with the real one: nibabel picks .nii.gz from it
        nib.save(image, str(tmp))
    return Path(path)
