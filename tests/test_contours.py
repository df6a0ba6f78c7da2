"""Foreground polygons: exteriors with their holes, in output coordinates, checked against the mask area."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from monai_pixelcam.inference.contours import _douglas_peucker, _signed_area, foreground_polygons, polygons_geojson


def _ring_area(ring):
    return _signed_area(np.asarray(ring, dtype=float))


def test_ring_with_a_hole_and_small_regions_dropped():
    score = np.zeros((64, 64), np.float32)
    score[disk((30, 30), 20)] = 1.0
    score[disk((30, 30), 6)] = 0.0
    score[55:58, 55:58] = 1.0  # 9 px speck
    polygons = foreground_polygons(score, 0.5, tolerance=0)
    assert [len(p.holes) for p in polygons] == [1, 0]
    big = polygons[0]
    # the traced area equals the pixel count within the half-pixel band the iso-line cuts through corners
    assert big.area == pytest.approx(float((score > 0.5).sum()), rel=0.03)
    assert _signed_area(big.exterior) > 0 and _signed_area(big.holes[0]) < 0  # RFC 7946 winding
    assert np.allclose(big.exterior[0], big.exterior[-1])
    assert [p.area > 100 for p in foreground_polygons(score, 0.5, min_area=100)] == [True]


def test_scale_and_offset_map_to_level0():
    score = np.zeros((10, 10), np.float32)
    score[2:6, 3:8] = 1.0  # rows 2..5, cols 3..7
    (polygon,) = foreground_polygons(score, 0.5, tolerance=0, scale=(4.0, 2.0), offset=(1000.0, 500.0))
    xs, ys = polygon.exterior[:, 0], polygon.exterior[:, 1]
    # the iso-line at 0.5 lies half a pixel outside the centres of the boundary pixels: on the pixel edges
    assert xs.min() == pytest.approx(1000 + 3 * 4) and xs.max() == pytest.approx(1000 + 8 * 4)
    assert ys.min() == pytest.approx(500 + 2 * 2) and ys.max() == pytest.approx(500 + 6 * 2)


def test_invalid_area_and_threshold():
    score = np.ones((8, 8), np.float32)
    valid = np.zeros((8, 8), bool)
    valid[:, :4] = True
    (polygon,) = foreground_polygons(score, 0.5, tolerance=0, valid=valid)
    assert polygon.exterior[:, 0].max() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="threshold"):
        foreground_polygons(score, 0.0)


def test_geojson_feature_collection():
    score = np.zeros((16, 16), np.float32)
    score[4:12, 4:12] = 1
    fc = polygons_geojson(foreground_polygons(score, 0.5), "tumour", (200, 0, 0), {"prob_tumour": 0.9})
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 1
    feature = fc["features"][0]
    assert feature["geometry"]["type"] == "Polygon"
    assert feature["properties"]["classification"] == {"name": "tumour", "color": [200, 0, 0]}
    assert feature["properties"]["prob_tumour"] == 0.9
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and _ring_area(ring) > 0


def test_douglas_peucker_matches_skimage():
    from scipy.ndimage import gaussian_filter
    from skimage.measure import approximate_polygon, find_contours

    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.random((96, 96)), 3)
    staircase = (smooth > np.median(smooth)).astype(np.float32)
    for score, identical in ((smooth, True), (staircase, False)):
        rings = [r for r in find_contours(np.pad(score, 1), float(np.median(score))) if len(r) >= 4]
        ends = np.cumsum([len(r) for r in rings])
        keep = _douglas_peucker(np.concatenate(rings), np.stack([np.r_[0, ends[:-1]], ends - 1], axis=1), 0.5)
        for ring, kept in zip(rings, np.split(keep, ends[:-1])):
            simple = ring[kept]
            if identical:  # same points as skimage's loop
                np.testing.assert_array_equal(simple, approximate_polygon(ring, 0.5))
            # the Douglas-Peucker bound: every traced point within the tolerance of the simplified chain
            a, b = simple[:-1, None], simple[1:, None]
            ab, ap = b - a, ring[None] - a
            t = np.clip((ap * ab).sum(-1) / np.maximum((ab**2).sum(-1), 1e-12), 0, 1)
            assert np.hypot(*np.moveaxis(ap - t[..., None] * ab, -1, 0)).min(axis=0).max() <= 0.5 + 1e-9


def test_polygons_stay_inside_the_bounds():
    """A slide's map grid may reach past the slide (its last windows are padded), so a region touching the
    map's border is traced to the map's extent: with ``bounds`` every vertex lies inside the slide, and the
    area is the clipped one."""
    score = np.zeros((6, 6), np.float32)
    score[2:, 3:] = 1.0  # touches the right and bottom borders
    free = foreground_polygons(score, 0.5, scale=10.0, tolerance=0.0)
    assert free[0].exterior.max() == 60  # the map's extent, past the image's
    # the image is 57 x 58 units: the map's last column and row reach past it
    (polygon,) = foreground_polygons(score, 0.5, scale=10.0, tolerance=0.0, bounds=(0, 0, 57, 58))
    xs, ys = polygon.exterior[:, 0], polygon.exterior[:, 1]
    assert xs.min() >= 0 and xs.max() <= 57 and ys.min() >= 0 and ys.max() <= 58
    assert polygon.area == pytest.approx((57 - 30) * (58 - 20), rel=0.05)
