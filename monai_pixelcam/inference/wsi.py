"""Whole-slide images: opening them (OpenSlide or tifffile), their microns per pixel, the scale the network
reads them at, and bounded-memory reads (regions, thumbnails).

Reading goes through MONAI's ``WSIReader`` API (``get_size``, ``get_downsample_ratio``, ``get_data(wsi,
location=(row, col) in the level-0 frame, size=(height, width) at the level, level=...)``).

- ``openslide`` (default when importable): ``monai.data.WSIReader(backend="openslide")`` over the
  ``openslide-bin`` wheel: ``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.bif``, ``.vms`` and tiled TIFF.
- ``tifffile`` (fallback, and for TIFFs OpenSlide does not take, e.g. stripped ones): :class:`TiledTiffWSIReader`,
  with ``imagecodecs`` decoding JPEG, JPEG 2000, LZW and WebP tiles. MONAI 1.6's ``TiffFileWSIReader`` decodes
  the *whole* level for every ``get_data`` call and counts levels as top-level pages (a SubIFD pyramid shows one
  level); the subclass keeps MONAI's API, finds the levels through tifffile's series (which also leaves out an
  SVS's thumbnail, label and macro pages) and decodes only the tiles a region touches.

Scale (:func:`choose_scale`): a model trained at ``m`` microns per pixel sees a slide of ``s`` µm/px through
windows of ``S * m / s`` level-0 pixels, read at the coarsest level that is still at least that fine and
resized to ``S`` (tiatoolbox's ``resolution``/``units``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import WSIReader
from monai.data.wsi_reader import TiffFileWSIReader

from ..data.io import MAX_IMAGE_PIXELS, image_to_rgb

__all__ = [
    "SLIDE_SUFFIXES",
    "DEFAULT_MAX_TILE_PIXELS",
    "TiledTiffWSIReader",
    "read_region",
    "wsi_reader",
    "open_slide",
    "close_slide",
    "is_whole_slide",
    "slide_mpp",
    "SlideScale",
    "choose_scale",
    "read_rgb_region",
    "block_mean",
    "read_thumbnail",
]

logger = logging.getLogger(__name__)

#: Suffixes always treated as whole-slide images (TIFF files are judged by :func:`is_whole_slide`).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms")
#: A single-resolution TIFF larger than this many pixels is processed as a slide rather than decoded whole
#: (the image readers' limit: a larger PNG or JPEG is refused).
DEFAULT_MAX_TILE_PIXELS = MAX_IMAGE_PIXELS
_BACKENDS = ("auto", "openslide", "tifffile", "cucim")
_BLOCK = 2048
# A pyramid level whose downsample exceeds the wanted one by at most this much is still taken without a resize
# (vendors store 4.0001 for 4).
_LEVEL_RTOL = 0.01
# microns per unit of a TIFF ResolutionUnit; NONE (1) carries no physical size. tifffile also knows millimetre
# and micrometre units some writers use.
_MICRONS_PER_UNIT = {"INCH": 25400.0, "CENTIMETER": 1e4, "MILLIMETER": 1e3, "MICROMETER": 1.0}
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def _mpp_from_resolution(xres: float, yres: float, unit: str) -> tuple[float, float] | None:
    """``(mpp_y, mpp_x)`` from TIFF X/YResolution (pixels per ``unit``), None without a physical unit."""
    per_unit = _MICRONS_PER_UNIT.get(unit.upper())
    if per_unit is None or not xres > 0 or not yres > 0:
        return None
    return per_unit / yres, per_unit / xres


class TiledTiffWSIReader(TiffFileWSIReader):
    """MONAI's tifffile WSI reader reading regions tile by tile, with levels found through tifffile's series.

    Same API and patch layout as :class:`monai.data.wsi_reader.TiffFileWSIReader` (``get_data`` returns
    ``C x h x w`` with ``channel_dim=0``, ``location`` is ``(row, col)`` in the level-0 frame, a region
    running past the image is cut at its border); only the tiles or strips that the region touches are
    read and decoded. Levels are ``TiffFile.series[0].levels``: reduced-resolution top-level pages and
    SubIFD pyramids both count; an SVS's thumbnail, label and macro pages do not. Pages with
    ``imagedepth > 1`` fall back to decoding the level. :meth:`get_mpp` reads Aperio's ``MPP =`` from the
    ImageDescription, else the resolution tags.
    """

    backend = "tifffile"

    @staticmethod
    def _level_page(wsi, level: int):
        levels = wsi.series[0].levels
        if not 0 <= level < len(levels):
            raise ValueError(f"{wsi.filehandle.path}: level {level} requested but the file has {len(levels)} levels")
        return levels[level].keyframe

    @staticmethod
    def get_level_count(wsi) -> int:
        return len(wsi.series[0].levels)

    def get_size(self, wsi, level: int) -> tuple[int, int]:
        page = self._level_page(wsi, level)
        return int(page.imagelength), int(page.imagewidth)

    def get_downsample_ratio(self, wsi, level: int) -> float:
        return float(self.get_size(wsi, 0)[0]) / float(self.get_size(wsi, level)[0])

    def get_mpp(self, wsi, level: int) -> tuple[float, float]:
        """``(mpp_y, mpp_x)`` at ``level``: Aperio's ``MPP =`` in the level-0 ImageDescription, else the level-0
        X/YResolution with an inch, centimetre, millimetre or micrometre ResolutionUnit, times the downsample.

        Raises:
            ValueError: the file records neither.
        """
        page = self._level_page(wsi, 0)
        found = _APERIO_MPP.search(page.description or "")
        mpp = (float(found.group(1)),) * 2 if found else None
        if mpp is None and "XResolution" in page.tags and "YResolution" in page.tags:
            (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
            unit = page.tags["ResolutionUnit"].value.name if "ResolutionUnit" in page.tags else "INCH"
            if xd and yd:
                mpp = _mpp_from_resolution(xn / xd, yn / yd, unit)
        if mpp is None or not (mpp[0] > 0 and mpp[1] > 0):
            raise ValueError(f"{wsi.filehandle.path}: no microns per pixel (Aperio MPP or TIFF resolution) recorded")
        ratio = self.get_downsample_ratio(wsi, level)
        return mpp[0] * ratio, mpp[1] * ratio

    def _get_patch(self, wsi, location, size, level, dtype, mode) -> np.ndarray:
        page = self._level_page(wsi, level)
        ratio = self.get_downsample_ratio(wsi, level)
        height, width = int(page.imagelength), int(page.imagewidth)
        r0, c0 = (round(location[i] / ratio) for i in range(2))
        r1, c1 = min(r0 + int(size[0]), height), min(c0 + int(size[1]), width)
        if r0 >= height or c0 >= width or r1 <= r0 or c1 <= c0:
            raise ValueError(f"region at {tuple(location)} (level 0) of size {tuple(size)} lies outside level {level}")
        patch = read_region(page, r0, c0, r1, c1).astype(dtype, copy=False)
        if patch.ndim == 2:
            patch = patch[..., None]
        if mode in "RGB":
            if patch.shape[-1] == 1:  # grayscale slide: replicate, as the tile reader does for images
                patch = np.repeat(patch, 3, axis=-1)
            if patch.shape[-1] not in (3, 4):
                raise ValueError(f"expected three or four colour channels in '{mode}' mode, got {patch.shape[-1]}")
            patch = patch[..., :3]
        return np.moveaxis(patch, -1, self.channel_dim)


def read_region(page, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    """Pixels ``[r0:r1, c0:c1]`` of a 2D tifffile page, ``(r1-r0) x (c1-c0) x samples``, decoding only the
    tiles or strips that overlap the region (empty segments stay 0, as tifffile fills them)."""
    if int(getattr(page, "imagedepth", 1)) > 1 or page.is_tiled and int(getattr(page, "tiledepth", 1)) > 1:
        arr = page.asarray()
        return (arr if arr.ndim == 3 else arr[..., None])[r0:r1, c0:c1]
    height, width = int(page.imagelength), int(page.imagewidth)
    samples = int(page.samplesperpixel)
    planes = samples if page.planarconfig == 2 and samples > 1 else 1
    if page.is_tiled:
        seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
    else:
        seg_h, seg_w = min(int(page.rowsperstrip), height), width
    n_rows, n_cols = math.ceil(height / seg_h), math.ceil(width / seg_w)
    out = np.zeros((r1 - r0, c1 - c0, samples), dtype=page.dtype)
    fh = page.parent.filehandle
    for plane in range(planes):
        for sy in range(r0 // seg_h, (r1 - 1) // seg_h + 1):
            for sx in range(c0 // seg_w, (c1 - 1) // seg_w + 1):
                index = plane * n_rows * n_cols + sy * n_cols + sx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                data = None
                if count:
                    with fh.lock:
                        fh.seek(offset)
                        data = fh.read(count)
                segment, where, _ = page.decode(data, index, jpegtables=page.jpegtables)
                if segment is None:
                    continue
                segment = segment.reshape(segment.shape[-3:])  # (length, width, contig samples)
                y, x = int(where[2]), int(where[3])
                ch = int(where[0]) if planes > 1 else 0
                ya, yb = max(y, r0), min(y + segment.shape[0], r1)
                xa, xb = max(x, c0), min(x + segment.shape[1], c1)
                if ya < yb and xa < xb:
                    out[ya - r0 : yb - r0, xa - c0 : xb - c0, ch : ch + segment.shape[2]] = segment[
                        ya - y : yb - y, xa - x : xb - x
                    ]
    return out


def _openslide_importable() -> bool:
    try:
        import openslide  # noqa: F401
    except Exception:  # noqa: BLE001 - also fails when the C library is missing
        return False
    return True


def wsi_reader(backend: str = "auto"):
    """A reader with MONAI's ``WSIReader`` API.

    Args:
        backend: ``"auto"`` (``"openslide"`` when importable, else ``"tifffile"``), ``"openslide"``
            (``monai.data.WSIReader(backend="openslide")``), ``"tifffile"`` (:class:`TiledTiffWSIReader`) or
            ``"cucim"`` (installed separately).
    """
    backend = str(backend).lower()
    if backend not in _BACKENDS:
        raise ValueError(f"unknown WSI backend {backend!r}; choose one of {list(_BACKENDS)}")
    if backend == "auto":
        backend = "openslide" if _openslide_importable() else "tifffile"
    if backend == "tifffile":
        return TiledTiffWSIReader()
    try:
        __import__(backend)
    except Exception as e:  # noqa: BLE001 - openslide also fails when its C library is missing
        hint = "pip install openslide-python openslide-bin" if backend == "openslide" else "pip install cucim"
        raise ImportError(f"the {backend!r} WSI backend needs the '{backend}' package ({hint}): {e}") from None
    return WSIReader(backend=backend)


def open_slide(path: str | os.PathLike, backend: str = "auto"):
    """Open a whole-slide image: ``(reader, handle)``; close the handle with :func:`close_slide`.

    ``"auto"`` tries OpenSlide first (when importable) and falls back to tifffile for files OpenSlide does not
    recognise (stripped TIFFs, for example).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no backend opens the file (names the file and each backend's error).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")
    backend = str(backend).lower()
    if backend not in _BACKENDS:
        raise ValueError(f"unknown WSI backend {backend!r}; choose one of {list(_BACKENDS)}")
    if backend == "auto":
        tries = ["openslide", "tifffile"] if _openslide_importable() else ["tifffile"]
    else:
        tries = [backend]
    errors = []
    for name in tries:
        reader, wsi = wsi_reader(name), None
        try:
            wsi = reader.read(str(path))
            # tifffile opens a damaged TIFF lazily: ask for what every caller needs first
            if reader.get_level_count(wsi) < 1 or min(reader.get_size(wsi, 0)) < 1:
                raise ValueError("no image data")
            return reader, wsi
        except Exception as e:  # noqa: BLE001 - the boundary: any decoder failure becomes a named-file error
            errors.append(f"{name}: {type(e).__name__}: {e}")
            if wsi is not None:
                close_slide(wsi)
    raise ValueError(f"{path}: cannot open as a whole-slide image ({'; '.join(errors)})")


def close_slide(wsi) -> None:
    """Close a handle from :func:`open_slide` (OpenSlide and tifffile handles both have ``close``)."""
    close = getattr(wsi, "close", None)
    if callable(close):
        close()


def is_whole_slide(path: str | os.PathLike, max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS) -> bool:
    """Whether ``path`` should be processed as a whole-slide image: a vendor slide suffix
    (:data:`SLIDE_SUFFIXES`), or a TIFF with several resolution levels (tifffile's pyramid detection: reduced
    pages or SubIFDs), or a single-level TIFF of more than ``max_tile_pixels`` pixels. TIFFs tifffile cannot
    open are not slides (the image reader then reports them)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            page = levels[0].keyframe
            return len(levels) > 1 or int(page.imagelength) * int(page.imagewidth) > int(max_tile_pixels)
    except Exception:  # noqa: BLE001 - not a readable TIFF: leave the diagnosis to read_rgb
        return False


def slide_mpp(reader, wsi) -> tuple[float, float] | None:
    """Level-0 ``(mpp_y, mpp_x)`` in µm, or None when the slide does not record it.

    OpenSlide: ``openslide.mpp-y`` / ``openslide.mpp-x`` (which OpenSlide derives from Aperio's ``MPP``, vendor
    metadata or the TIFF resolution), else the TIFF resolution tags with a physical unit. tifffile:
    :meth:`TiledTiffWSIReader.get_mpp`.
    """
    props = getattr(wsi, "properties", None)
    if props is not None:  # an OpenSlide handle
        try:
            mpp = float(props["openslide.mpp-y"]), float(props["openslide.mpp-x"])
        except (KeyError, TypeError, ValueError):
            try:
                xres, yres = float(props["tiff.XResolution"]), float(props["tiff.YResolution"])
            except (KeyError, TypeError, ValueError):
                return None
            mpp = _mpp_from_resolution(xres, yres, str(props.get("tiff.ResolutionUnit", "inch")))
    else:
        try:
            mpp = reader.get_mpp(wsi, 0)
        except ValueError:
            return None
    if mpp is None or not (mpp[0] > 0 and mpp[1] > 0) or not all(math.isfinite(v) for v in mpp):
        return None
    return float(mpp[0]), float(mpp[1])


@dataclass(frozen=True)
class SlideScale:
    """How the network sees a slide.

    Attributes:
        level: pyramid level windows are read at.
        downsample: that level's downsample (level-0 pixels per level pixel).
        frame_scale: ``(fy, fx)`` level-0 pixels per network-input pixel (the slide resampled to the model's
            mpp is the "frame" windows tile).
        slide_mpp: level-0 ``(mpp_y, mpp_x)`` used, or None when unknown.
        model_mpp: the network input's mpp, or None when unknown.
        mpp_source: ``"slide"`` (metadata), ``"override"`` (given), ``"assumed"`` (slide without mpp) or
            ``"native"`` (model without mpp: level 0, no resize).
    """

    level: int
    downsample: float
    frame_scale: tuple[float, float]
    slide_mpp: tuple[float, float] | None
    model_mpp: float | None
    mpp_source: str

    def read_size(self, window: int) -> tuple[int, int]:
        """``(h, w)`` at :attr:`level` of a ``window x window`` network input."""
        return tuple(max(1, round(window * f / self.downsample)) for f in self.frame_scale)


def choose_scale(
    downsamples: list[float],
    slide_mpp_yx: tuple[float, float] | None,
    model_mpp: float | None,
    window: int,
    name: str = "slide",
    override_mpp: float | None = None,
) -> SlideScale:
    """The pyramid level and resize that give the network ``model_mpp``.

    The level is the coarsest whose downsample does not exceed the wanted one (by more than 1%, for vendors'
    rounding): windows are resized down (or not at all), never up, unless the model wants finer pixels than
    level 0 has. Without a model mpp, level 0 is read at the model's native window; a slide without mpp (and
    no ``override_mpp``) is assumed to be at the model's mpp. Either case logs one warning naming ``name``.

    Args:
        downsamples: each level's downsample, level 0 first (1.0).
        slide_mpp_yx: the slide's level-0 ``(mpp_y, mpp_x)``, or None.
        model_mpp: microns per pixel of the network input, or None.
        window: the network input side ``S`` in pixels (for the warning).
        name: the slide, for the warning.
        override_mpp: level-0 mpp to use instead of the slide's (``--slide#mpp``).
    """
    if override_mpp is not None:
        if not float(override_mpp) > 0:
            raise ValueError(f"{name}: the slide mpp override must be positive, got {override_mpp}")
        slide_mpp_yx, source = (float(override_mpp),) * 2, "override"
    else:
        source = "slide"
    if model_mpp is None:
        logger.warning(
            "%s: the model records no mpp (model_meta.json 'mpp'); reading level 0 with the model's native "
            "%d x %d px window, without resizing", name, window, window,
        )
        return SlideScale(0, 1.0, (1.0, 1.0), slide_mpp_yx, None, "native")
    if slide_mpp_yx is None:
        logger.warning(
            "%s: no microns per pixel in the slide's metadata (OpenSlide mpp, Aperio MPP, TIFF resolution); "
            "assuming level 0 is at the model's %.4g µm/px (windows of %d x %d px at level 0, no resize); set "
            "it with --slide#mpp", name, model_mpp, window, window,
        )
        return SlideScale(0, 1.0, (1.0, 1.0), None, float(model_mpp), "assumed")
    scale = tuple(float(model_mpp) / float(m) for m in slide_mpp_yx)
    wanted = min(scale) * (1.0 + _LEVEL_RTOL)
    level = max((i for i, d in enumerate(downsamples) if float(d) <= wanted), default=0)
    return SlideScale(level, float(downsamples[level]), scale, tuple(slide_mpp_yx), float(model_mpp), source)


def read_rgb_region(reader, wsi, location: tuple[int, int], size: tuple[int, int], level: int) -> np.ndarray:
    """``size`` ``(h, w)`` pixels at ``level`` from level-0 ``location`` ``(row, col)`` as ``uint8 h x w x 3``.

    The part outside the slide (a location may be negative or run past the border) is white glass, so windows
    at the border do not show the network black (OpenSlide's transparent fill) or garbage.
    """
    height, width = reader.get_size(wsi, level)
    ratio = reader.get_downsample_ratio(wsi, level)
    h, w = int(size[0]), int(size[1])
    r, c = round(location[0] / ratio), round(location[1] / ratio)
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    ra, rb, ca, cb = max(r, 0), min(r + h, height), max(c, 0), min(c + w, width)
    if ra >= rb or ca >= cb:
        return out
    patch, _ = reader.get_data(wsi, location=(round(ra * ratio), round(ca * ratio)), size=(rb - ra, cb - ca), level=level)
    patch = np.moveaxis(np.asarray(patch), reader.channel_dim, -1)
    out[ra - r : rb - r, ca - c : cb - c] = image_to_rgb(patch, has_alpha=False)
    return out


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """``h x w x 3`` uint8 averaged over ``factor x factor`` blocks -> ``ceil(h / factor) x ceil(w / factor) x 3``
    uint8 (the last row and column of blocks are completed by repeating the edge)."""
    if factor == 1:
        return rgb
    h, w = rgb.shape[:2]
    ph, pw = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
    if (ph, pw) != (h, w):
        rgb = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    blocks = rgb.reshape(ph // factor, factor, pw // factor, factor, 3).astype(np.float32).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)


def read_thumbnail(reader, wsi, level: int, max_pixels: int) -> tuple[np.ndarray, int]:
    """Level ``level`` as ``uint8 h x w x 3``, averaged down by an integer ``factor`` when it has more than
    ``max_pixels`` pixels; read in blocks, so a large level is never decoded whole.

    Returns:
        ``(thumbnail, factor)``; thumbnail pixel ``(i, j)`` covers level pixels ``[i*factor, (i+1)*factor)``.
    """
    height, width = reader.get_size(wsi, level)
    ratio = reader.get_downsample_ratio(wsi, level)
    factor = max(1, math.ceil(math.sqrt(height * width / max(1, int(max_pixels)))))
    block = factor * max(1, _BLOCK // factor)
    out = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), dtype=np.uint8)
    for r in range(0, height, block):
        for c in range(0, width, block):
            h, w = min(block, height - r), min(block, width - c)
            part = block_mean(read_rgb_region(reader, wsi, (round(r * ratio), round(c * ratio)), (h, w), level), factor)
            out[r // factor : r // factor + part.shape[0], c // factor : c // factor + part.shape[1]] = part
    return out, factor
