"""Whole-slide localization: sliding windows over the tissue of a pyramidal TIFF, pasted into a slide heatmap.

Reading goes through MONAI's ``WSIReader`` API (``get_size``, ``get_downsample_ratio``, ``get_data(wsi,
location=(row, col) in the level-0 frame, size=(height, width) at the level, level=...)``). For the tifffile
backend :class:`TiledTiffWSIReader` is used: MONAI 1.6's ``TiffFileWSIReader`` decodes the *whole* level for
every ``get_data`` call (``wsi.asarray(level=...)`` then a slice) and counts levels as top-level TIFF pages,
so a pyramid stored in SubIFDs shows one level. The subclass keeps MONAI's API and patch layout, finds the
levels through tifffile's series (top-level reduced pages and SubIFDs alike) and decodes only the tiles or
strips a region touches. OpenSlide (``backend="openslide"``) reads regions natively.

Memory stays bounded by the output: the tissue mask comes from a thumbnail of the lowest-resolution level
(read block by block and averaged down when that level is large), tiles are read one batch at a time, and
only the heatmap-level accumulators (two ``float32`` arrays of the heatmap level's size) are held.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import WSIReader
from monai.data.wsi_reader import TiffFileWSIReader

from ..data.atomic import write_csv_atomic, write_nifti_atomic, write_png_atomic
from ..data.io import image_to_rgb
from ..visualize import heatmap_rgb
from .predictor import PixelCAMPredictor

__all__ = [
    "TiledTiffWSIReader",
    "wsi_reader",
    "is_whole_slide",
    "tissue_mask",
    "read_thumbnail",
    "tile_grid",
    "localize_slide",
    "SLIDE_SUFFIXES",
    "DEFAULT_MAX_TILE_PIXELS",
]

logger = logging.getLogger(__name__)

#: Suffixes always treated as whole-slide images (TIFF files are judged by :func:`is_whole_slide`).
SLIDE_SUFFIXES = (".svs",)
#: A single-resolution TIFF larger than this many pixels is processed as a slide rather than decoded whole.
DEFAULT_MAX_TILE_PIXELS = 4096 * 4096
# Saturation bounds for the Otsu threshold: glass is nearly grey (saturation < 0.02..0.05) and H&E tissue
# is clearly coloured (> 0.15). Clamping keeps a thumbnail that is all tissue (or all glass) from being
# split in two by Otsu, which always finds *some* threshold.
_OTSU_CLAMP = (0.02, 0.15)
_THUMBNAIL_PIXELS = 4096 * 4096
_BLOCK = 2048


class TiledTiffWSIReader(TiffFileWSIReader):
    """MONAI's tifffile WSI reader reading regions tile by tile, with levels found through tifffile's series.

    Same API and patch layout as :class:`monai.data.wsi_reader.TiffFileWSIReader` (``get_data`` returns
    ``C x h x w`` with ``channel_dim=0``, ``location`` is ``(row, col)`` in the level-0 frame, a region
    running past the image is cut at its border); only the tiles or strips that the region touches are
    read and decoded. Levels are ``TiffFile.series[0].levels``: reduced-resolution top-level pages and
    SubIFD pyramids both count. Pages with ``imagedepth > 1`` fall back to decoding the level.
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


def wsi_reader(backend: str = "tifffile"):
    """A reader with MONAI's ``WSIReader`` API: :class:`TiledTiffWSIReader` for ``"tifffile"``, else
    ``monai.data.WSIReader(backend=backend)`` (``"openslide"``, ``"cucim"``; installed separately)."""
    backend = backend.lower()
    if backend == "tifffile":
        return TiledTiffWSIReader()
    module = {"openslide": "openslide", "cucim": "cucim"}.get(backend)
    if module is None:
        raise ValueError(f"unknown WSI backend {backend!r}; choose 'tifffile', 'openslide' or 'cucim'")
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001 - openslide also fails when its C library is missing
        raise ImportError(
            f"the {backend!r} WSI backend needs the '{module}' package "
            f"({'pip install openslide-python openslide-bin' if module == 'openslide' else 'pip install cucim'}): {e}"
        ) from None
    return WSIReader(backend=backend)


