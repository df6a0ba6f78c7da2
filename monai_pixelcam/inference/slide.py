"""Whole-slide localization: the slide at the model's mpp, overlapping windows over its tissue through MONAI's
``PatchInferer``, their maps blended at a reduced resolution, and the outputs a viewer takes.

Memory stays bounded by the output, never by level 0: the tissue mask comes from a thumbnail read block by
block from a reduced level, windows are read one batch at a time (in ``DataLoader`` workers, while the network
runs), and the merger holds two ``float32`` arrays of the heat map's size, at most ``max_heatmap_pixels``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import PatchInferer
from tqdm import tqdm

from ..networks.pixelcam import foreground_map
from .outputs import write_localization, write_tiles_csv
from .predictor import PixelCAMPredictor
from .windows import BlendedMerger, TissueWindowSplitter, tissue_mask, window_step
from .wsi import SlideScale, block_mean, choose_scale, close_slide, open_slide, read_thumbnail, slide_mpp

__all__ = [
    "DEFAULT_MAX_HEATMAP_PIXELS",
    "SlideSettings",
    "SlidePlan",
    "SlideResult",
    "plan_slide",
    "infer_slide",
    "write_slide",
    "localize_slide",
    "heatmap_patch_size",
]

logger = logging.getLogger(__name__)

#: Default bound on the heat map's pixels (about 2048 x 2048): what a person looks at; polygons carry the detail.
DEFAULT_MAX_HEATMAP_PIXELS = 2048 * 2048
#: Long side of a slide's overview, the picture ``<stem>_overlay.png`` is drawn on (the slide's own size when smaller):
#: a heat map is sized by the windows (74 x 100 px for a small slide), an overlay by what a person can read.
DEFAULT_OVERVIEW_LONG_SIDE = 2048
# The tissue mask is computed on at most this many thumbnail pixels (blocks averaged) and repeated onto the heat
# map's grid: tissue needs no finer outline, and the HSV conversion of a 4-megapixel thumbnail costs seconds and
# hundreds of MB.
_TISSUE_PIXELS = 1024 * 1024


def heatmap_patch_size(
    window: int, stride: int, frame_shape: tuple[int, int], max_pixels: int, map_size: int | None = None
) -> int:
    """Side of a window's map in the merged heat map.

    At most the network input ``window`` and twice the network's own map (``map_size``: finer adds pixels, not
    information; the iso-lines of the polygons are traced with sub-pixel precision anyway); small enough that
    the heat map of ``frame_shape`` (network pixels) has at most ``max_pixels`` pixels; and, where possible, a
    multiple of ``window / gcd(window, stride)`` so that the windows' steps are whole heat-map pixels.

    Raises:
        ValueError: ``max_pixels`` leaves less than one heat-map pixel per window.
    """
    bound = min(float(window), window * math.sqrt(int(max_pixels) / (frame_shape[0] * frame_shape[1])))
    if map_size is not None:
        bound = min(bound, 2.0 * map_size)
    if bound < 1:
        raise ValueError(
            f"max_heatmap_pixels={max_pixels} leaves less than one pixel per {window} px window for a slide of "
            f"{frame_shape[0]} x {frame_shape[1]} network pixels; raise it to at least "
            f"{math.ceil(frame_shape[0] * frame_shape[1] / window**2)}"
        )
    step = window // math.gcd(window, stride)
    return int(bound // step) * step if bound >= step else int(bound)


def _thumbnail(reader, wsi, shape: tuple[int, int], pixel0: tuple[float, float]) -> np.ndarray:
    """The slide on the heat map's grid: ``uint8 h x w x 3`` for ``shape`` ``(h, w)`` whose pixels span
    ``pixel0`` ``(y, x)`` level-0 pixels, read from the coarsest level at most twice as coarse (blocks averaged,
    then an antialiased resize). A picture to look at and to find tissue on: an up-sampling by less than 2 costs
    it little, while reading the next finer level costs 4 to 16 times the pixels."""
    downsamples = [reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))]
    level = max((lv for lv, d in enumerate(downsamples) if d <= 2.0 * min(pixel0)), default=0)
    thumb, factor = read_thumbnail(reader, wsi, level, max_pixels=shape[0] * shape[1])
    step = downsamples[level] * factor  # level-0 pixels per thumbnail pixel
    x = torch.from_numpy(thumb).permute(2, 0, 1)[None].float()
    scale = (step / pixel0[0], step / pixel0[1])
    x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, recompute_scale_factor=False)
    x = x[..., : shape[0], : shape[1]]
    pad = (0, shape[1] - x.shape[-1], 0, shape[0] - x.shape[-2])
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class _WindowForward:
    """The network ``PatchInferer`` calls: prepared windows ``B x 3 x S x S`` -> foreground maps
    ``B x 1 x out x out`` on the CPU. Keeps each window's class probabilities and foreground fraction, times
    the forward passes and advances the progress bar."""

    def __init__(self, predictor: PixelCAMPredictor, out: int, bar: tqdm) -> None:
        self.predictor, self.out, self.bar = predictor, int(out), bar
        self.probs: list[torch.Tensor] = []
        self.foreground: list[torch.Tensor] = []
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        probs, pix = self.predictor.forward_prepared(x)
        prob = foreground_map(pix)
        if tuple(prob.shape[-2:]) != (self.out, self.out):
            shrink = self.out < prob.shape[-1]
            prob = F.interpolate(prob, size=(self.out, self.out), mode="bilinear", antialias=shrink)
        maps = prob.float().cpu()
        self.probs.append(probs.double().cpu())
        self.foreground.append((maps >= self.predictor.threshold).float().mean(dim=(1, 2, 3)))
        self.seconds += time.perf_counter() - start
        self.bar.update(len(x))
        return maps


@dataclass(frozen=True)
class SlideSettings:
    """How a slide is read and predicted (the bundle's ``slide`` item; every field has the default shown).

    Attributes:
        mpp: level-0 microns per pixel to use instead of the slide's metadata (None: the slide's).
        overlap: between neighbouring windows, a fraction of the window in [0, 1) or whole pixels (int). At 0.5
            every point lies a quarter window or more inside a window that sees it, and the Gaussian weights let
            that window dominate: a CNN's border effects (zero padding, reaching a few map pixels in) vanish.
            0.25 needs 2.2 times fewer windows but leaves faint bands where those effects reach deep.
        max_heatmap_pixels: bound on the heat map's pixel count (and on the merger's memory).
        tissue_threshold: saturation threshold of the tissue mask; None: clamped Otsu.
        min_tissue_fraction: in [0, 1); a window is predicted when its tissue fraction exceeds it.
        batch_size: windows per forward pass (>= 1).
        num_workers: ``DataLoader`` processes reading windows (0: read in this process, between passes).
        backend: ``"auto"`` (OpenSlide, else tifffile), ``"openslide"``, ``"tifffile"`` or ``"cucim"``.
        blend: how overlapping windows are weighted: ``"gaussian"`` or ``"constant"``.
        overview_long_side: long side of the overview the overlay is drawn on (the slide's own when smaller).

    Raises:
        ValueError: a value out of its range, named.
    """

    mpp: float | None = None
    overlap: float | int = 0.5
    max_heatmap_pixels: int = DEFAULT_MAX_HEATMAP_PIXELS
    tissue_threshold: float | None = None
    min_tissue_fraction: float = 0.0
    batch_size: int = 8
    num_workers: int = 2
    backend: str = "auto"
    blend: str = "gaussian"
    overview_long_side: int = DEFAULT_OVERVIEW_LONG_SIDE

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"slide batch_size must be positive, got {self.batch_size}")
        if int(self.num_workers) < 0:
            raise ValueError(f"slide num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= float(self.min_tissue_fraction) < 1.0:
            raise ValueError(f"slide min_tissue_fraction must lie in [0, 1), got {self.min_tissue_fraction}")
        if int(self.overview_long_side) < 1:
            raise ValueError(f"slide overview_long_side must be positive, got {self.overview_long_side}")


@dataclass
class SlidePlan:
    """What :func:`plan_slide` decided for a slide, before any window is read.

    Attributes:
        path, backend: the slide and the reader that opened it (``"openslide"`` or ``"tifffile"``).
        scale: the level and resize (:class:`~monai_pixelcam.inference.wsi.SlideScale`).
        window, out: network input side ``S``; side of a window's map in the heat map.
        heat_shape: ``(h, w)`` of the heat map; ``pixel0``: ``(y, x)`` level-0 pixels per heat-map pixel.
        thumbnail: ``uint8 h x w x 3``, the slide on the heat map's grid; ``tissue``: bool ``h x w``;
            ``tissue_threshold``: the saturation threshold used.
        splitter: the windows over the tissue (``splitter.windows``), ready for ``PatchInferer``.
        seconds: time planning took (open, thumbnail, tissue mask).
        shape0: ``(height, width)`` of level 0.
        overview: ``uint8 H x W x 3``, the whole slide with its long side ``overview_long_side`` (or level 0's
            when smaller); ``overview_pixel0``: ``(y, x)`` level-0 pixels per overview pixel.
    """

    path: Path
    backend: str
    scale: SlideScale
    window: int
    out: int
    heat_shape: tuple[int, int]
    pixel0: tuple[float, float]
    thumbnail: np.ndarray
    tissue: np.ndarray
    tissue_threshold: float
    splitter: TissueWindowSplitter
    seconds: float
    shape0: tuple[int, int]
    overview: np.ndarray
    overview_pixel0: tuple[float, float]


def plan_slide(
    path: str | os.PathLike, predictor: PixelCAMPredictor, settings: SlideSettings | None = None
) -> SlidePlan:
    """Steps 1 and 2 of :func:`infer_slide` (same arguments): scale, heat-map grid, thumbnail, tissue mask and
    the windows to predict (in the order they will be read)."""
    settings = settings or SlideSettings()
    start = time.perf_counter()
    path = Path(path)
    window = int(predictor.image_size)
    stride = window_step(window, settings.overlap)
    reader, wsi = open_slide(path, settings.backend)
    try:
        shape0 = reader.get_size(wsi, 0)
        downsamples = [reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))]
        scale = choose_scale(
            downsamples, slide_mpp(reader, wsi), predictor.mpp, window, name=str(path), override_mpp=settings.mpp
        )
        frame = tuple(math.ceil(s / f) for s, f in zip(shape0, scale.frame_scale))
        out = heatmap_patch_size(window, stride, frame, settings.max_heatmap_pixels, predictor.map_size)
        heat_shape = tuple(round(s * (out / window)) for s in frame)  # as PatchInferer sizes its merger
        pixel0 = tuple(f * window / out for f in scale.frame_scale)
        thumbnail = _thumbnail(reader, wsi, heat_shape, pixel0)
        side = min(int(settings.overview_long_side), max(shape0))
        overview_shape = tuple(max(1, round(s * side / max(shape0))) for s in shape0)
        overview_pixel0 = tuple(s / o for s, o in zip(shape0, overview_shape))
        overview = _thumbnail(reader, wsi, overview_shape, overview_pixel0)
        backend_used = reader.backend
    finally:
        close_slide(wsi)
    k = max(1, math.ceil(math.sqrt(heat_shape[0] * heat_shape[1] / _TISSUE_PIXELS)))
    coarse, used_threshold = tissue_mask(block_mean(thumbnail, k), settings.tissue_threshold)
    tissue = np.repeat(np.repeat(coarse, k, axis=0), k, axis=1)[: heat_shape[0], : heat_shape[1]]
    splitter = TissueWindowSplitter(
        path, backend_used, shape0, scale, window, settings.overlap, tissue, (window / out, window / out),
        settings.min_tissue_fraction, predictor.prepare, num_workers=settings.num_workers,
    )
    read_size = scale.read_size(window)
    logger.info(
        "%s: level %d (downsample %.4g) read with %s, slide mpp %s (%s), model mpp %s: %d x %d px windows at "
        "level %d resized to %d px, %d of %d on tissue; heat map %d x %d (%.3g level-0 px per px)",
        path.name, scale.level, scale.downsample, backend_used,
        "unknown" if scale.slide_mpp is None else f"{scale.slide_mpp[1]:.4g}", scale.mpp_source,
        "unknown" if scale.model_mpp is None else f"{scale.model_mpp:.4g}", read_size[0], read_size[1], scale.level,
        window, len(splitter.windows), splitter.positions, heat_shape[0], heat_shape[1], pixel0[1],
    )
    return SlidePlan(
        path, backend_used, scale, window, out, heat_shape, pixel0, thumbnail, tissue, used_threshold, splitter,
        time.perf_counter() - start, tuple(int(v) for v in shape0), overview, overview_pixel0,
    )


@dataclass
class SlideResult:
    """A slide's localization (:func:`infer_slide`), on the heat map's grid of ``H x W`` pixels.

    Attributes:
        heatmap: float32 ``H x W`` in [0, 1]; 0 where no window was predicted.
        covered: bool ``H x W``, under a predicted window.
        tissue: uint8 ``H x W`` in {0, 1}, the tissue mask that chose the windows.
        mask: uint8 ``H x W`` in {0, 1}: ``heatmap >= threshold`` under a predicted window.
        thumbnail: uint8 ``H x W x 3``, the slide on the heat map's grid.
        overview: uint8 ``h x w x 3``, the whole slide with its long side ``overview_long_side`` (the overlay's
            background); ``overview_pixel``: ``(y, x)`` level-0 pixels per overview pixel.
        shape0: ``(height, width)`` of level 0.
        heatmap_pixel: ``(y, x)`` level-0 pixels per heat-map pixel.
        scale: the level and resize (:class:`~monai_pixelcam.inference.wsi.SlideScale`); ``read_size``: a
            window's ``(h, w)`` at that level.
        tiles: rows of ``<stem>_tiles.csv`` (level-0 ``row``, ``col``, ``level`` and size read there, tissue
            fraction, class, probabilities, foreground fraction), one per predicted window.
        tiles_total: window positions over the slide; ``tiles_predicted``: those on tissue, predicted.
        tissue_threshold: the saturation threshold the tissue mask used.
        probs: mean class probabilities over the windows (float64, sums to 1); None without tissue.
        label, class_name: the argmax of ``probs`` (None without tissue).
        foreground_fraction: share of the covered pixels in the mask, in [0, 1].
        timings: seconds: ``tissue``, ``read_wait``, ``read_decode_workers``, ``forward``, ``merge``, ``total``
            (and ``write`` after :func:`localize_slide`).
        paths: the files written (:func:`write_slide`); empty until then.
    """

    heatmap: np.ndarray
    covered: np.ndarray
    tissue: np.ndarray
    mask: np.ndarray
    thumbnail: np.ndarray
    overview: np.ndarray
    overview_pixel: tuple[float, float]
    shape0: tuple[int, int]
    heatmap_pixel: tuple[float, float]
    scale: SlideScale
    read_size: tuple[int, int]
    tiles: list[list]
    tiles_total: int
    tiles_predicted: int
    tissue_threshold: float
    probs: np.ndarray | None
    label: int | None
    class_name: str | None
    foreground_fraction: float
    timings: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def level(self) -> int:
        """The slide level the windows were read at."""
        return self.scale.level

    @property
    def tiles_skipped(self) -> int:
        """Window positions left out (not enough tissue)."""
        return self.tiles_total - self.tiles_predicted


def infer_slide(
    path: str | os.PathLike, predictor: PixelCAMPredictor, settings: SlideSettings | None = None, progress: bool = True
) -> SlideResult:
    """Localization heat map of a whole-slide image by overlapping windows over its tissue, at the model's mpp
    (:func:`localize_slide` also writes the outputs).

    1. Scale (:func:`~monai_pixelcam.inference.wsi.choose_scale`): the slide's level-0 mpp (``settings.mpp``
       overrides it) and the model's (``predictor.mpp``) give the level windows are read at and their size
       there; each window is resized to ``S = predictor.image_size``. A slide or model without mpp logs one
       warning.
    2. Heat-map grid: a window's map becomes ``out x out`` pixels (:func:`heatmap_patch_size`: at most twice
       the network's map, and so that the heat map has at most ``settings.max_heatmap_pixels`` pixels). The
       slide's thumbnail is read on that grid and its tissue mask computed
       (:func:`~monai_pixelcam.inference.windows.tissue_mask`).
    3. ``PatchInferer`` with a :class:`~monai_pixelcam.inference.windows.TissueWindowSplitter` (windows
       ``settings.overlap`` apart whose tissue fraction exceeds ``settings.min_tissue_fraction``, read by
       ``settings.num_workers`` processes) and a :class:`~monai_pixelcam.inference.windows.BlendedMerger`
       (``settings.blend``); a tqdm bar (``progress``) counts the windows.

    Args:
        path: slide file (any format the backend reads).
        predictor: a loaded :class:`PixelCAMPredictor`; its ``threshold`` makes the mask, its ``mpp`` the scale.
        settings: how the slide is read and predicted (:class:`SlideSettings`; None: the defaults).
        progress: show the tqdm bar.
    """
    settings = settings or SlideSettings()
    start = time.perf_counter()
    path = Path(path)
    plan = plan_slide(path, predictor, settings)
    splitter, scale = plan.splitter, plan.scale
    n_windows = len(splitter.windows)
    read_size = scale.read_size(plan.window)

    loop_start = time.perf_counter()
    with tqdm(total=n_windows, desc=path.name, unit="tile", disable=not progress, mininterval=1.0) as bar:
        forward = _WindowForward(predictor, plan.out, bar)
        if n_windows:
            inferer = PatchInferer(
                splitter=splitter, merger_cls=BlendedMerger, batch_size=int(settings.batch_size), mode=settings.blend
            )
            merged = inferer(str(path), forward)[0, 0].numpy()
        else:
            merged = np.full(plan.heat_shape, np.nan, dtype=np.float32)
    loop_seconds = time.perf_counter() - loop_start

    covered = np.isfinite(merged)
    heat = np.clip(np.nan_to_num(merged, nan=0.0), 0.0, 1.0).astype(np.float32)
    # the tissue mask chooses the windows; it does not cut the map: a gland's lumen is glass-white and foreground
    mask = ((heat >= predictor.threshold) & covered).astype(np.uint8)
    probs = torch.cat(forward.probs).numpy() if forward.probs else np.zeros((0, len(predictor.classes)))
    foreground = torch.cat(forward.foreground).numpy() if forward.foreground else np.zeros(0)
    mean_probs = probs.mean(axis=0) if len(probs) else None
    label = int(np.argmax(mean_probs)) if mean_probs is not None else None
    rows = [
        [k, level0[0], level0[1], scale.level, read_size[0], read_size[1], f"{fraction:.4f}",
         predictor.classes[int(p.argmax())], *[f"{v:.6f}" for v in p], f"{fg:.6f}"]
        for k, ((_, level0, fraction), p, fg) in enumerate(zip(splitter.windows, probs, foreground))
    ]

    end = time.perf_counter()
    timings = {
        "tissue": plan.seconds,
        "read_wait": splitter.wait_seconds,
        "read_decode_workers": splitter.read_seconds,
        "forward": forward.seconds,
        "merge": max(0.0, loop_seconds - splitter.wait_seconds - forward.seconds),
        "total": end - start,
    }
    logger.info(
        "%s: %d windows in %.1f s (%s)", path.name, n_windows, timings["total"],
        ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total"),
    )
    return SlideResult(
        heatmap=heat, covered=covered, tissue=plan.tissue.astype(np.uint8), mask=mask, thumbnail=plan.thumbnail,
        overview=plan.overview, overview_pixel=plan.overview_pixel0, shape0=plan.shape0, heatmap_pixel=plan.pixel0,
        scale=scale, read_size=read_size, tiles=rows, tiles_total=splitter.positions, tiles_predicted=n_windows,
        tissue_threshold=plan.tissue_threshold, probs=mean_probs, label=label,
        class_name=predictor.classes[label] if label is not None else None,
        foreground_fraction=float(mask[covered].mean()) if covered.any() else 0.0, timings=timings,
    )


def write_slide(
    result: SlideResult,
    output_dir: str | os.PathLike,
    stem: str,
    threshold: float,
    classes: Sequence[str],
    min_polygon_area: float | None = None,
    save_nifti: bool = False,
) -> dict[str, Path]:
    """The outputs of an :func:`infer_slide` result (:func:`~monai_pixelcam.inference.outputs.write_localization`):
    at the heat map's size ``<stem>_heatmap.png``, ``<stem>_mask.png`` and ``<stem>_tissue.png`` (the data, at
    ``heatmap_pixel`` level-0 pixels per pixel); ``<stem>_overlay.png``, the map upsampled smoothly onto the
    slide's overview; ``<stem>_regions.geojson`` (level-0 pixels, every polygon inside the slide);
    ``<stem>_tiles.csv`` and, with ``save_nifti``, ``<stem>_map.nii.gz``. Returns the paths (also set as
    ``result.paths``).

    Args:
        min_polygon_area: GeoJSON polygons smaller than this (level-0 pixels squared) are left out; None: the
            area of 4 x 4 heat-map pixels (speckle a viewer would only be slowed by).
    """
    output_dir = Path(output_dir)
    pixel0 = result.heatmap_pixel
    if min_polygon_area is None:
        min_polygon_area = 16.0 * pixel0[0] * pixel0[1]
    (height0, width0), overview_pixel = result.shape0, result.overview_pixel
    paths = write_localization(
        output_dir, stem, result.heatmap, threshold, classes, result.probs, result.overview,
        valid=result.covered, tissue=result.tissue, scale=(pixel0[1], pixel0[0]),
        min_polygon_area=min_polygon_area, save_nifti=save_nifti, extent=(width0, height0),
        background_scale=(overview_pixel[1], overview_pixel[0]),
    )
    paths["tiles"] = write_tiles_csv(output_dir / f"{stem}_tiles.csv", result.tiles, classes)
    result.paths = paths
    return paths


def localize_slide(
    path: str | os.PathLike,
    predictor: PixelCAMPredictor,
    output_dir: str | os.PathLike,
    settings: SlideSettings | None = None,
    progress: bool = True,
    min_polygon_area: float | None = None,
    save_nifti: bool = False,
    stem: str | None = None,
) -> SlideResult:
    """:func:`infer_slide`, then :func:`write_slide` into ``output_dir`` with the prefix ``stem`` (default the
    file name without its suffix). The result's ``paths`` hold the files, and ``timings["write"]`` (also
    counted in ``timings["total"]``) the writing time."""
    result = infer_slide(path, predictor, settings, progress)
    start = time.perf_counter()
    write_slide(
        result, output_dir, stem or Path(path).stem, predictor.threshold, predictor.classes,
        min_polygon_area=min_polygon_area, save_nifti=save_nifti,
    )
    result.timings["write"] = time.perf_counter() - start
    result.timings["total"] += result.timings["write"]
    return result
