"""Foreground regions of a localization map as polygons, for viewers: GeoJSON (QuPath, any GIS tool) and the
contour lists of MONAI Label's pathology writers (DSA JSON, ASAP XML).

The iso-line of the map at the threshold is traced with ``skimage.measure.find_contours`` (sub-pixel, so a
map at a coarse level still gives smooth outlines), simplified by Douglas-Peucker (as
``skimage.measure.approximate_polygon`` does, for all rings at once)
and mapped to level-0 pixel coordinates. Each exterior ring carries the holes inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Polygon", "foreground_polygons", "polygons_geojson"]


class Polygon(NamedTuple):
    """One foreground region in output coordinates ``(x, y)`` (columns, rows).

    ``exterior``: ``N x 2`` float ring, closed (first point repeated last), counter-clockwise in ``(x, y)``
    (RFC 7946). ``holes``: rings of the background regions inside it, clockwise. ``area``: exterior minus
    holes, in squared output units.
    """

    exterior: np.ndarray
    holes: list[np.ndarray]
    area: float


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an ``N x 2`` ``(x, y)`` ring; positive when counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


def _douglas_peucker(points: np.ndarray, bounds: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on many chains at once: which of ``points`` (``N x 2``) to keep.

    ``bounds``: ``K x 2`` first and last index of each chain in ``points``. Same result as
    ``skimage.measure.approximate_polygon`` on each chain (a point's distance is to the segment's nearest point;
    the first farthest point splits), re-implemented because that one runs a Python loop step per vertex it
    keeps (9 to 13 s for the thousand rings of one slide's heat map): here each step splits every open segment
    of every chain at once.
    """
    keep = np.zeros(len(points), dtype=bool)
    keep[bounds[:, 0]] = keep[bounds[:, 1]] = True
    starts, ends = bounds[:, 0].copy(), bounds[:, 1].copy()
    while len(starts):
        inner = ends - starts - 1
        starts, ends, inner = starts[inner > 0], ends[inner > 0], inner[inner > 0]
        if not len(starts):
            break
        first = np.cumsum(inner) - inner  # each segment's first entry in the flat arrays below
        segment = np.repeat(np.arange(len(starts)), inner)
        index = starts[segment] + 1 + np.arange(inner.sum()) - first[segment]
        a, b = points[starts][segment], points[ends][segment]
        ab, ap = b - a, points[index] - a
        length2 = (ab**2).sum(axis=1)
        t = np.clip((ap * ab).sum(axis=1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        dist = np.hypot(*(ap - t[:, None] * ab).T)
        farthest = np.maximum.reduceat(dist, first)
        is_max = dist == farthest[segment]
        _, at = np.unique(segment[is_max], return_index=True)  # first farthest point of each segment
        pivot = index[is_max][at]
        split = farthest > tolerance
        keep[pivot[split]] = True
        starts, ends = np.concatenate([starts[split], pivot[split]]), np.concatenate([pivot[split], ends[split]])
    return keep


def foreground_polygons(
    score: np.ndarray,
    threshold: float,
    min_area: float = 0.0,
    tolerance: float = 0.5,
    scale: float | Sequence[float] = 1.0,
    offset: Sequence[float] = (0.0, 0.0),
    valid: np.ndarray | None = None,
    bounds: Sequence[float] | None = None,
) -> list[Polygon]:
    """Polygons of the region where ``score >= threshold``.

    Args:
        score: ``H x W`` map in [0, 1] (rows, columns).
        threshold: iso-value in (0, 1]; the same threshold as the binary mask.
        min_area: regions whose area (exterior minus holes, in output units squared, i.e. level-0 pixels
            when ``scale`` maps to level 0) is below this are dropped, and holes smaller than it are filled;
            an outline already smaller before simplification is dropped without being simplified (the speckle
            of a noisy map then costs little).
        tolerance: Douglas-Peucker tolerance in map pixels (0 keeps every traced vertex).
        scale: output units per map pixel, one number or ``(sx, sy)``; e.g. the level's downsample.
        offset: ``(x, y)`` of the map's top-left corner in output units (a tile's level-0 location).
        valid: optional ``H x W`` bool; outside it the map counts as background (e.g. slide areas no window
            covered), so no region leaks into them.
        bounds: optional ``(x0, y0, x1, y1)`` in output units (the slide, or the region asked for): every
            vertex is clamped into it. Contours are traced on the map padded by one pixel, so a region touching
            the map's border reaches half a map pixel past it, and a map's grid may extend past the slide.

    Returns:
        the polygons, largest first. Pixel ``(r, c)`` of the map covers ``[c, c + 1) x [r, r + 1)`` in map
        units, so a traced point at array position ``(r, c)`` maps to ``offset + (c + 0.5, r + 0.5) * scale``.
    """
    from skimage.measure import find_contours, points_in_poly

    score = np.asarray(score, dtype=np.float32)
    if score.ndim != 2:
        raise ValueError(f"foreground_polygons expects an H x W map, got shape {score.shape}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    if valid is not None:
        score = np.where(np.asarray(valid, dtype=bool), score, 0.0)
    sx, sy = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    ox, oy = float(offset[0]), float(offset[1])
    # padding with 0 closes every contour; 'high' winds exteriors one way and holes the other
    rings = find_contours(np.pad(score, 1), float(threshold), positive_orientation="high")
    # (col, row) has the orientation of the output (x, y): negative is an exterior, positive a hole; outlines
    # smaller than min_area go before simplifying (holes only subtract from an exterior)
    rings = [r for r in rings if len(r) >= 4 and abs(_signed_area(r[:, ::-1]) * sx * sy) >= float(min_area)]
    if tolerance > 0 and rings:
        ends = np.cumsum([len(r) for r in rings])
        spans = np.stack([np.concatenate([[0], ends[:-1]]), ends - 1], axis=1)
        keep = _douglas_peucker(np.concatenate(rings), spans, float(tolerance))
        rings = [r[k] for r, k in zip(rings, np.split(keep, ends[:-1]))]
    exteriors, holes = [], []
    for ring in rings:
        if len(ring) < 4:
            continue
        xy = np.stack([ox + (ring[:, 1] - 0.5) * sx, oy + (ring[:, 0] - 0.5) * sy], axis=1)  # -1 pad, +0.5 centre
        if bounds is not None:
            xy = np.clip(xy, (float(bounds[0]), float(bounds[1])), (float(bounds[2]), float(bounds[3])))
        area = _signed_area(xy)
        if area == 0:
            continue
        # find_contours(positive_orientation="high") winds exteriors clockwise in (x, y) and holes the other
        # way: reversing both gives RFC 7946's counter-clockwise exteriors and clockwise holes
        (exteriors if area < 0 else holes).append(xy[::-1])
    polygons = []
    ext_areas = [_signed_area(e) for e in exteriors]
    owner: dict[int, list[np.ndarray]] = {i: [] for i in range(len(exteriors))}
    boxes = np.array([[*e.min(axis=0), *e.max(axis=0)] for e in exteriors]).reshape(-1, 4)
    for hole in holes:
        # a hole belongs to the smallest exterior that contains its first point; bounding boxes first, as a noisy
        # map has thousands of rings
        (x, y) = hole[0]
        near = np.flatnonzero((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3]))
        inside = [i for i in near if points_in_poly(hole[:1], exteriors[i])[0]]
        if inside:
            owner[min(inside, key=lambda i: ext_areas[i])].append(hole)
    for i, ext in enumerate(exteriors):
        area = ext_areas[i] + sum(_signed_area(h) for h in owner[i])  # holes are clockwise: negative
        if area >= float(min_area):
            polygons.append(Polygon(ext, owner[i], float(area)))
    polygons.sort(key=lambda p: -p.area)
    return polygons


def _ring_coordinates(ring: np.ndarray, decimals: int) -> list[list[float]]:
    return [[round(float(x), decimals), round(float(y), decimals)] for x, y in ring]


def polygons_geojson(
    polygons: Sequence[Polygon],
    name: str,
    color: Sequence[int] = (255, 0, 0),
    properties: Mapping | None = None,
    decimals: int = 1,
) -> dict:
    """A GeoJSON ``FeatureCollection`` with one ``Polygon`` feature per region, as QuPath imports it (File >
    Import objects): each feature is an annotation classified as ``name`` with colour ``color`` (RGB 0..255),
    and carries ``properties`` (e.g. class probabilities) plus its ``area``."""
    features = []
    for k, polygon in enumerate(polygons):
        features.append(
            {
                "type": "Feature",
                "id": f"{name}-{k}",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [_ring_coordinates(r, decimals) for r in (polygon.exterior, *polygon.holes)],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [int(c) for c in color]},
                    "area": round(polygon.area, decimals),
                    **dict(properties or {}),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
