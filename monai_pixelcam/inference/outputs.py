"""The files a localization run writes per image or slide, all atomically (``monai_pixelcam.atomic``).

``<stem>_heatmap.png`` (jet colours, white where nothing was analysed), ``<stem>_mask.png`` (0/255 at the
threshold), ``<stem>_overlay.png`` (the heat map blended on the image or on a slide's overview of a readable
size, :func:`monai_pixelcam.visualize.overlay`), ``<stem>_regions.geojson`` (a ``FeatureCollection`` of the
foreground polygons in level-0 pixels, inside the image, :mod:`~monai_pixelcam.inference.contours`; QuPath:
File > Import objects), and
for slides ``<stem>_tissue.png`` and ``<stem>_tiles.csv``; ``<stem>_map.nii.gz`` on request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import write_csv_atomic, write_json_atomic, write_nifti_atomic, write_png_atomic
from ..visualize import heatmap_rgb, overlay
from .contours import foreground_polygons, polygons_geojson

__all__ = ["write_localization", "write_tiles_csv", "TILE_COLUMNS"]

#: Columns of ``<stem>_tiles.csv`` before the per-class probabilities and the foreground fraction.
TILE_COLUMNS = ["tile", "row", "col", "level", "height", "width", "tissue_fraction", "class"]


def write_localization(
    output_dir: str | os.PathLike,
    stem: str,
    score: np.ndarray,
    threshold: float,
    classes: Sequence[str],
    probs: np.ndarray | None,
    background: np.ndarray,
    valid: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    min_polygon_area: float = 0.0,
    save_nifti: bool = False,
    extent: tuple[float, float] | None = None,
    background_scale: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """Write the heat map, mask, overlay and GeoJSON (and tissue mask, NIfTI map) of one image or slide.

    Args:
        output_dir, stem: files are ``output_dir/<stem>_<name>``.
        score: ``H x W`` foreground probability in [0, 1] (0 where nothing was analysed).
        threshold: the mask is ``score >= threshold`` on ``valid`` pixels.
        classes, probs: class names and the ``K`` class probabilities (None: nothing analysed); the polygons are
            classified as the most probable class and carry every ``prob_<class>``.
        background: ``h x w x 3`` uint8 the overlay is drawn on (the image, or a slide's overview); when its
            size differs from the map's, the map is upsampled smoothly onto it (``background_scale``).
        valid: bool ``H x W``, the analysed pixels (default all); elsewhere the heat map is white, the overlay
            shows the background alone and the mask and polygons are empty.
        tissue: bool ``H x W`` tissue mask to write as ``<stem>_tissue.png`` (slides).
        scale: ``(sx, sy)`` level-0 pixels per map pixel, for the GeoJSON coordinates.
        min_polygon_area: polygons smaller than this (level-0 pixels squared) are left out of the GeoJSON.
        save_nifti: also write ``<stem>_map.nii.gz``.
        extent: ``(width, height)`` of the image in level-0 pixels; every polygon lies inside it (default: the
            map's extent, ``W * sx`` by ``H * sy``; a slide's map may reach past the slide).
        background_scale: ``(sx, sy)`` level-0 pixels per background pixel (default: the same grid as the map).

    Returns:
        name -> path of each file written (``heatmap``, ``mask``, ``overlay``, ``geojson``, and ``tissue``,
        ``map`` when written).
    """
    output_dir = Path(output_dir)
    score = np.asarray(score, dtype=np.float32)
    valid = np.ones(score.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    mask = (score >= float(threshold)) & valid
    label = None if probs is None else int(np.argmax(probs))
    properties = {"threshold": float(threshold)}
    if probs is not None:
        properties.update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs)})
    width, height = extent if extent is not None else (score.shape[1] * scale[0], score.shape[0] * scale[1])
    polygons = foreground_polygons(
        score, max(float(threshold), 1e-6), min_area=min_polygon_area, scale=scale, valid=valid,
        bounds=(0.0, 0.0, float(width), float(height)),
    )  # fmt: skip
    shown_score, shown_valid = _onto(score, valid, np.asarray(background).shape[:2], scale, background_scale)
    name = classes[label] if label is not None else "foreground"
    paths = {
        "heatmap": write_png_atomic(output_dir / f"{stem}_heatmap.png", heatmap_rgb(score, valid)),
        "mask": write_png_atomic(output_dir / f"{stem}_mask.png", mask.astype(np.uint8) * 255),
        "overlay": write_png_atomic(
            output_dir / f"{stem}_overlay.png", overlay(background, shown_score, valid=shown_valid)
        ),
        "geojson": write_json_atomic(
            polygons_geojson(polygons, name, properties=properties), output_dir / f"{stem}_regions.geojson", indent=None
        ),
    }
    if tissue is not None:
        paths["tissue"] = write_png_atomic(output_dir / f"{stem}_tissue.png", np.asarray(tissue, dtype=bool))
    if save_nifti:
        paths["map"] = write_nifti_atomic(output_dir / f"{stem}_map.nii.gz", score)
    return paths


def _onto(
    score: np.ndarray,
    valid: np.ndarray,
    shape: tuple[int, int],
    scale: tuple[float, float],
    background_scale: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``score`` (bilinear) and ``valid`` (nearest) resampled onto a background of ``shape`` whose pixels are
    ``background_scale`` level-0 pixels, both grids starting at level-0 ``(0, 0)``; unchanged when the grids are
    the same."""
    if tuple(shape) == score.shape and background_scale in (None, tuple(scale)):
        return score, valid
    bx, by = background_scale if background_scale is not None else scale
    # the map's extent on the background grid, then cut (or padded as not analysed) to the background
    size = (max(1, round(score.shape[0] * scale[1] / by)), max(1, round(score.shape[1] * scale[0] / bx)))
    hi = F.interpolate(torch.from_numpy(score)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    ok = F.interpolate(torch.from_numpy(valid.astype(np.float32))[None, None], size=size, mode="nearest")[0, 0]
    out_score, out_valid = np.zeros(shape, np.float32), np.zeros(shape, bool)
    h, w = min(shape[0], size[0]), min(shape[1], size[1])
    out_score[:h, :w], out_valid[:h, :w] = hi[:h, :w].numpy(), ok[:h, :w].numpy() > 0.5
    return out_score, out_valid


def write_tiles_csv(path: str | os.PathLike, rows: Sequence[Sequence], classes: Sequence[str]) -> Path:
    """``<stem>_tiles.csv``: one row per predicted window: :data:`TILE_COLUMNS`, ``prob_<class>`` for each class,
    ``foreground_fraction``."""
    return write_csv_atomic(path, TILE_COLUMNS + [f"prob_{c}" for c in classes] + ["foreground_fraction"], rows)
