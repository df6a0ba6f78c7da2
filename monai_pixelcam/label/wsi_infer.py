"""The WSI endpoints of the app: ``POST /infer/wsi/{model}`` and ``/infer/wsi_v2/{model}`` with
``output=dsa|asap|json``, as MONAI Label's pathology sample app answers them.

The requested region (``location`` ``[x, y]`` and ``size`` ``[w, h]`` in level-0 pixels; a size with a
non-positive side means the whole image, as the DSA plugin's ``-1,-1,-1,-1`` does) is split into tiles of
``tile_size`` pixels at ``level``, or taken from ``wsi_tiles`` when the client lists the tiles itself (the
DSA plugin's tissue tiles). Each tile goes through the infer task with ``min_poly_area`` (contours of the
PixelCAM map at the threshold, in level-0 pixels); the tiles' annotations and class probabilities are then
merged and written by MONAI Label's pathology writers (:mod:`monai_pixelcam.label.annotation`).

``MONAILabelApp.infer_wsi`` is replaced rather than called: it takes an image id as a server path when such
a file exists, sizes slides with OpenSlide alone, and spreads the tiles over ``cuda:N`` devices even when
there is no GPU (``idx % 0``: ZeroDivisionError, HTTP 500 on a CPU server). Here every tile runs on the
request's device (MONAI Label's rule: CUDA when available, else CPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .annotation import OUTPUTS, describe, region_probabilities, write_annotations
from .errors import RequestError
from .infer import PixelCAMInferTask, image_geometry, int_pair

__all__ = ["DEFAULT_TILE_SIZE", "DEFAULT_MIN_POLY_AREA", "plan_tiles", "infer_wsi"]

logger = logging.getLogger(__name__)

#: Tile side at ``level`` when a request gives none (MONAI Label's ``WSIInput`` default).
DEFAULT_TILE_SIZE = 1024
#: Smallest polygon kept, level-0 pixels squared (MONAI Label's ``WSIInput`` default).
DEFAULT_MIN_POLY_AREA = 80.0
# request keys that describe the whole region and must not reach the tiles
_REGION_KEYS = ("wsi_tiles", "tile_size", "max_workers")


def _region_box(request: Mapping, width0: int, height0: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the requested region in level-0 pixels, cut at the image's border."""
    x, y = int_pair(request.get("location") or (0, 0), "location", None)
    w, h = int_pair(request.get("size") or (0, 0), "size", None)
    if w <= 0 or h <= 0:
        return 0, 0, width0, height0
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width0), min(y + h, height0)
    if x0 >= x1 or y0 >= y1:
        raise RequestError(
            400, f"region location {[x, y]} size {[w, h]} lies outside the image ({width0} x {height0} at level 0)"
        )
    return x0, y0, x1, y1


def plan_tiles(
    request: Mapping, width0: int, height0: int, downsample: float = 1.0, max_tiles: int | None = None
) -> list[dict]:
    """The tiles of a WSI request.

    Args:
        request: ``location``/``size`` (level-0 pixels; see the module docstring), ``tile_size``
            (``[w, h]`` or one int, pixels at the level read; default :data:`DEFAULT_TILE_SIZE`), or
            ``wsi_tiles``: a list of ``{"location": [x, y], "size": [w, h]}`` in level-0 pixels.
        width0, height0: the image's size at level 0.
        downsample: level-0 pixels per pixel of the level read.
        max_tiles: most tiles allowed (None: no bound); counted before any tile is made.

    Returns:
        ``[{"location": [x, y] (level 0), "size": [w, h] (pixels at the level read)}, ...]`` in row-major
        order, every tile inside the image.

    Raises:
        RequestError: 400 for a malformed value or a region or tile outside the image; 413 for more than
            ``max_tiles`` tiles.
    """
    boxes = []
    if request.get("wsi_tiles"):
        tiles = request["wsi_tiles"]
        if not isinstance(tiles, Sequence) or not all(isinstance(t, Mapping) for t in tiles):
            raise RequestError(400, "'wsi_tiles' must be a list of {\"location\": [x, y], \"size\": [w, h]}")
        _check_tile_count(len(tiles), max_tiles)
        for k, tile in enumerate(tiles):
            x, y = int_pair(tile.get("location"), f"wsi_tiles[{k}].location", 0)
            w, h = int_pair(tile.get("size"), f"wsi_tiles[{k}].size", 1)
            boxes.append(_region_box({"location": [x, y], "size": [w, h]}, width0, height0))
    else:
        tile = request.get("tile_size") or DEFAULT_TILE_SIZE
        tw, th = int_pair([tile, tile] if isinstance(tile, (int, float)) else tile, "tile_size", 1)
        x0, y0, x1, y1 = _region_box(request, width0, height0)
        step_x, step_y = tw * downsample, th * downsample  # level-0 pixels per tile
        _check_tile_count(math.ceil((y1 - y0) / step_y) * math.ceil((x1 - x0) / step_x), max_tiles)
        for r in range(math.ceil((y1 - y0) / step_y)):
            for c in range(math.ceil((x1 - x0) / step_x)):
                tx, ty = x0 + round(c * step_x), y0 + round(r * step_y)
                boxes.append((tx, ty, min(x0 + round((c + 1) * step_x), x1), min(y0 + round((r + 1) * step_y), y1)))
    return [
        {
            "location": [bx0, by0],
            "size": [max(1, math.ceil((bx1 - bx0) / downsample)), max(1, math.ceil((by1 - by0) / downsample))],
        }
        for bx0, by0, bx1, by1 in boxes
    ]


