"""Sliding windows over a slide's tissue for MONAI's ``PatchInferer``: the tissue mask, the splitter that plans
and reads the windows, and the merger that blends their maps.

- :func:`tissue_mask`: ``monai.transforms.ForegroundMask`` on the HSV saturation of a thumbnail.
- :class:`TissueWindowSplitter`: a ``WSISlidingWindowSplitter`` whose frame is the slide resampled to the
  model's mpp (:class:`~monai_pixelcam.inference.wsi.SlideScale`); its windows are planned on the tissue mask
  and read by :class:`SlideWindowDataset` in ``DataLoader`` workers while the network runs.
- :class:`BlendedMerger`: a ``monai.inferers.Merger`` weighting each window's map by an importance map, so that
  overlapping windows blend without seams.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, iter_patch_position
from monai.inferers import Merger, WSISlidingWindowSplitter
from monai.utils import BlendMode, ensure_tuple_rep, look_up_option

from ..transforms.array import NetworkInput
from .wsi import SlideScale, close_slide, open_slide, read_rgb_region, wsi_reader

__all__ = ["tissue_mask", "window_step", "BlendedMerger", "SlideWindowDataset", "TissueWindowSplitter"]

# Saturation bounds for the Otsu threshold: glass is nearly grey (saturation < 0.02..0.05) and H&E tissue
# is clearly coloured (> 0.15). Clamping keeps a thumbnail that is all tissue (or all glass) from being
# split in two by Otsu, which always finds *some* threshold.
_OTSU_CLAMP = (0.02, 0.15)


class _ClampedOtsu:
    """Otsu's threshold of a channel clamped to :data:`_OTSU_CLAMP`; remembers the last value."""

    value: float | None = None

    def __call__(self, channel: np.ndarray) -> float:
        from skimage.filters import threshold_otsu

        try:
            t = float(threshold_otsu(channel))
        except ValueError:  # a constant image has no Otsu threshold
            t = _OTSU_CLAMP[1]
        self.value = float(np.clip(t, *_OTSU_CLAMP))
        return self.value


