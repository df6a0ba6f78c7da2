"""A histology-like dataset from a tissue model the bundle's defaults were never chosen on: liver-like
parenchyma with and without tumour, for checking what the defaults do on data nobody tuned them on.

Not a setting of the package's generator (``monai_pixelcam.data.synthetic``, colon glands and lymph node):
another tissue, other structures, another stain and another scale, drawn here from scratch.

- **Normal liver** (class ``normal``, a negative class: no region of interest): hepatocyte plates, polygonal
  cells (a Voronoi tessellation of jittered seeds, about 22 px across) with pale eosinophilic cytoplasm, a
  round central nucleus (radius 3-4 px) and thin darker borders; sinusoids as thin white channels along some
  cell borders; a portal-like vessel (a white ellipse with a thin wall) in some tiles.
- **Tumour** (class ``tumour``): the same parenchyma with one or two tumour regions (smooth random blobs
  covering 15-55 % of the tile): crowded small basophilic cells (nuclei radius 2-3 px, half the spacing),
  little cytoplasm, scattered apoptotic bodies; the mask is the tumour region.
- **Stain**: Beer-Lambert with hematoxylin (0.55, 0.74, 0.39) and eosin (0.10, 0.79, 0.60) optical densities
  (different vectors from the package's generator), per-tile intensity jitter of +-15 %, a faint blur.

Splits as the issue that asked for it (96 train, 24 valcl, 6 valpx, 48 test), balanced classes, valpx and
test tumours with masks. Usage: ``python benchmarks/unseen_tissue.py --out DIR [--seed 0] [--size 192]``;
then ``python -m monai.bundle run training --config_file bundles/pixelcam/configs/train.json
--bundle_root RUN --datalist DIR/datalist.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_pixelcam.atomic import write_png_atomic
from monai_pixelcam.data.datalist import save_datalist

CLASSES = ["normal", "tumour"]
SPLIT_SIZES = {"train": 96, "valcl": 24, "valpx": 6, "test": 48}
_H = np.array([0.55, 0.74, 0.39])  # hematoxylin optical density per RGB channel
_E = np.array([0.10, 0.79, 0.60])  # eosin


def _voronoi(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cell index map and seed positions of a jittered-grid Voronoi tessellation."""
    h, w = shape
    ys, xs = np.meshgrid(np.arange(-spacing, h + spacing, spacing), np.arange(-spacing, w + spacing, spacing))
    seeds = np.stack([ys.ravel(), xs.ravel()], axis=1) + rng.uniform(-0.35, 0.35, (ys.size, 2)) * spacing
    grid = np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2).astype(np.float32)
    # nearest seed of every pixel, in chunks (a few hundred seeds)
    nearest = np.empty(len(grid), np.int64)
    for start in range(0, len(grid), 8192):
        d = ((grid[start : start + 8192, None, :] - seeds[None].astype(np.float32)) ** 2).sum(-1)
        nearest[start : start + 8192] = d.argmin(1)
    return nearest.reshape(h, w), seeds


def _borders(cells: np.ndarray) -> np.ndarray:
    return (np.diff(cells, axis=0, prepend=cells[:1]) != 0) | (np.diff(cells, axis=1, prepend=cells[:, :1]) != 0)


def _disks(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for (cy, cx), r in zip(centres, radii):
        y0, y1, x0, x1 = int(cy - r - 1), int(cy + r + 2), int(cx - r - 1), int(cx + r + 2)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, shape[0]), min(x1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], np.clip(r + 0.5 - d, 0, 1))
    return out


def _blob(shape: tuple[int, int], rng: np.random.Generator, coverage: float) -> np.ndarray:
    """A smooth random region covering about ``coverage`` of the tile."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=min(shape) / 6)
    return noise >= np.quantile(noise, 1.0 - coverage)


def render(label: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One tile: ``uint8 size x size x 3`` and its ``uint8`` {0, 1} tumour mask."""
    shape = (size, size)
    cells, seeds = _voronoi(shape, 22.0 * size / 192, rng)
    border = _borders(cells)
    h_density = 0.05 + 0.25 * ndimage.binary_dilation(border, iterations=1)
    e_density = 0.45 + 0.1 * rng.random(shape)
    sinusoid = border & (rng.random(len(seeds))[cells] < 0.35)
    e_density[ndimage.binary_dilation(sinusoid, iterations=1)] = 0.05
    inside = (seeds[:, 0] >= 0) & (seeds[:, 0] < size) & (seeds[:, 1] >= 0) & (seeds[:, 1] < size)
    nuclei = _disks(shape, seeds[inside], rng.uniform(3.0, 4.2, inside.sum()) * size / 192)
    h_density += 1.1 * nuclei
    if rng.random() < 0.4:  # a portal-like vessel
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        yy, xx = np.mgrid[0:size, 0:size]
        r = ((yy - cy) / (0.12 * size)) ** 2 + ((xx - cx) / (0.07 * size)) ** 2
        e_density[r < 1.0] = 0.02
        h_density[r < 1.0] = 0.0
        h_density[(r >= 1.0) & (r < 1.35)] += 0.35
    mask = np.zeros(shape, bool)
    if label == 1:
        mask = _blob(shape, rng, rng.uniform(0.15, 0.55))
        n = int(mask.sum() / (11.0 * size / 192) ** 2)
        centres = np.argwhere(mask)[rng.choice(int(mask.sum()), size=max(n, 1))] + rng.uniform(-0.5, 0.5, (max(n, 1), 2))
        tumour_nuclei = _disks(shape, centres, rng.uniform(2.0, 3.0, len(centres)) * size / 192)
        apoptotic = _disks(shape, centres[rng.random(len(centres)) < 0.03], np.full(len(centres), 1.5))
        h_density = np.where(mask, 0.35 + 1.3 * tumour_nuclei + 0.8 * apoptotic, h_density)
        e_density = np.where(mask, 0.25 + 0.1 * rng.random(shape), e_density)
    scale = rng.uniform(0.85, 1.15, 2)
    od = scale[0] * h_density[..., None] * _H + scale[1] * e_density[..., None] * _E
    rgb = 255.0 * np.exp(-ndimage.gaussian_filter(od, sigma=(0.6, 0.6, 0)))
    rgb += rng.normal(0, 3.0, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), mask.astype(np.uint8)


def generate(out: Path, seed: int = 0, size: int = 192, sizes: dict[str, int] = SPLIT_SIZES) -> Path:
    """Write the images, masks and ``datalist.json`` under ``out``; returns the datalist path."""
    rng = np.random.default_rng(seed)
    datalist: dict = {"classes": CLASSES, "negative_classes": [0]}
    k = 0
    for split, n in sizes.items():
        datalist[split] = []
        for label in rng.permutation(np.arange(n) % 2):
            image, mask = render(int(label), size, rng)
            item_id = f"liver_{k:04d}"
            image_path = write_png_atomic(out / "images" / f"{item_id}.png", image)
            mask_path = write_png_atomic(out / "masks" / f"{item_id}.png", mask * 255) if label == 1 else None
            datalist[split].append({"image": str(image_path), "mask": mask_path and str(mask_path),
                                    "label": int(label), "id": item_id})  # fmt: skip
            k += 1
    return save_datalist(datalist, out / "datalist.json")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args(argv)
    path = generate(args.out, args.seed, args.size)
    print(path)
    return path


if __name__ == "__main__":
    main()
