"""Training tiles from a slide's polygon annotations, by the weakly supervised protocol of the README:

- a region (rectangle or polygon) whose group is one of the model's class names is an image-level label:
  tiles are cut from it at the training scale and carry that class;
- polygons of a region-of-interest group (``roi_labels``, e.g. ``gland`` or ``tumor``) inside such a region
  are its pixel mask: the region's tiles get that mask and become valpx/test candidates. A masked region's
  tiles lie wholly inside it, so no unannotated tissue is called background.

Annotations come from :func:`~monai_pixelcam.data.annotations.read_annotations` (ASAP XML, DSA JSON,
GeoJSON), and the mask from its rasterizer, as for CAMELYON16's lesions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize

from ..atomic import write_png_atomic
from ..inference.wsi import choose_scale, close_slide, open_slide, read_rgb_region, slide_mpp
from .annotations import Polygon, polygon_problems, rasterize
from .datalist import DatalistError

__all__ = ["SlideAnnotations", "classify_annotations", "annotation_problems", "cut_region_tiles"]


@dataclass(frozen=True)
class SlideAnnotations:
    """A slide's annotations sorted by the protocol: ``regions`` as ``(class index, polygon)`` and the
    region-of-interest polygons ``rois``, each with the index of the region it lies in (``roi_region``)."""

    regions: list[tuple[int, Polygon]]
    rois: list[Polygon]
    roi_region: list[int]


def _inside(inner: Polygon, outer: Polygon) -> bool:
    """Whether every vertex of ``inner`` lies inside or on ``outer``'s outer ring (even-odd rule)."""
    from skimage.measure import points_in_poly

    return bool(points_in_poly(inner.points, outer.points).all())


def classify_annotations(
    polygons: Sequence[Polygon], classes: Sequence[str], roi_labels: Sequence[str], name: str = "annotations"
) -> SlideAnnotations:
    """Sort polygons into class regions and region-of-interest polygons (groups matched case-insensitively).

    Raises:
        DatalistError: one line per polygon whose group is neither a class nor a region-of-interest label
            (the message lists both), and per region-of-interest polygon that lies in no class region.
    """
    lowered = [c.lower() for c in classes]
    roi = {r.lower() for r in roi_labels}
    regions, rois, problems = [], [], []
    for poly in polygons:
        group = poly.group.strip().lower()
        if group in roi:
            rois.append(poly)
        elif group in lowered:
            regions.append((lowered.index(group), poly))
        else:
            problems.append(
                f"{name}: {poly.name}: unknown class {poly.group!r}; a region is one of the classes {list(classes)}, "
                f"a region of interest one of {list(roi_labels)}"
            )
    owners = []
    for poly in rois:
        owner = next((k for k, (_, region) in enumerate(regions) if _inside(poly, region)), None)
        if owner is None:
            problems.append(f"{name}: {poly.name}: a region of interest must lie inside a class region")
        owners.append(owner)
    if problems:
        raise DatalistError(problems)
    return SlideAnnotations(regions, rois, owners)


def annotation_problems(
    polygons: Sequence[Polygon], extent: tuple[int, int], classes: Sequence[str] | None, roi_labels: Sequence[str],
    name: str = "annotations",
) -> list[str]:
    """Every reason ``polygons`` cannot train on a slide of level-0 ``extent`` ``(width, height)``: bad polygons
    (:func:`~monai_pixelcam.data.annotations.polygon_problems`) and, when ``classes`` is known, groups that are
    neither a class nor a region-of-interest label, and regions of interest outside every class region."""
    problems = [f"{name}: {p}" for poly in polygons for p in polygon_problems(poly, extent)]
    if not polygons:
        problems.append(f"{name}: no polygon (a class region is a rectangle or polygon named after its class)")
    if classes is not None and not problems:
        try:
            classify_annotations(polygons, classes, roi_labels, name)
        except DatalistError as e:
            problems += e.problems
    return problems


def _tile_grid(region: Polygon, footprint: float, tile_size: int, min_inside: float) -> list[tuple[float, float]]:
    """Level-0 ``(x, y)`` top-left corners of the tiles of ``footprint`` level-0 pixels on a grid over the
    region's bounding box whose share inside the region is at least ``min_inside``."""
    x0, y0, x1, y1 = region.bounds
    corners = []
    for k in range(max(1, math.floor((y1 - y0) / footprint))):
        for j in range(max(1, math.floor((x1 - x0) / footprint))):
            origin = (x0 + j * footprint, y0 + k * footprint)
            inside = rasterize([region], origin, (tile_size, tile_size), [region.group], footprint / tile_size)
            if inside.mean() >= min_inside:
                corners.append(origin)
    return corners