def tissue_mask(rgb: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Tissue of a low-resolution slide image: HSV saturation above a threshold (glass and black borders are
    grey), by ``monai.transforms.ForegroundMask``, then a 3 x 3 majority filter that drops isolated specks.

    Args:
        rgb: ``H x W x 3`` uint8 thumbnail.
        threshold: saturation threshold in (0, 1]; None: Otsu's threshold of the saturation, clamped to
            [0.02, 0.15] so that a thumbnail that is all tissue or all glass is not split in two.

    Returns:
        ``(mask, threshold)``: bool ``H x W`` and the threshold used.
    """
    from monai.transforms import ForegroundMask
    from scipy.ndimage import median_filter

    if threshold is None:
        rule: Callable | float = _ClampedOtsu()
    elif not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"tissue_threshold must lie in (0, 1], got {threshold}")
    else:
        rule = float(threshold)
    mask = ForegroundMask(threshold=None, hsv_threshold={"S": rule})(np.moveaxis(np.asarray(rgb), -1, 0))
    mask = median_filter(np.asarray(mask[0], dtype=np.uint8), size=3).astype(bool)
    return mask, float(rule.value if isinstance(rule, _ClampedOtsu) else rule)


class BlendedMerger(Merger):
    """Weighted average of overlapping window outputs; what no window covers is NaN.

    Each window's values are weighted by ``compute_importance_map`` (MONAI's Gaussian importance, as
    ``SlidingWindowInferer(mode="gaussian")`` blends): a window's border, where padding distorts a CNN's map,
    counts little next to the neighbour that sees it in its centre. Re-implemented because MONAI's mergers
    (``AvgMerger``, ``ZarrAvgMerger``) weigh every pixel of a window alike, which leaves a step where a window
    ends. Patches running past the merged shape are cut.

    Args:
        merged_shape: ``1 x C x H x W`` of the accumulators (``PatchInferer`` computes it).
        cropped_shape: the shape returned by :meth:`finalize`.
        device: where the accumulators live.
        mode: ``"gaussian"`` or ``"constant"`` (plain average), as ``monai.utils.BlendMode``.
        sigma_scale: Gaussian sigma as a fraction of the window side.
    """

    def __init__(
        self,
        merged_shape: Sequence[int],
        cropped_shape: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
    ) -> None:
        super().__init__(merged_shape=merged_shape, cropped_shape=cropped_shape, device=device)
        if len(self.merged_shape) != 4:
            raise ValueError(f"BlendedMerger merges 2D maps: merged_shape must be 1 x C x H x W, got {self.merged_shape}")
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = float(sigma_scale)
        self.values = torch.zeros(self.merged_shape, dtype=torch.float32, device=device)
        self.weights = torch.zeros(self.merged_shape[2:], dtype=torch.float32, device=device)
        self._importance: dict[tuple[int, int], torch.Tensor] = {}

    def _importance_map(self, size: tuple[int, int]) -> torch.Tensor:
        if size not in self._importance:
            self._importance[size] = compute_importance_map(
                size, mode=self.mode, sigma_scale=self.sigma_scale, device=self.values.device
            )
        return self._importance[size]

    def aggregate(self, values: torch.Tensor, location: Sequence[int]) -> None:
        """Add ``values`` (``1 x C x h x w``) with its top-left corner at ``location`` ``(row, col)``."""
        if self.is_finalized:
            raise ValueError("BlendedMerger is already finalized; create a new one to aggregate.")
        h, w = int(values.shape[-2]), int(values.shape[-1])
        weight = self._importance_map((h, w))
        (r, c), (height, width) = location, self.merged_shape[2:]
        ra, rb, ca, cb = max(r, 0), min(r + h, height), max(c, 0), min(c + w, width)
        if ra >= rb or ca >= cb:
            return
        part = (slice(ra - r, rb - r), slice(ca - c, cb - c))
        self.values[..., ra:rb, ca:cb] += values[..., part[0], part[1]].to(self.values) * weight[part]
        self.weights[ra:rb, ca:cb] += weight[part]

    def finalize(self) -> torch.Tensor:
        """The weighted mean, ``cropped_shape``; NaN where no window contributed."""
        if not self.is_finalized:
            covered = self.weights > 0
            self.values = torch.where(covered, self.values / self.weights.clamp_min(1e-12), float("nan"))
            self.values = self.values[tuple(slice(0, end) for end in self.cropped_shape)]
            self.is_finalized = True
        return self.values


def window_step(window: int, overlap: float | int) -> int:
    """Pixels between neighbouring windows of side ``window``, as MONAI's splitters step: ``overlap`` a fraction
    in [0, 1) (``round(window * (1 - overlap))``) or whole pixels in [0, window)."""
    if isinstance(overlap, float):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"a fractional overlap must lie in [0, 1), got {overlap}")
        return round(window * (1.0 - overlap))
    if not 0 <= int(overlap) < window:
        raise ValueError(f"overlap must lie in [0, {window}) pixels of the {window} px window, got {overlap}")
    return window - int(overlap)


def _block_key(location: Sequence[int], span: int) -> tuple[int, int]:
    """The block of ``span x span`` frame pixels a window's top-left corner falls in."""
    return int(location[0]) // span, int(location[1]) // span