def is_whole_slide(path: str | os.PathLike, max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS) -> bool:
    """Whether ``path`` should be processed as a whole-slide image: an ``.svs`` file, or a TIFF with several
    resolution levels (tifffile's pyramid detection: reduced pages or SubIFDs), or a single-level TIFF of
    more than ``max_tile_pixels`` pixels. Files tifffile cannot open are not slides (the image reader then
    reports them)."""
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


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of ``H x W x 3`` uint8 RGB, float32 in [0, 1] (0 for black)."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def tissue_mask(rgb: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Tissue of a low-resolution slide image by HSV saturation (glass and black borders are grey).

    Args:
        rgb: ``H x W x 3`` uint8 thumbnail.
        threshold: saturation threshold in [0, 1]; None: Otsu's threshold of the saturation, clamped to
            [0.02, 0.15] so that a thumbnail that is all tissue or all glass is not split in two.

    Returns:
        ``(mask, threshold)``: bool ``H x W`` (saturation > threshold) after a 3 x 3 median filter that
        removes isolated specks, and the threshold used.
    """
    from scipy.ndimage import median_filter
    from skimage.filters import threshold_otsu

    sat = median_filter(_saturation(rgb), size=3)
    if threshold is None:
        try:
            t = float(threshold_otsu(sat))
        except ValueError:  # a constant image has no Otsu threshold
            t = _OTSU_CLAMP[1]
        threshold = float(np.clip(t, *_OTSU_CLAMP))
    elif not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"tissue_threshold must lie in [0, 1], got {threshold}")
    return sat > float(threshold), float(threshold)


def _read_rgb_region(reader, wsi, location: tuple[int, int], size: tuple[int, int], level: int) -> np.ndarray:
    """``get_data`` -> ``h x w x 3`` uint8 (16-bit or float slides scaled by the image reader's rule)."""
    patch, _ = reader.get_data(wsi, location=location, size=size, level=level)
    patch = np.moveaxis(np.asarray(patch), reader.channel_dim, -1)
    return image_to_rgb(patch, has_alpha=False)


def _to_level0(value: int, ratio: float) -> int:
    return int(round(value * ratio))


def read_thumbnail(reader, wsi, level: int, max_pixels: int = _THUMBNAIL_PIXELS) -> tuple[np.ndarray, int]:
    """Level ``level`` as ``uint8 h x w x 3``, averaged down by an integer ``factor`` when it has more than
    ``max_pixels`` pixels; read in blocks, so a large single-level slide is never decoded whole.

    Returns:
        ``(thumbnail, factor)``; thumbnail pixel ``(i, j)`` covers level pixels ``[i*factor, (i+1)*factor)``.
    """
    height, width = reader.get_size(wsi, level)
    ratio = reader.get_downsample_ratio(wsi, level)
    factor = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    if factor == 1 and height * width <= _BLOCK * _BLOCK:
        return _read_rgb_region(reader, wsi, (0, 0), (height, width), level), 1
    block = factor * max(1, _BLOCK // factor)
    out = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), dtype=np.uint8)
    for r in range(0, height, block):
        for c in range(0, width, block):
            h, w = min(block, height - r), min(block, width - c)
            part = _read_rgb_region(reader, wsi, (_to_level0(r, ratio), _to_level0(c, ratio)), (h, w), level)
            if factor > 1:
                ph, pw = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
                padded = np.pad(part, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge").astype(np.float32)
                part = padded.reshape(ph // factor, factor, pw // factor, factor, 3).mean(axis=(1, 3))
                part = np.round(part).astype(np.uint8)
            out[r // factor : r // factor + part.shape[0], c // factor : c // factor + part.shape[1]] = part
    return out, factor


def tile_grid(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` every ``stride`` pixels covering ``[0, length)``.

    The last tile is moved inward to end at the border (rather than running past it and reading padding),
    so every tile lies inside the image; a dimension shorter than ``tile`` gets one tile at 0.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def localize_slide(
    path: str | os.PathLike,
    predictor: PixelCAMPredictor,
    output_dir: str | os.PathLike,
    level: int = 0,
    tile_size: int | None = None,
    overlap: int = 0,
    heatmap_level: int | None = None,
    tissue_threshold: float | None = None,
    batch_size: int = 8,
    backend: str = "tifffile",
    min_tissue_fraction: float = 0.0,
    save_nifti: bool = False,
    stem: str | None = None,
) -> dict:
    """Localization heatmap of a whole-slide image by sliding windows over its tissue.

    1. Tissue mask (:func:`tissue_mask`) on a thumbnail of the lowest-resolution level.
    2. Tiles of ``tile_size`` px at ``level``, ``tile_size - overlap`` apart; a tile is predicted only when
       more than ``min_tissue_fraction`` of its area is tissue (default: any tissue); the others are
       counted as skipped background. Each tile is read with ``reader.get_data`` and predicted in batches
       of ``batch_size`` (:meth:`PixelCAMPredictor.predict_tensor`: resized to the model's input size).
    3. Each tile's map is resized onto its footprint at ``heatmap_level`` and averaged where tiles overlap.

    Args:
        path: slide file (pyramidal TIFF / SVS; any format ``backend`` reads).
        predictor: a loaded :class:`PixelCAMPredictor`; its ``threshold`` makes the mask.
        output_dir: folder for the outputs (created).
        level: pyramid level the tiles are read at (0 = full resolution).
        tile_size: tile side in pixels at ``level``; default ``predictor.image_size`` (no resizing).
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile_size``.
        heatmap_level: level whose size the heatmap has; default the lowest-resolution level.
        tissue_threshold: saturation threshold of the tissue mask; None: clamped Otsu.
        batch_size: tiles per forward pass.
        backend: ``"tifffile"`` (default, :class:`TiledTiffWSIReader`), ``"openslide"`` or ``"cucim"``.
        min_tissue_fraction: in [0, 1); a tile is predicted when its tissue fraction exceeds it.
        save_nifti: also write ``<stem>_map.nii.gz`` (see :func:`~monai_pixelcam.data.atomic.write_nifti_atomic`).
        stem: output file prefix; default the file name without its suffix.

    Outputs (written atomically): ``<stem>_heatmap.png`` (colour map; white where no tile was predicted),
    ``<stem>_mask.png`` (0/255, ``heatmap >= threshold`` on predicted pixels), ``<stem>_tissue.png``
    (0/255), ``<stem>_tiles.csv`` (one row per predicted tile: level-0 ``row``, ``col``, size at ``level``,
    tissue fraction, class, one probability column per class, foreground fraction), all images at the
    heatmap level's size.

    Returns:
        dict with ``"heatmap"`` (float32 ``H x W`` in [0, 1], the heatmap level's size; 0 where no tile was
        predicted), ``"mask"`` (uint8 {0, 1}), ``"tissue"`` (uint8 {0, 1}), ``"covered"`` (bool, pixels under
        a predicted tile), ``"paths"`` (name -> Path), ``"tiles_total"``, ``"tiles_predicted"``,
        ``"tiles_skipped"``, ``"level"``, ``"heatmap_level"``, ``"tile_size"``, ``"tissue_threshold"``,
        ``"probs"`` (mean class probabilities over predicted tiles, None without tissue), ``"label"``,
        ``"class_name"`` (argmax of ``"probs"``, None without tissue), ``"foreground_fraction"`` (fraction of
        covered pixels in the mask).
    """
    path = Path(path)
    output_dir = Path(output_dir)
    stem = stem or path.stem
    tile_size = int(tile_size or predictor.image_size)
    if tile_size < 1 or not 0 <= int(overlap) < tile_size:
        raise ValueError(
            f"need tile_size >= 1 and 0 <= overlap < tile_size, got tile_size={tile_size}, overlap={overlap}"
        )
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0.0 <= float(min_tissue_fraction) < 1.0:
        raise ValueError(f"min_tissue_fraction must lie in [0, 1), got {min_tissue_fraction}")
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")

    reader = wsi_reader(backend)
    try:
        wsi = reader.read(str(path))
    except Exception as e:  # noqa: BLE001 - the boundary: any backend failure becomes a named-file error
        raise ValueError(
            f"{path}: cannot open as a whole-slide image with the {backend} backend ({type(e).__name__}: {e})"
        ) from None
    try:
        n_levels = reader.get_level_count(wsi)
        if heatmap_level is None:
            heatmap_level = n_levels - 1
        for name, value in (("level", level), ("heatmap_level", heatmap_level)):
            if not 0 <= int(value) < n_levels:
                raise ValueError(f"{path}: {name}={value} but the slide has levels 0..{n_levels - 1}")
        level, heatmap_level = int(level), int(heatmap_level)
        ratio = reader.get_downsample_ratio(wsi, level)
        heat_ratio = reader.get_downsample_ratio(wsi, heatmap_level)
        level_h, level_w = reader.get_size(wsi, level)
        heat_h, heat_w = reader.get_size(wsi, heatmap_level)

        # 1. tissue on a thumbnail of the lowest-resolution level
        thumb_level = n_levels - 1
        thumb, factor = read_thumbnail(reader, wsi, thumb_level)
        tissue, used_threshold = tissue_mask(thumb, tissue_threshold)
        thumb_ratio = reader.get_downsample_ratio(wsi, thumb_level) * factor  # level-0 px per thumbnail px

        def thumb_box(r0: float, c0: float, h0: float, w0: float) -> tuple[slice, slice]:
            ra, rb = int(r0 // thumb_ratio), math.ceil((r0 + h0) / thumb_ratio)
            ca, cb = int(c0 // thumb_ratio), math.ceil((c0 + w0) / thumb_ratio)
            ra, ca = min(ra, tissue.shape[0] - 1), min(ca, tissue.shape[1] - 1)
            return slice(ra, max(rb, ra + 1)), slice(ca, max(cb, ca + 1))

        # 2. tiles at `level` that touch tissue
        stride = tile_size - int(overlap)
        tiles, skipped = [], 0
        rows, cols = tile_grid(level_h, tile_size, stride), tile_grid(level_w, tile_size, stride)
        for r in rows:
            for c in cols:
                h, w = min(tile_size, level_h - r), min(tile_size, level_w - c)
                loc = (_to_level0(r, ratio), _to_level0(c, ratio))
                fraction = float(tissue[thumb_box(loc[0], loc[1], h * ratio, w * ratio)].mean())
                if fraction > min_tissue_fraction:
                    tiles.append((loc, (h, w), fraction))
                else:
                    skipped += 1
        logger.info(
            "%s: %d of %d tiles of %d px at level %d touch tissue", path.name, len(tiles), len(rows) * len(cols),
            tile_size, level,
        )

        # 3. predict in batches and paste into the heatmap-level accumulators
        total = np.zeros((heat_h, heat_w), dtype=np.float32)
        weight = np.zeros((heat_h, heat_w), dtype=np.float32)
        tile_rows, all_probs = [], []
        n_batches = math.ceil(len(tiles) / int(batch_size))
        for b, batch in enumerate(_batches(tiles, int(batch_size)), start=1):
            if b % max(1, n_batches // 10) == 0 or b == n_batches:
                logger.info("%s: batch %d/%d", path.name, b, n_batches)
            pixels = torch.full((len(batch), 3, tile_size, tile_size), 1.0)  # white glass around short tiles
            for i, (loc, (h, w), _) in enumerate(batch):
                rgb = _read_rgb_region(reader, wsi, loc, (h, w), level)
                pixels[i, :, :h, :w] = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
            probs, maps = predictor.predict_tensor(pixels)
            for i, (loc, (h, w), fraction) in enumerate(batch):
                tile_map = maps[i : i + 1, :, :h, :w]
                ya, yb = round(loc[0] / heat_ratio), round((loc[0] + h * ratio) / heat_ratio)
                xa, xb = round(loc[1] / heat_ratio), round((loc[1] + w * ratio) / heat_ratio)
                ya, xa = min(ya, heat_h - 1), min(xa, heat_w - 1)
                yb, xb = min(max(yb, ya + 1), heat_h), min(max(xb, xa + 1), heat_w)
                footprint = F.interpolate(tile_map, size=(yb - ya, xb - xa), mode="bilinear", antialias=True)
                total[ya:yb, xa:xb] += footprint[0, 0].numpy()
                weight[ya:yb, xa:xb] += 1.0
                p = probs[i].double().numpy()
                all_probs.append(p)
                tile_rows.append(
                    [len(tile_rows), loc[0], loc[1], level, h, w, f"{fraction:.4f}", predictor.classes[int(p.argmax())]]
                    + [f"{v:.6f}" for v in p]
                    + [f"{float((tile_map >= predictor.threshold).float().mean()):.6f}"]
                )
    finally:
        close = getattr(wsi, "close", None)
        if callable(close):
            close()

    covered = weight > 0
    heat = np.where(covered, total / np.maximum(weight, 1.0), 0.0).astype(np.float32)
    np.clip(heat, 0.0, 1.0, out=heat)
    mask = ((heat >= predictor.threshold) & covered).astype(np.uint8)
    # tissue at the heatmap's grid: each heatmap pixel takes the thumbnail pixel under its centre
    yi = np.minimum(((np.arange(heat_h) + 0.5) * heat_ratio / thumb_ratio).astype(np.int64), tissue.shape[0] - 1)
    xi = np.minimum(((np.arange(heat_w) + 0.5) * heat_ratio / thumb_ratio).astype(np.int64), tissue.shape[1] - 1)
    tissue_heat = tissue[np.ix_(yi, xi)].astype(np.uint8)

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "heatmap": write_png_atomic(output_dir / f"{stem}_heatmap.png", heatmap_rgb(heat, covered)),
        "mask": write_png_atomic(output_dir / f"{stem}_mask.png", mask * 255),
        "tissue": write_png_atomic(output_dir / f"{stem}_tissue.png", tissue_heat * 255),
        "tiles": write_csv_atomic(
            output_dir / f"{stem}_tiles.csv",
            ["tile", "row", "col", "level", "height", "width", "tissue_fraction", "class"]
            + [f"prob_{c}" for c in predictor.classes]
            + ["foreground_fraction"],
            tile_rows,
        ),
    }
    if save_nifti:
        paths["map"] = write_nifti_atomic(output_dir / f"{stem}_map.nii.gz", heat)

    mean_probs = np.mean(all_probs, axis=0) if all_probs else None
    label = int(np.argmax(mean_probs)) if mean_probs is not None else None
    return {
        "heatmap": heat,
        "mask": mask,
        "tissue": tissue_heat,
        "covered": covered,
        "paths": paths,
        "tiles_total": len(tiles) + skipped,
        "tiles_predicted": len(tiles),
        "tiles_skipped": skipped,
        "level": level,
        "heatmap_level": heatmap_level,
        "tile_size": tile_size,
        "tissue_threshold": used_threshold,
        "probs": mean_probs,
        "label": label,
        "class_name": predictor.classes[label] if label is not None else None,
        "foreground_fraction": float(mask[covered].mean()) if covered.any() else 0.0,
    }
