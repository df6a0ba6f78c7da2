"""Writing pyramidal, JPEG-compressed TIFF slides in the Aperio SVS layout, from an array or tile by tile.

For demo slides, tests and benchmarks: OpenSlide opens the result as an ``aperio`` slide (``openslide.mpp-x``,
``aperio.AppMag``), tifffile as an ``svs`` series whose levels leave out the thumbnail. Layout, as Aperio
scanners write it: level 0 (tiled, its ImageDescription ``Aperio Image Library ... |AppMag = M|MPP = m``),
a stripped thumbnail page, then the reduced levels (tiled). With ``aperio=False`` the pyramid is a generic tiled
TIFF whose mpp is in the X/YResolution tags (centimetre unit), reduced levels marked as reduced-resolution pages.

Level 0 is written tile by tile from ``source`` and the reduced levels are averaged from each tile as it
passes, so only the reduced levels are held in memory (1/16 of level 0 for a downsample of 4).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .wsi import block_mean

__all__ = ["write_pyramid_tiff"]

_APERIO = "Aperio Image Library v12.0.15"
_THUMBNAIL_SIDE = 1024


def write_pyramid_tiff(
    path: str | os.PathLike,
    source: np.ndarray | Callable[[int, int, int, int], np.ndarray],
    shape: Sequence[int] | None = None,
    mpp: float | None = 0.5,
    downsamples: Sequence[int] = (4, 16),
    tile: int = 256,
    quality: int = 90,
    app_mag: float | None = 20.0,
    aperio: bool = True,
) -> Path:
    """Write a pyramidal JPEG TIFF atomically.

    Args:
        path: output file (``.svs`` or ``.tif``).
        source: level 0 as an ``H x W x 3`` uint8 array, or a function ``(row, col, height, width) -> height x
            width x 3`` uint8 giving any region of it (called once per tile, row by row).
        shape: ``(H, W)`` of level 0; required with a function, taken from an array.
        mpp: level-0 microns per pixel, or None to record none.
        downsamples: integer downsample of each reduced level; each must divide ``tile``.
        tile: tile side in pixels (a multiple of 16, as TIFF requires).
        quality: JPEG quality 1..100.
        app_mag: the objective magnification Aperio records (``AppMag``), or None.
        aperio: Aperio layout and ImageDescription; False writes a generic pyramid with resolution tags.

    Returns:
        ``Path(path)``.
    """
    import tifffile

    if isinstance(source, np.ndarray):
        array = source
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{path}: level 0 must be an H x W x 3 uint8 array, got {array.shape} {array.dtype}")
        shape = array.shape[:2]
        source = lambda r, c, h, w: array[r : r + h, c : c + w]  # noqa: E731
    if shape is None:
        raise ValueError(f"{path}: give the level-0 shape when the source is a function")
    height, width = int(shape[0]), int(shape[1])
    if tile % 16 or any(tile % int(d) or int(d) < 2 for d in downsamples):
        raise ValueError(f"{path}: tile {tile} must be a multiple of 16 and of every downsample {list(downsamples)}")
    if mpp is not None and not float(mpp) > 0:
        raise ValueError(f"{path}: mpp must be positive, got {mpp}")
    factors = [int(d) for d in downsamples]
    levels = [np.full((math.ceil(height / d), math.ceil(width / d), 3), 255, np.uint8) for d in factors]

    def level0_tiles() -> Iterator[np.ndarray]:
        for r in range(0, height, tile):
            for c in range(0, width, tile):
                h, w = min(tile, height - r), min(tile, width - c)
                part = np.asarray(source(r, c, h, w), dtype=np.uint8)
                if part.shape != (h, w, 3):
                    raise ValueError(f"{path}: the source gave shape {part.shape} for a {h} x {w} region")
                for d, level in zip(factors, levels):
                    small = block_mean(part, d)
                    level[r // d : r // d + small.shape[0], c // d : c // d + small.shape[1]] = small
                out = np.full((tile, tile, 3), 255, np.uint8)  # TIFF tiles are whole; the border tiles padded
                out[:h, :w] = part
                yield out

    def description(h: int, w: int) -> str:
        head = f"{_APERIO}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
        if (h, w) != (height, width):
            head += f" -> {w}x{h}"
        tags = [f"AppMag = {app_mag:g}"] if app_mag is not None else []
        tags += [f"MPP = {float(mpp):.6g}"] if mpp is not None else []
        return "|".join([f"{head} JPEG/RGB Q={quality}", *tags])

    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": int(quality)}, "metadata": None}
    tiled = {**jpeg, "tile": (tile, tile)}

    def page_tags(h: int, w: int, downsample: int) -> dict:
        """Aperio: the ImageDescription; generic: resolution tags, and reduced levels marked as such."""
        if aperio:
            return {"description": description(h, w)}
        tags = {"subfiletype": 1} if downsample > 1 else {}
        if mpp is not None:
            tags.update(resolution=(1e4 / (float(mpp) * downsample),) * 2, resolutionunit="CENTIMETER")
        return tags

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=height * width * 3 > 2**31) as tif:
        tif.write(level0_tiles(), shape=(height, width, 3), dtype=np.uint8, **tiled, **page_tags(height, width, 1))
        if aperio and levels:  # the thumbnail page comes second in an SVS; OpenSlide lists it as associated
            step = max(1, math.ceil(max(levels[-1].shape[:2]) / _THUMBNAIL_SIDE))
            thumb = np.ascontiguousarray(levels[-1][::step, ::step])
            tif.write(thumb, description=description(*thumb.shape[:2]), **jpeg)
        for d, level in zip(factors, levels):
            tif.write(level, **tiled, **page_tags(*level.shape[:2], d))
    return Path(path)
