"""PixelCAM maps as the annotations MONAI Label's pathology clients draw: contours, label, colour, description.

A tile's result carries MONAI Label's ``annotation`` entry (the structure its pathology sample app builds with
``FindContoursd``, which cannot be imported here because it imports torchvision)::

    {"location": [x, y], "size": [w, h], "labels": {"roi": [r, g, b]},
     "elements": [{"label": "roi", "contours": [[[x0, y0], [x1, y1], ...], ...]}]}

with every point in level-0 pixels. A region's tiles are merged into one result that MONAI Label's own
writers turn into a DSA annotation JSON (``create_dsa_annotations_json``, Digital Slide Archive) or an ASAP
XML (``create_asap_annotations_xml``, what QuPath's extension reads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

import numpy as np
from monailabel.utils.others.pathology import create_asap_annotations_xml, create_dsa_annotations_json

from ..inference.contours import foreground_polygons

__all__ = [
    "LABEL_NAME",
    "LABEL_COLOR",
    "OUTPUTS",
    "region_annotation",
    "region_probabilities",
    "describe",
    "write_annotations",
]

#: Name of the one foreground label (label images: value 1; contours: their label and ASAP group).
LABEL_NAME = "roi"
#: Colour of the ``roi`` contours, RGB 0..255: green stands out on the pink and purple of H&E.
LABEL_COLOR = (0, 255, 0)
#: Answers of the WSI endpoints: DSA annotation JSON, ASAP XML, or the result JSON itself.
OUTPUTS = ("dsa", "asap", "json")
# Douglas-Peucker tolerance in map pixels: FindContoursd's value; drops staircase vertices, keeps shape
_TOLERANCE = 0.5


def region_annotation(
    score: np.ndarray,
    threshold: float,
    location: Sequence[float],
    downsample: float = 1.0,
    min_poly_area: float = 0.0,
) -> dict:
    """MONAI Label's ``annotation`` of one region: the contours of ``score >= threshold``.

    Args:
        score: ``h x w`` foreground map in [0, 1] of the region, at its level's resolution.
        threshold: in (0, 1]; the mask's threshold.
        location: ``(x, y)`` of the region's top-left corner in level-0 pixels.
        downsample: level-0 pixels per map pixel.
        min_poly_area: regions smaller than this (level-0 pixels squared, holes subtracted) are dropped.

    Returns:
        ``{"location", "size" (level-0 extent [w, h]), "elements", "labels"}``. Each contour is the closed
        exterior ring of one region (first point repeated), counter-clockwise, rounded to 0.1 px and clamped
        to the region's footprint, so no point leaves the region asked for. Holes are left out: the DSA and
        ASAP writers draw every contour as a filled polygon of the label, so a hole would become foreground.

    Raises:
        ValueError: ``threshold`` outside (0, 1] or a negative ``min_poly_area``.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"contours need a threshold in (0, 1], got {threshold}")
    if not float(min_poly_area) >= 0.0:
        raise ValueError(f"'min_poly_area' must be >= 0 (level-0 pixels squared), got {min_poly_area}")
    height, width = np.asarray(score).shape[:2]
    x0, y0 = float(location[0]), float(location[1])
    x1, y1 = x0 + width * float(downsample), y0 + height * float(downsample)
    polygons = foreground_polygons(
        score, float(threshold), min_area=float(min_poly_area), tolerance=_TOLERANCE, scale=downsample,
        offset=(x0, y0), bounds=(x0, y0, x1, y1),
    )  # fmt: skip
    contours = [np.round(p.exterior, 1).tolist() for p in polygons]
    return {
        "location": [int(location[0]), int(location[1])],
        "size": [int(round(x1 - x0)), int(round(y1 - y0))],
        "elements": [{"label": LABEL_NAME, "contours": contours}] if contours else [],
        "labels": {LABEL_NAME: list(LABEL_COLOR)},
    }


def region_probabilities(tiles: Sequence[Mapping]) -> dict[str, float]:
    """Class probabilities of a region: its tiles' probabilities averaged with their level-0 areas as weights.

    Args:
        tiles: tile results, each with ``probabilities`` (class name -> probability) and ``annotation``
            (``size``: level-0 ``[w, h]``).

    Returns:
        class name -> probability in [0, 1] (they sum to 1); empty without tiles.
    """
    total: dict[str, float] = {}
    weight = 0.0
    for tile in tiles:
        w, h = tile["annotation"]["size"]
        area = float(w) * float(h)
        weight += area
        for name, p in tile["probabilities"].items():
            total[name] = total.get(name, 0.0) + area * float(p)
    return {name: value / weight for name, value in total.items()} if weight > 0 else {}


def describe(probabilities: Mapping[str, float], threshold: float, n_tiles: int, n_polygons: int) -> str:
    """The one-line description the viewers store with the annotation, e.g. ``"PixelCAM roi (threshold
    0.420): 3 polygons over 4 tiles; class malignant; probabilities benign 0.130, malignant 0.870"``."""
    if probabilities:
        best = max(probabilities, key=probabilities.get)
        listed = ", ".join(f"{name} {p:.3f}" for name, p in probabilities.items())
        classes = f"; class {best}; probabilities {listed}"
    else:
        classes = ""
    return (
        f"PixelCAM {LABEL_NAME} (threshold {float(threshold):.3f}): {n_polygons} polygon{'s' * (n_polygons != 1)} "
        f"over {n_tiles} tile{'s' * (n_tiles != 1)}"
        f"{classes}"
    )


def write_annotations(result: Mapping, output: str | None, loglevel: str = "WARNING") -> str | None:
    """Write a region's result with MONAI Label's pathology writers.

    Args:
        result: ``name``, ``description``, ``model``, ``location``, ``size``, ``latencies`` and
            ``annotations`` (the tile results, each with an ``annotation``).
        output: ``"dsa"`` (DSA annotation JSON), ``"asap"`` (ASAP XML), ``"json"`` or None (no file).

    Returns:
        the path of a temporary file (the endpoint sends and deletes it), or None for ``"json"``/None.
    """
    if output in (None, "json"):
        return None
    if output == "dsa":
        return create_dsa_annotations_json(dict(result), loglevel)[0]
    if output == "asap":
        # the ASAP writer puts name and description into XML attributes as they are
        quoted = {key: escape(str(result.get(key, "")), {'"': "&quot;"}) for key in ("name", "description", "model")}
        return create_asap_annotations_xml({**result, **quoted}, loglevel)[0]
    raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}")
