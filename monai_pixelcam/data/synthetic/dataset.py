"""A synthetic dataset on disk: balanced labels, GlaS-like splits, image and mask PNGs, datalist, preview."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ...atomic import write_png_atomic
from ..datalist import make_splits, save_datalist
from ..io import read_mask, read_rgb
from .kinds import KIND_CODE, SyntheticKind, kind_spec, render_tile
from .optics import check_stain

__all__ = ["synthesize", "save_preview"]


def _plan(spec: SyntheticKind, n: int, seed: int) -> tuple[list[int], int]:
    """Labels of images 0..n-1 (balanced, shuffled) and how many of the first images form a fixed test set."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), KIND_CODE[spec.name], 7]))
    n_test = int(round(spec.test_fraction * n)) if spec.fixed_test else 0
    labels: list[int] = []
    for part in (n_test, n - n_test):
        labels.extend(int(v) for v in rng.permutation(np.arange(part) % len(spec.classes)))
    return labels, n_test


def _split(spec: SyntheticKind, items: list[dict], n_test: int, seed: int) -> dict[str, list[dict]]:
    """GlaS-like splits; valpx shrinks below 3 per class only when there are too few images for 3."""
    k = len(spec.classes)
    for valpx in (3, 2, 1):
        if spec.fixed_test:
            splits = make_splits(
                items[n_test:], items[:n_test], valcl_fraction=0.2, valpx_per_class=valpx, seed=seed
            )
        else:
            splits = make_splits(
                items, test_fraction=spec.test_fraction, valcl_fraction=0.2, valpx_per_class=valpx, seed=seed
            )
        if all(len({it["label"] for it in splits[name]}) == k for name in splits):
            return splits
    raise ValueError(
        f"{len(items)} images are too few for {spec.name}: every split (train, valcl, valpx, test) needs "
        f"every class; use n_images >= {spec.min_n}"
    )


def synthesize(
    kind: str,
    out_dir: str | os.PathLike,
    n_images: int | None = None,
    image_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    stain: Mapping | None = None,
) -> Path:
    """Write a synthetic dataset: ``images/<id>.png`` (RGB), ``masks/<id>.png`` (0 / 255),
    ``datalist.json`` and ``preview.png`` under ``out_dir``.

    The datalist declares the kind's nominal scale, ``"mpp"``: ``KINDS[kind].mpp_at(image_size)`` microns per
    pixel (see the package docstring for the values).

    Args:
        kind: ``"glas"`` (165 images by default: 80 test, the rest split about 80/20 into train and
            valcl, 3 images per class of valcl moved to valpx) or ``"camelyon"`` (400 by default, half
            tumour, 30 % test; normal images get an all-zero mask file so valpx / test scoring works).
        out_dir: created if needed; existing files of the same names are replaced.
        n_images: number of images; None for the kind's default.
        image_size: side of the square images in pixels.
        seed: everything (labels, splits, tissue, stain) is a function of the arguments, byte for byte.
        progress: show a tqdm progress bar.
        stain: optional stain shift (see ``render_tile``). The same seed with another ``stain`` gives the
            same labels, splits, tissue and masks with different colours: a stain-shifted test set.

    Returns:
        path of the datalist JSON (``out_dir/datalist.json``).
    """
    spec = kind_spec(kind)
    n = spec.default_n if n_images is None else int(n_images)
    if n < spec.min_n:
        raise ValueError(
            f"n_images={n} is too few for {kind}: every split (train, valcl, valpx, test) needs every class; "
            f"use n_images >= {spec.min_n}"
        )
    stain = check_stain(stain)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    labels, n_test = _plan(spec, n, seed)
    width = max(4, len(str(n - 1)))
    items = [
        {
            "image": str(out / "images" / f"{kind}_{i:0{width}d}.png"),
            "mask": str(out / "masks" / f"{kind}_{i:0{width}d}.png"),
            "label": lab,
            "id": f"{kind}_{i:0{width}d}",
        }
        for i, lab in enumerate(labels)
    ]
    splits = _split(spec, items, n_test, seed)  # before rendering: a too small n fails at once

    from tqdm.auto import tqdm

    for i, it in enumerate(tqdm(items, desc=f"synthesize {kind}", unit="img", disable=not progress)):
        rgb, mask = render_tile(kind, it["label"], image_size, seed=seed, index=i, stain=stain)
        write_png_atomic(it["image"], rgb)
        write_png_atomic(it["mask"], mask * np.uint8(255))
    datalist = {
        "classes": list(spec.classes),
        "negative_classes": list(spec.negative_classes),
        "mpp": spec.mpp_at(image_size),
        **splits,
    }
    path = save_datalist(datalist, out / "datalist.json")
    save_preview(items, out / "preview.png", classes=spec.classes)
    return path


def save_preview(
    items: Sequence[dict], path: str | os.PathLike, classes: Sequence[str], per_class: int = 6, tile: int = 192
) -> Path:
    """Grid PNG of up to ``per_class`` images of each class (one row per class), mask outlines in green.

    Args:
        items: dicts with ``image``, ``mask`` (path or None) and ``label``.
        path: output PNG, written atomically.
        classes: class names, written on each tile.
    """
    rows = []
    for label, name in enumerate(classes):
        chosen = [it for it in sorted(items, key=lambda d: d["id"]) if it["label"] == label][:per_class]
        row = []
        for it in chosen:
            img = np.array(Image.fromarray(read_rgb(it["image"])).resize((tile, tile), Image.Resampling.BILINEAR))
            if it.get("mask"):
                m = Image.fromarray(read_mask(it["mask"])).resize((tile, tile), Image.Resampling.NEAREST)
                m = np.asarray(m) > 0
                edge = m & ~ndimage.binary_erosion(m, iterations=1, border_value=1)
                edge = ndimage.binary_dilation(edge)
                img[edge] = (0, 230, 0)
            pil = Image.fromarray(img)
            draw = ImageDraw.Draw(pil)
            draw.rectangle((0, 0, 8 + 7 * len(name), 14), fill=(0, 0, 0))
            draw.text((4, 2), name, fill=(255, 255, 255))
            row.append(np.asarray(pil))
        row += [np.full((tile, tile, 3), 255, np.uint8)] * (per_class - len(row))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row], 1))
    return write_png_atomic(path, np.concatenate(rows, 0))

