"""Polygon annotations of whole-slide images: ASAP XML (CAMELYON16's lesion files, QuPath's MONAI Label
*Submit Label*) read into polygons in level-0 pixels, and polygons rasterized over a region of the slide.

ASAP XML::

    <ASAP_Annotations><Annotations>
      <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0">
        <Coordinates><Coordinate Order="0" X="13692.5" Y="156099.1"/> ...</Coordinates>
      </Annotation> ...
    </Annotations></ASAP_Annotations>
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from .datalist import DatalistError

__all__ = ["Polygon", "read_asap_xml", "rasterize"]


@dataclass(frozen=True)
class Polygon:
    """One annotation: its ``group`` (ASAP's ``PartOfGroup``, e.g. ``_0``), ``name`` and ``points``, an
    ``N x 2`` float array of level-0 ``(x, y)`` in drawing order."""

    group: str
    name: str
    points: np.ndarray


def read_asap_xml(path: str | os.PathLike) -> list[Polygon]:
    """The polygons of an ASAP XML file, coordinates ordered by ``Order``.

    Raises:
        DatalistError: the file is missing or not ASAP XML, or an annotation has fewer than 3 points or a
            coordinate that is not a finite number (names the file and the annotation).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DatalistError(f"{path}: cannot read the ASAP XML annotations ({e})") from None
    polygons, problems = [], []
    for k, annotation in enumerate(root.iter("Annotation")):
        name = annotation.get("Name") or f"annotation {k}"
        try:
            coords = sorted(
                ((int(c.get("Order", i)), float(c.get("X")), float(c.get("Y")))
                 for i, c in enumerate(annotation.iter("Coordinate"))),
                key=lambda t: t[0],
            )  # fmt: skip
        except (TypeError, ValueError) as e:
            problems.append(f"{path}: {name}: a coordinate is not a number ({e})")
            continue
        points = np.array([(x, y) for _, x, y in coords], dtype=np.float64).reshape(-1, 2)
        if len(points) < 3 or not np.isfinite(points).all():
            problems.append(f"{path}: {name}: a polygon needs 3 or more finite points, got {len(points)}")
            continue
        polygons.append(Polygon(str(annotation.get("PartOfGroup", "")), name, points))
    if problems:
        raise DatalistError(problems)
    return polygons


def rasterize(
    polygons: Iterable[Polygon],
    origin: tuple[float, float],
    shape: tuple[int, int],
    include: Sequence[str],
    exclude: Sequence[str] = (),
    downsample: float = 1.0,
) -> np.ndarray:
    """The ``shape`` ``(h, w)`` bool mask of the region whose top-left corner is level-0 ``origin`` ``(x, y)``, at
    ``downsample`` level-0 pixels per pixel: inside a polygon of a group in ``include`` and outside every polygon
    of a group in ``exclude`` (CAMELYON16's non-tumour islands inside a lesion). A pixel is inside when its
    centre is (scikit-image's ``polygon``); polygons past the region are clipped to it."""
    h, w = int(shape[0]), int(shape[1])
    inside, holes = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for poly in polygons:
        target = inside if poly.group in include else holes if poly.group in exclude else None
        if target is None:
            continue
        cols = (poly.points[:, 0] - origin[0]) / downsample - 0.5
        rows = (poly.points[:, 1] - origin[1]) / downsample - 0.5
        rr, cc = fill_polygon(rows, cols, shape=(h, w))
        target[rr, cc] = True
    return inside & ~holes