def _check_tile_count(count: int, max_tiles: int | None) -> None:
    if max_tiles is not None and count > max_tiles:
        raise RequestError(
            413,
            f"the request plans {count} tiles, more than the server's max_wsi_tiles ({max_tiles}); ask for a "
            "smaller region, larger tiles or a coarser level",
        )


def _output(request: Mapping) -> str | None:
    output = request.get("output", "dsa")  # MONAI Label's default when the request names none
    if output is not None and output not in OUTPUTS:
        raise RequestError(400, f"'output' must be one of {list(OUTPUTS)}, got {output!r}")
    return output


def infer_wsi(task: PixelCAMInferTask, image: str, request: Mapping[str, Any], max_tiles: int = 4096) -> dict:
    """Annotate a region of ``image`` tile by tile (the app's ``infer_wsi``).

    Args:
        task: the infer task.
        image: the file, already resolved from the request's image id.
        request: the WSI request: ``model``, ``output``, ``level``, ``location``, ``size``, ``tile_size`` or
            ``wsi_tiles``, ``min_poly_area`` (level-0 pixels squared), ``threshold``, ``device``,
            ``max_workers`` (tiles in flight, default 1: one forward pass already uses every core).
        max_tiles: most tiles one request may plan (the server's ``max_wsi_tiles``); more: 413, before any
            tile is planned.

    Returns:
        MONAI Label's answer ``{"file": DSA JSON / ASAP XML path or None, "params": result}``; the result
        holds ``name``, ``description`` (class probabilities in words), ``model``, ``location``, ``size``,
        ``level``, ``annotations`` (one task result per tile), ``probabilities`` (class name -> mean over
        the tiles weighted by their area), ``class_name``, ``threshold``, ``polygons`` (count) and
        ``latencies``.

    Raises:
        RequestError: 400 malformed request, 404/422 unreadable image, 413 too many tiles, 503 no model.
    """
    start = time.time()
    output = _output(request)
    try:
        level = int(request.get("level") or 0)
        min_poly_area = float(request.get("min_poly_area", DEFAULT_MIN_POLY_AREA))
        max_workers = max(1, min(int(request.get("max_workers") or 1), os.cpu_count() or 1))
    except (TypeError, ValueError) as e:
        raise RequestError(400, f"bad 'level', 'min_poly_area' or 'max_workers': {e}") from None
    if level < 0:
        raise RequestError(400, f"'level' must be >= 0, got {level}")
    width0, height0, downsample = image_geometry(image, level, task.wsi_backend)
    tiles = plan_tiles(request, width0, height0, downsample, max_tiles)
    base = {k: v for k, v in request.items() if k not in _REGION_KEYS}
    base.update(
        image=image,
        level=level,
        min_poly_area=min_poly_area,
        result_write_to_file=False,
        logging="WARNING" if len(tiles) > 1 else request.get("logging", "INFO"),
    )
    tile_requests = [{**base, **tile} for tile in tiles]
    if max_workers > 1 and len(tiles) > 1:
        with ThreadPoolExecutor(max_workers, thread_name_prefix="pixelcam-wsi") as pool:
            results = [r for _, r in pool.map(task, tile_requests)]
    else:
        results = [task(r)[1] for r in tile_requests]

    probabilities = region_probabilities(results)
    threshold = float(results[0]["threshold"])
    n_polygons = sum(len(e["contours"]) for r in results for e in r["annotation"]["elements"])
    location, size = [min(t["location"][i] for t in tiles) for i in (0, 1)], [0, 0]
    for i in (0, 1):
        size[i] = max(r["annotation"]["location"][i] + r["annotation"]["size"][i] for r in results) - location[i]
    model = request.get("model")
    result = {
        "name": f"MONAILabel Annotations - {model} for {[*location, *size]}",
        "description": describe(probabilities, threshold, len(results), n_polygons),
        "model": model,
        "location": location,
        "size": size,
        "level": level,
        "annotations": results,
        "probabilities": probabilities,
        "class_name": max(probabilities, key=probabilities.get) if probabilities else None,
        "threshold": threshold,
        "polygons": n_polygons,
        "latencies": {"total": round(time.time() - start, 2), "tiles": len(results)},
    }
    logger.info(f"{os.path.basename(image)}: {len(results)} tiles, {n_polygons} polygons, output {output}")
    return {"file": write_annotations(result, output), "params": result}