def cut_region_tiles(
    slide: str | os.PathLike,
    annotations: SlideAnnotations,
    out_dir: str | os.PathLike,
    stem: str,
    tile_size: int,
    tile_mpp: float | None = None,
    min_inside: float = 0.5,
    backend: str = "auto",
) -> list[dict]:
    """Cut the tiles of every class region of a slide and write them (and masks) as PNGs into ``out_dir``.

    Args:
        slide: the whole-slide image.
        annotations: its regions and regions of interest (:func:`classify_annotations`).
        out_dir: where ``<stem>-r<k>-<row>-<col>.png`` (and ``..._mask.png``) go.
        stem: file prefix (the image id).
        tile_size: tile side in pixels, as written.
        tile_mpp: microns per tile pixel; the slide's level-0 mpp gives the level-0 footprint and the pyramid
            level read (the coarsest not coarser than needed, then resized). None: level 0, no resize.
        min_inside: least share of a tile inside its region, in (0, 1]; 1 for regions with regions of interest.

    Returns:
        datalist items ``{"image", "mask" (None for a region without regions of interest), "label", "id",
        "mpp"}``, region by region in grid order.

    Raises:
        DatalistError: the slide cannot be read, a polygon is unusable on it
            (:func:`~monai_pixelcam.data.annotations.polygon_problems`), or a region is too small for one tile
            (each named).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        reader, wsi = open_slide(slide, backend)
    except Exception as e:  # noqa: BLE001 - any reader failure is the slide's
        raise DatalistError(f"{stem}: cannot open the slide ({type(e).__name__})") from None
    try:
        height0, width0 = reader.get_size(wsi, 0)
        polygons = [region for _, region in annotations.regions] + list(annotations.rois)
        problems = [f"{stem}: {p}" for poly in polygons for p in polygon_problems(poly, (width0, height0))]
        if problems:  # the datastore checks at its door; a direct caller gets the same checks here
            raise DatalistError(problems)
        mpp0 = slide_mpp(reader, wsi)
        downsamples = [reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))]
        if tile_mpp:  # the pyramid level and resize by slide inference's rule, warnings included
            scale = choose_scale(downsamples, mpp0, float(tile_mpp), tile_size, name=stem)
            level, factor = scale.level, max(scale.frame_scale)  # factor: level-0 pixels per tile pixel
        else:
            level, factor = 0, 1.0
        footprint = tile_size * factor
        mpp = float(tile_mpp) if tile_mpp else (min(mpp0) if mpp0 else None)  # of the tiles as written
        read = max(1, round(footprint / downsamples[level]))
        items = []
        for k, (label, region) in enumerate(annotations.regions):
            rois = [p for p, owner in zip(annotations.rois, annotations.roi_region) if owner == k]
            roi_groups = sorted({p.group for p in rois})
            corners = _tile_grid(region, footprint, tile_size, 1.0 if rois else min_inside)
            if not corners:
                problems.append(
                    f"{stem}: {region.name}: the region holds no tile of {tile_size} px at "
                    f"{tile_mpp or 'level-0'} µm/px ({footprint:.0f} level-0 px)"
                )
                continue
            for x, y in corners:
                rgb = read_rgb_region(reader, wsi, (round(y), round(x)), (read, read), level)
                if read != tile_size:
                    rgb = np.round(resize(rgb, (tile_size, tile_size), anti_aliasing=True, preserve_range=True))
                tile_id = f"{stem}-r{k}-{round(y)}-{round(x)}"
                image = write_png_atomic(out_dir / f"{tile_id}.png", rgb.astype(np.uint8))
                mask = None
                if rois:
                    pixels = rasterize(rois, (x, y), (tile_size, tile_size), roi_groups, downsample=factor)
                    mask = str(write_png_atomic(out_dir / f"{tile_id}_mask.png", pixels))
                items.append({"image": str(image), "mask": mask, "label": int(label), "id": tile_id,
                              "mpp": mpp})
    finally:
        close_slide(wsi)
    if problems:
        raise DatalistError(problems)
    return items