class SlideWindowDataset(torch.utils.data.Dataset):
    """Windows of a slide as network inputs, read block by block, for a ``DataLoader`` whose workers read while
    the network runs.

    The windows are ``window x window`` squares of the frame (the slide at the model's mpp, ``scale.frame_scale``
    level-0 pixels per frame pixel) at frame ``locations``; consecutive windows in the same block of
    ``block_span x block_span`` frame pixels (see :func:`_block_key`) form one item. Item ``b`` reads the
    block's bounding box once at ``scale.level`` (outside the slide: white), resizes it to the frame (the
    predictor's antialiased bilinear filter, on uint8) and cuts its windows: with overlap 0.5 every pixel belongs to four windows, and one
    region read and resized per block costs a fraction of one per window. Cutting from the resized block
    differs from resizing each window alone only in the resize filter's reach at window borders (the block is
    the truer picture of the slide at the frame's scale). With stain normalisation each window is cut at the
    level's resolution and prepared alone (Macenko statistics per window, as for a tile).

    Returns per item ``(x, indices, seconds)``: ``x`` ``n x 3 x window x window`` float32 in [0, 1], the
    windows' indices into ``locations``, and the time reading, decoding and preparing took. Each process opens
    its own slide handle (file handles do not cross a fork safely).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str,
        scale: SlideScale,
        window: int,
        locations: Sequence[tuple[int, int]],
        prepare: NetworkInput,
        block_span: int,
    ) -> None:
        self.path, self.backend, self.scale, self.window = str(path), backend, scale, int(window)
        self.locations = [(int(r), int(c)) for r, c in locations]
        self.prepare = prepare
        self.blocks: list[list[int]] = []
        for _, members in groupby(range(len(self.locations)), key=lambda i: _block_key(self.locations[i], block_span)):
            self.blocks.append(list(members))
        self._slide: tuple | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[int], float]:
        start = time.perf_counter()
        if self._slide is None or self._pid != os.getpid():
            self._slide, self._pid = open_slide(self.path, self.backend), os.getpid()
        reader, wsi = self._slide
        members, (fy, fx), d = self.blocks[b], self.scale.frame_scale, self.scale.downsample
        rows, cols = [self.locations[i][0] for i in members], [self.locations[i][1] for i in members]
        r0, c0 = min(rows), min(cols)
        frame_size = (max(rows) + self.window - r0, max(cols) + self.window - c0)
        read_size = (max(1, round(frame_size[0] * fy / d)), max(1, round(frame_size[1] * fx / d)))
        rgb = read_rgb_region(reader, wsi, (round(r0 * fy), round(c0 * fx)), read_size, self.scale.level)
        block = torch.from_numpy(rgb).permute(2, 0, 1)  # 3 x h x w uint8, channels-last in memory
        if self.prepare.stain is None:
            if read_size != frame_size:
                # torch's uint8 kernel of AntialiasedResize's filter (fixed point, within one grey level of the
                # float one), about 5x cheaper than converting the block to float and resizing that
                block = F.interpolate(block[None], size=frame_size, mode="bilinear", antialias=True)[0]
            pixels = block.float().div_(255.0)
            x = torch.stack([pixels[:, r - r0 : r - r0 + self.window, c - c0 : c - c0 + self.window]
                             for r, c in zip(rows, cols)])
        else:
            pixels = block.float().div_(255.0)
            h, w = self.scale.read_size(self.window)
            cuts = [(round((r - r0) * fy / d), round((c - c0) * fx / d)) for r, c in zip(rows, cols)]
            x = torch.stack([self.prepare(pixels[:, a : a + h, b_ : b_ + w]) for a, b_ in cuts])
        return x.contiguous(), members, time.perf_counter() - start

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            close_slide(self._slide[1])
        self._slide = None


class TissueWindowSplitter(WSISlidingWindowSplitter):
    """``WSISlidingWindowSplitter`` over the slide resampled to the model's mpp, over tissue only, with windows
    read in ``DataLoader`` workers.

    The frame it splits is the slide at the network's scale (``scale.frame_scale`` level-0 pixels per frame
    pixel); windows are ``patch_size`` frame pixels, ``overlap`` apart as in MONAI (a fraction or pixels),
    padded past the bottom and right border. The stock ``__call__`` reads every window at one level, serially,
    before its ``filter_fn`` sees it; this one plans the windows on ``tissue`` first (kept when their tissue
    fraction exceeds ``min_tissue_fraction``), orders them block by block (``block x block`` window steps) and
    reads each block once at ``scale.level`` in ``num_workers`` processes (:class:`SlideWindowDataset`).

    Args:
        path: the slide; ``backend`` the reader that opened it (``"openslide"`` or ``"tifffile"``).
        shape0: level-0 ``(H, W)``.
        scale: from :func:`~monai_pixelcam.inference.wsi.choose_scale`.
        patch_size: network input side ``S``.
        overlap: between windows, a float in [0, 1) or pixels.
        tissue: bool ``h x w`` mask on a grid of ``tissue_scale`` frame pixels per mask pixel.
        min_tissue_fraction: in [0, 1).
        prepare: the predictor's :class:`~monai_pixelcam.transforms.NetworkInput`.
        num_workers: ``DataLoader`` processes.
        block: windows per side of a block read at once.

    Attributes:
        windows: the planned windows, ``[(frame (row, col), level-0 (row, col), tissue fraction)]`` in the order
            they are yielded.
        positions: how many window positions the grid has, tissue or not.
        read_seconds: summed time the workers spent reading, decoding and preparing.
        wait_seconds: time the caller waited for windows (reading not hidden behind the network).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str,
        shape0: tuple[int, int],
        scale: SlideScale,
        patch_size: int,
        overlap: float | int,
        tissue: np.ndarray,
        tissue_scale: tuple[float, float],
        min_tissue_fraction: float,
        prepare: NetworkInput,
        num_workers: int = 0,
        block: int = 8,
    ) -> None:
        with warnings.catch_warnings():
            # MONAI warns that its tifffile reader decodes whole levels; our tifffile reader decodes tiles
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(patch_size=int(patch_size), overlap=overlap, pad_mode="constant", reader=wsi_reader(backend))
        self.path, self.backend, self.scale = str(path), backend, scale
        self.frame_shape = tuple(math.ceil(s / f) for s, f in zip(shape0, scale.frame_scale))
        self.num_workers, self.prepare = int(num_workers), prepare
        self.block_span = max(1, int(block)) * window_step(int(patch_size), overlap)
        windows = self._plan(np.asarray(tissue, dtype=bool), tissue_scale, float(min_tissue_fraction))
        self.windows = sorted(windows, key=lambda w: (_block_key(w[0], self.block_span), w[0]))
        self.read_seconds = 0.0
        self.wait_seconds = 0.0

    def get_input_shape(self, inputs=None) -> tuple:
        return self.frame_shape

    def get_padded_shape(self, inputs=None) -> tuple:
        # MONAI's padding stops short of one whole window when the frame is smaller than a window
        padded = super().get_padded_shape(inputs)
        return tuple(max(p, int(self.patch_size)) for p in padded)

    def _plan(self, tissue: np.ndarray, tissue_scale: tuple[float, float], min_fraction: float) -> list:
        size = int(self.patch_size)
        # the grid MONAI's splitter walks: a square window, this splitter's overlap, no offset
        overlap = ensure_tuple_rep(self.overlap, 2)
        windows, self.positions = [], 0
        for r, c in iter_patch_position(self.get_padded_shape(), (size, size), (0, 0), overlap, False):
            self.positions += 1
            ra, ca = int(r / tissue_scale[0]), int(c / tissue_scale[1])
            rb = min(max(math.ceil((r + size) / tissue_scale[0]), ra + 1), tissue.shape[0])
            cb = min(max(math.ceil((c + size) / tissue_scale[1]), ca + 1), tissue.shape[1])
            if ra >= rb or ca >= cb:
                continue
            fraction = float(tissue[ra:rb, ca:cb].mean())
            if fraction > min_fraction:
                level0 = (round(r * self.scale.frame_scale[0]), round(c * self.scale.frame_scale[1]))
                windows.append(((int(r), int(c)), level0, fraction))
        return windows

    def __call__(self, inputs=None) -> Iterable[tuple[torch.Tensor, Sequence[int]]]:
        """Yield ``(1 x 3 x S x S window, frame (row, col))`` for every planned window, in order."""
        dataset = SlideWindowDataset(
            self.path, self.backend, self.scale, int(self.patch_size), [w[0] for w in self.windows], self.prepare,
            self.block_span,
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available()
        )
        blocks = iter(loader)
        try:
            while True:
                start = time.perf_counter()
                try:
                    x, members, seconds = next(blocks)
                except StopIteration:
                    break
                self.wait_seconds += time.perf_counter() - start
                self.read_seconds += float(seconds)
                for k, i in enumerate(members):
                    yield x[k : k + 1], self.windows[i][0]
        finally:
            dataset.close()
