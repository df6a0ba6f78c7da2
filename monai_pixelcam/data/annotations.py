"""Polygon annotations of whole-slide images read into one form, polygons in level-0 pixels with a group
(a class or lesion name), checked against the slide, and rasterized over a region of it.

The formats the viewers and datasets give (:func:`read_annotations` tells them apart by content):

- ASAP XML: CAMELYON16's lesion files and what QuPath's MONAI Label extension sends with *Submit Label*
  (MONAI Label's own ``create_asap_annotations_xml`` writes it too); the group is ``PartOfGroup``::

    <ASAP_Annotations><Annotations>
      <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0">
        <Coordinates><Coordinate Order="0" X="13692.5" Y="156099.1"/> ...</Coordinates>
      </Annotation> ...
    </Annotations></ASAP_Annotations>

- DSA annotation JSON (the Digital Slide Archive; MONAI Label's ``create_dsa_annotations_json``): a document
  ``{"name", "elements": [...]}`` (or ``{"annotation": {...}}``, or a list of them) whose ``polyline`` elements
  have ``points`` ``[[x, y, z], ...]`` and ``rectangle`` elements a ``center``, ``width``, ``height`` and
  ``rotation``; the group is the element's ``group``, else its ``label.value``;
- GeoJSON (QuPath's export): a ``FeatureCollection`` (or one ``Feature``, or a list of features) of ``Polygon``
  and ``MultiPolygon`` geometries, holes included; the group is ``properties.classification.name``, else
  ``properties.name``.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from .datalist import DatalistError

__all__ = [
    "ANNOTATION_SUFFIXES",
    "MAX_POINTS",
    "Polygon",
    "read_annotations",
    "read_asap_xml",
    "polygon_problems",
    "rasterize",
]

#: File types of polygon annotations (the label files a viewer submits for a slide).
ANNOTATION_SUFFIXES = (".xml", ".json", ".geojson")
#: Most vertices one annotation file may hold (rings and holes together): the checks below are quadratic in
#: one ring's vertex count, and a request must not be able to make them run unbounded.
MAX_POINTS = 200_000
#: Most vertices in one ring whose self-intersection is checked pair by pair.
MAX_RING_POINTS = 5_000


@dataclass(frozen=True)
class Polygon:
    """One annotation: its ``group`` (ASAP's ``PartOfGroup``, e.g. ``_0``; a class name), ``name``, and
    ``points``, an ``N x 2`` float array of level-0 ``(x, y)`` in drawing order (N >= 3); ``holes``: rings
    of the same form cut out of it (GeoJSON interior rings)."""

    group: str
    name: str
    points: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    @property
    def area(self) -> float:
        """Area in level-0 pixels squared (shoelace, holes subtracted), >= 0."""
        return max(0.0, _ring_area(self.points) - sum(_ring_area(h) for h in self.holes))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in level-0 pixels."""
        (x0, y0), (x1, y1) = self.points.min(axis=0), self.points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def _ring(points, where: str, problems: list[str]) -> np.ndarray | None:
    """An ``N x 2`` float ring of ``points`` (``[[x, y(, z)], ...]``; a repeated closing point dropped), or None
    with a problem naming ``where``."""
    try:
        ring = np.array([(float(p[0]), float(p[1])) for p in points], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        problems.append(f"{where}: a point is not an [x, y] pair of numbers ({e})")
        return None
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3 or not np.isfinite(ring).all():
        problems.append(f"{where}: a polygon needs 3 or more finite points, got {len(ring)}")
        return None
    return ring


def read_asap_xml(path: str | os.PathLike, name: str | None = None) -> list[Polygon]:
    """The polygons of an ASAP XML file, coordinates ordered by ``Order``; the group is ``PartOfGroup`` (its
    ``Name`` when the group is empty or ``None``, as a file written without groups has it). Messages name the
    file as ``name`` (default: its path).

    Raises:
        DatalistError: the file is missing or not ASAP XML, or an annotation has fewer than 3 points or a
            coordinate that is not a finite number (names the file and the annotation).
    """
    path = Path(path)
    shown = name or str(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        reason = str(e).replace(str(path), shown)
        raise DatalistError(f"{shown}: cannot read the ASAP XML annotations ({reason})") from None
    polygons, problems = [], []
    for k, annotation in enumerate(root.iter("Annotation")):
        name = annotation.get("Name") or f"annotation {k}"
        try:
            coords = sorted(
                ((int(c.get("Order", i)), c.get("X"), c.get("Y")) for i, c in enumerate(annotation.iter("Coordinate"))),
                key=lambda t: t[0],
            )  # fmt: skip
        except ValueError as e:
            problems.append(f"{shown}: {name}: a coordinate order is not a number ({e})")
            continue
        ring = _ring([(x, y) for _, x, y in coords], f"{shown}: {name}", problems)
        if ring is not None:
            group = str(annotation.get("PartOfGroup") or "")
            polygons.append(Polygon(name if group in ("", "None") else group, name, ring))
    if problems:
        raise DatalistError(problems)
    return polygons


def _dsa_polygons(document: dict, path: str, problems: list[str]) -> list[Polygon]:
    """The closed polylines and rectangles of one DSA annotation document."""
    document = document.get("annotation", document)
    elements = document.get("elements") if isinstance(document, dict) else None
    if not isinstance(elements, list):
        problems.append(f"{path}: a DSA annotation needs an 'elements' list")
        return []
    out = []
    for k, element in enumerate(elements):
        if not isinstance(element, dict):
            problems.append(f"{path}: element {k} is not an object")
            continue
        label = element.get("label")
        group = element.get("group") or (label.get("value") if isinstance(label, dict) else label) or ""
        name = f"element {k} ({group or 'no group'})"
        kind = element.get("type")
        if kind == "rectangle":
            try:
                cx, cy = float(element["center"][0]), float(element["center"][1])
                w, h = float(element["width"]) / 2, float(element["height"]) / 2
                angle = float(element.get("rotation", 0.0))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                problems.append(f"{path}: {name}: a rectangle needs a center, width and height ({e})")
                continue
            cos, sin = math.cos(angle), math.sin(angle)
            corners = ((-w, -h), (w, -h), (w, h), (-w, h))
            points = [(cx + dx * cos - dy * sin, cy + dx * sin + dy * cos) for dx, dy in corners]
        elif kind == "polyline":
            if element.get("closed") is False:
                continue  # an open line bounds no region
            points = element.get("points") or []
        else:
            continue  # points, arrows, circles: no region of the kinds the protocol uses
        ring = _ring(points, f"{path}: {name}", problems)
        if ring is not None:
            out.append(Polygon(str(group), name, ring))
    return out


def _geojson_polygons(features: list, path: str, problems: list[str]) -> list[Polygon]:
    """The Polygon and MultiPolygon features of a GeoJSON feature list."""
    out = []
    for k, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict):
            problems.append(f"{path}: feature {k} has no geometry")
            continue
        props = feature.get("properties") or {}
        classification = props.get("classification") if isinstance(props, dict) else None
        group = (classification.get("name") if isinstance(classification, dict) else None) or (
            props.get("name") if isinstance(props, dict) else None) or ""
        parts = {"Polygon": [geometry.get("coordinates")], "MultiPolygon": geometry.get("coordinates")}.get(
            geometry.get("type"))
        if parts is None:
            continue  # points and lines bound no region
        for j, rings in enumerate(parts or []):
            name = f"feature {k}{f' part {j}' if len(parts) > 1 else ''} ({group or 'no classification'})"
            if not isinstance(rings, list) or not rings:
                problems.append(f"{path}: {name}: a polygon needs its rings")
                continue
            ring_list = [_ring(r, f"{path}: {name}", problems) for r in rings]
            if all(r is not None for r in ring_list):
                out.append(Polygon(str(group), name, ring_list[0], tuple(ring_list[1:])))
    return out


def read_annotations(path: str | os.PathLike, name: str | None = None) -> list[Polygon]:
    """The polygons of an annotation file in any of the formats of the module docstring, told apart by content
    (an XML root, a GeoJSON ``type``, or DSA ``elements``). Messages name the file as ``name`` (default: its
    path; a server names the label, never its own paths).

    Raises:
        DatalistError: an unreadable file, an unknown format, a malformed polygon, or more than
            :data:`MAX_POINTS` vertices; every problem names the file and the annotation.
    """
    path = Path(path)
    shown = name or str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip()
        if head.startswith(b"<"):
            polygons = read_asap_xml(path, shown)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        if isinstance(e, DatalistError):
            raise
        raise DatalistError(f"{shown}: not ASAP XML, DSA JSON or GeoJSON annotations ({type(e).__name__})") from None
    if not head.startswith(b"<"):
        problems: list[str] = []
        items = data if isinstance(data, list) else [data]
        if all(isinstance(d, dict) and (d.get("type") in ("FeatureCollection", "Feature") or "geometry" in d)
               for d in items):
            features = [f for d in items for f in (d.get("features") or [] if d.get("type") == "FeatureCollection"
                                                   else [d])]
            polygons = _geojson_polygons(features, shown, problems)
        elif all(isinstance(d, dict) and ("elements" in d or "annotation" in d) for d in items):
            polygons = [p for d in items for p in _dsa_polygons(d, shown, problems)]
        else:
            raise DatalistError(
                f"{shown}: not ASAP XML, DSA JSON (objects with 'elements') or GeoJSON (a FeatureCollection)"
            )
        if problems:
            raise DatalistError(problems)
    total = sum(len(p.points) + sum(len(h) for h in p.holes) for p in polygons)
    if total > MAX_POINTS:
        raise DatalistError(f"{shown}: {total} polygon vertices, more than the {MAX_POINTS} accepted")
    return polygons


def _orientation(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Sign of the turn p -> q -> r (1 left, -1 right, 0 collinear); ``r`` may be ``M x 2``."""
    (px, py), (qx, qy) = (p[..., 0], p[..., 1]), (q[..., 0], q[..., 1])
    return np.sign((qx - px) * (r[..., 1] - py) - (qy - py) * (r[..., 0] - px))


def _boxes_meet(p: np.ndarray, q: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Whether the bounding box of segment p-q meets those of the segments r-s (``M x 2`` each)."""
    low = np.maximum(np.minimum(p, q), np.minimum(r, s))
    high = np.minimum(np.maximum(p, q), np.maximum(r, s))
    return (low <= high).all(axis=-1)


def _self_intersects(ring: np.ndarray) -> bool:
    """Whether two non-adjacent edges of a closed ring cross, or overlap along a line (a ring folding back on
    itself). Written out because scikit-image has no polygon validity test and shapely is not a dependency;
    vectorised per edge, quadratic in the vertex count, which :data:`MAX_RING_POINTS` bounds."""
    a, b = ring, np.roll(ring, -1, axis=0)
    n = len(ring)
    for i in range(n - 2):
        j = np.arange(i + 2, n if i > 0 else n - 1)  # edges i and i+1 share a vertex, as do edges 0 and n-1
        if not len(j):
            continue
        p, q, r, s = a[i], b[i], a[j], b[j]
        o1, o2 = _orientation(p, q, r), _orientation(p, q, s)
        crossing = (o1 * o2 < 0) & (_orientation(r, s, p) * _orientation(r, s, q) < 0)
        overlapping = (o1 == 0) & (o2 == 0) & _boxes_meet(p, q, r, s)
        if crossing.any() or overlapping.any():
            return True
    return False


def polygon_problems(polygon: Polygon, extent: tuple[int, int]) -> list[str]:
    """What makes ``polygon`` unusable on a slide of level-0 ``extent`` ``(width, height)``: a vertex outside
    the slide, an edge crossing another (self-intersecting), more than :data:`MAX_RING_POINTS` vertices in a
    ring, or no area (less than one pixel). Empty when it is usable; each problem names the annotation."""
    width, height = extent
    problems = []
    for ring in (polygon.points, *polygon.holes):
        x0, y0 = ring.min(axis=0)
        x1, y1 = ring.max(axis=0)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            problems.append(
                f"{polygon.name}: reaches outside the slide ({width} x {height} px): x {x0:.0f}..{x1:.0f}, "
                f"y {y0:.0f}..{y1:.0f}"
            )
            break
    for ring in (polygon.points, *polygon.holes):
        if len(ring) > MAX_RING_POINTS:
            problems.append(f"{polygon.name}: {len(ring)} vertices in one ring, more than {MAX_RING_POINTS}")
        elif _self_intersects(ring):
            problems.append(f"{polygon.name}: the polygon is self-intersecting (two of its edges cross)")
            break
    if polygon.area < 1.0:
        problems.append(f"{polygon.name}: the region is empty (area {polygon.area:.2g} px²)")
    return problems


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
        own = np.zeros((h, w), bool)
        for k, ring in enumerate((poly.points, *poly.holes)):
            cols = (ring[:, 0] - origin[0]) / downsample - 0.5
            rows = (ring[:, 1] - origin[1]) / downsample - 0.5
            rr, cc = fill_polygon(rows, cols, shape=(h, w))
            own[rr, cc] = k == 0  # the outer ring fills, a hole (GeoJSON interior ring) empties
        target |= own
    return inside & ~holes
