"""Synthetic whole slides: a grid of synthetic tiles written as a pyramidal TIFF, with the ground truth an
annotator would draw on it (class regions as rectangles, regions of interest as polygons), in level-0 pixels.
For trying and testing the slide annotation protocol (:mod:`monai_pixelcam.data.slide_regions`) end to end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...inference.contours import foreground_polygons
from ...inference.pyramid import write_pyramid_tiff
from .kinds import kind_spec, render_tile

__all__ = ["SyntheticSlide", "synthetic_slide"]


@dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    Attributes:
        path: the pyramidal TIFF (Aperio-style, with its mpp).
        labels: ``rows x cols`` class index of each block (one synthetic tile per block).
        mask: ``H x W`` uint8 in {0, 1}, the region of interest at level 0.
        block: block side in level-0 pixels.
        classes: class names of the kind.
        mpp: level-0 microns per pixel.
    """

    path: Path
    labels: np.ndarray
    mask: np.ndarray
    block: int
    classes: tuple[str, ...]
    mpp: float

    def rectangle(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The ``4 x 2`` level-0 ``(x, y)`` ring around blocks ``[r0, r1) x [c0, c1)``."""
        (r0, r1), (c0, c1), b = rows, cols, self.block
        return np.array([(c0 * b, r0 * b), (c1 * b, r0 * b), (c1 * b, r1 * b), (c0 * b, r1 * b)], dtype=np.float64)

    def roi_rings(self, rows: tuple[int, int], cols: tuple[int, int], inset: float = 1.0) -> list[np.ndarray]:
        """Outlines (level-0 ``(x, y)`` rings, exteriors) of the region of interest inside blocks ``[r0, r1) x
        [c0, c1)``, kept ``inset`` pixels inside their rectangle so that each lies in the class region."""
        (r0, r1), (c0, c1), b = rows, cols, self.block
        part = self.mask[r0 * b : r1 * b, c0 * b : c1 * b].astype(np.float32)
        bounds = (c0 * b + inset, r0 * b + inset, c1 * b - inset, r1 * b - inset)
        polygons = foreground_polygons(part, 0.5, min_area=4.0, offset=(c0 * b, r0 * b), bounds=bounds)
        return [p.exterior[:-1] for p in polygons]


def synthetic_slide(
    path: str | os.PathLike, labels: Sequence[Sequence[int]], kind: str = "glas", block: int = 128, seed: int = 0,
) -> SyntheticSlide:
    """Write a slide of ``len(labels) x len(labels[0])`` blocks, block ``(i, j)`` a ``block``-pixel synthetic
    ``kind`` tile of class ``labels[i][j]`` (tile index ``i * cols + j``), at the kind's nominal scale.

    Raises:
        ValueError: an empty or ragged ``labels`` grid, or a class outside the kind's.
    """
    grid = np.asarray(labels, dtype=np.int64)
    if grid.ndim != 2 or not grid.size:
        raise ValueError(f"labels must be a non-empty rows x cols grid of class indices, got shape {grid.shape}")
    spec = kind_spec(kind)
    rows, cols = grid.shape
    image = np.zeros((rows * block, cols * block, 3), dtype=np.uint8)
    mask = np.zeros((rows * block, cols * block), dtype=np.uint8)
    for i in range(rows):
        for j in range(cols):
            tile, tile_mask = render_tile(kind, int(grid[i, j]), block, seed=seed, index=i * cols + j)
            image[i * block : (i + 1) * block, j * block : (j + 1) * block] = tile
            mask[i * block : (i + 1) * block, j * block : (j + 1) * block] = tile_mask
    mpp = spec.mpp * 256 / block
    written = write_pyramid_tiff(path, image, mpp=mpp, downsamples=(2, 4), tile=min(256, block * 2))
    return SyntheticSlide(Path(written), grid, mask, int(block), tuple(spec.classes), float(mpp))
