"""Pixel pseudo-labels (seeds) drawn from class activation maps for PixelCAM training.

"Seed" here is the reference code's term for a pixel pseudo-label; the run's random seed (bundle id ``seed``)
only decides which pixels a draw picks (:class:`~monai_pixelcam.handlers.ReseedEachIteration`).

Every training iteration, each image of the batch receives a few foreground and background pixel labels
drawn from its (augmented) CAM; all other pixels are ``ignore_index``. The draw is done for the whole batch
at once, on the CAM's device, with torch only.

A seeder is a :class:`PixelSeeder` subclass that only says how foreground pixels are weighted
(:meth:`PixelSeeder.foreground_weights`); the background pool, the sampling, the fallback, the
negative-class rule and the conflict rule live in the base class:

- :class:`ThresholdSeeder`: foreground pool = CAM at or above its per-image Otsu threshold, optionally
  eroded; seeds drawn uniformly from it.
- :class:`ProbabilitySeeder`: foreground seeds drawn with probability proportional to the CAM value.

Background pool (both): the ``ceil(bg_fraction * h * w)`` pixels of lowest CAM value of each image. Ties are
broken at random (a fresh random order for every call), so the pool has exactly that size even when, after a
ReLU, far more than ``bg_fraction`` of the pixels share the value 0; thresholding at the quantile instead
would let the pool grow to every tied pixel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from collections.abc import Sequence

import torch
from monai.transforms import erode

__all__ = [
    "PixelSeeder",
    "ThresholdSeeder",
    "ProbabilitySeeder",
    "otsu_threshold",
    "binary_erosion",
    "random_ranks",
    "sample_without_replacement",
]


def otsu_threshold(cam: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Per-image Otsu threshold of maps in [0, 1], batched (one histogram per image, no loop).

    The histogram has ``bins`` equal bins over the fixed range [0, 1] (the maps are min-max normalised CAMs,
    so the range is known; a fixed range also keeps the thresholds of a batch comparable). The returned
    threshold is the upper edge of the bin that maximises the between-class variance, so the foreground is
    exactly ``cam >= threshold``. An image with a single populated bin (a constant map) has no split; its
    threshold is that of the first bin edge above 0 (``1 / bins``), which gives an empty foreground for a map
    of zeros.

    Args:
        cam: B x ... maps (any trailing shape, e.g. B x 1 x h x w or B x h x w), values in [0, 1].
        bins: number of histogram bins.

    Returns:
        B float tensor of thresholds in [1 / bins, 1], on ``cam``'s device.
    """
    flat = cam.reshape(cam.shape[0], -1).float()
    idx = (flat * bins).long().clamp_(0, bins - 1)
    hist = torch.zeros(flat.shape[0], bins, device=flat.device, dtype=torch.float64)
    hist.scatter_add_(1, idx, torch.ones_like(flat, dtype=torch.float64))
    prob = hist / flat.shape[1]
    centers = (torch.arange(bins, device=flat.device, dtype=torch.float64) + 0.5) / bins
    omega = prob.cumsum(1)  # weight of the class below each split
    mu = (prob * centers).cumsum(1)
    mu_total = mu[:, -1:]
    denom = omega * (1.0 - omega)
    # a split with an empty side has no between-class variance; 0 instead of 0/0
    between = torch.where(denom > 1e-12, (mu_total * omega - mu) ** 2 / denom.clamp_min(1e-12), 0.0)
    split = between[:, :-1].argmax(1)  # split after bin k: foreground = bins k+1..bins-1
    return (split + 1).float() / bins


def binary_erosion(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Batched binary erosion with a ``(2 radius + 1)`` square structuring element (MONAI's ``erode``).

    Outside the image counts as foreground, so a region is not eroded from the image border (a gland cut by
    the crop border is still a gland); this matches OpenCV's default border for ``cv2.erode``.

    Args:
        mask: B x h x w bool.
        radius: erosion radius in pixels (0 returns the mask unchanged); an 11 x 11 kernel is radius 5.

    Returns:
        B x h x w bool.
    """
    if radius < 0:
        raise ValueError(f"erosion radius must be >= 0, got {radius}")
    if radius == 0:
        return mask
    # MONAI's erode, padding with foreground (its default pad_value 1)
    return erode(mask.unsqueeze(1).float(), filter_size=2 * radius + 1, pad_value=1.0).squeeze(1) > 0.5


def random_ranks(values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of every entry of each row, ascending, ties broken uniformly at random.

    A random permutation of each row followed by a stable sort of the permuted values gives a total order
    in which equal values appear in random order; the ranks are that order's inverse.

    Args:
        values: B x N float.
        generator: optional ``torch.Generator`` on ``values``' device.

    Returns:
        B x N long, each row a permutation of ``0 .. N-1`` (0 = lowest value).
    """
    b, n = values.shape
    perm = torch.rand(b, n, device=values.device, generator=generator).argsort(dim=1)
    order = perm.gather(1, values.gather(1, perm).argsort(dim=1, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=values.device).expand(b, n))
    return ranks


def sample_without_replacement(
    weights: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``min(k, number of positive weights)`` entries of each row without replacement.

    The draw follows successive sampling with probability proportional to ``weights`` (the distribution of
    ``torch.multinomial(..., replacement=False)``), computed for the whole batch at once with the
    exponential-race trick (Efraimidis and Spirakis 2006, which ``torch.multinomial`` also uses): keys
    ``w / E`` with ``E ~ Exp(1)``, keep the ``k`` largest. Unlike ``torch.multinomial`` it accepts rows with
    fewer than ``k`` (even zero) positive weights: those rows return all of their positive entries. Weights
    of 0 or 1 give a uniform draw from the pool of ones.

    Args:
        weights: B x N float, >= 0.
        k: number of entries to draw per row.
        generator: optional ``torch.Generator`` on ``weights``' device.

    Returns:
        B x N bool, True at drawn entries.
    """
    b, n = weights.shape
    k = min(int(k), n)
    drawn = torch.zeros(b, n, dtype=torch.bool, device=weights.device)
    if k <= 0:
        return drawn
    race = torch.empty(b, n, device=weights.device, dtype=torch.float32).exponential_(generator=generator)
    positive = weights > 0
    keys = torch.where(positive, weights.float() / race, -1.0)  # -1: below every pool member
    top = keys.topk(k, dim=1, sorted=False).indices
    drawn.scatter_(1, top, True)
    return drawn & positive


class PixelSeeder(ABC):
    """Base class: draws foreground / background pixel seeds from CAMs for a whole batch at once.

    Subclasses define :meth:`foreground_weights`; the rest is shared:

    - background pool: the ``ceil(bg_fraction * h * w)`` lowest-CAM pixels of each image, ties broken at
      random (see :func:`random_ranks`); ``n_bg`` pixels are drawn uniformly from it;
    - foreground: ``n_fg`` pixels drawn (without replacement) with the subclass's weights;
      with ``disjoint_pools=True`` the background pool is removed from the foreground candidates first;
    - fallback: when an image has no foreground candidate left (e.g. erosion emptied the Otsu region, or the
      CAM is 0 everywhere), its foreground pool becomes its ``fallback_size`` highest-CAM pixels (ties broken
      at random, so this pool never meets the background pool unless the two sizes add up to more than
      ``h * w``) and ``n_fg`` pixels are drawn from it uniformly;
    - counts: exactly ``n_fg`` / ``n_bg`` seeds per image when the pool holds at least that many pixels;
      when it holds fewer, all of its pixels are taken;
    - conflict: a pixel drawn both as foreground and as background is set to ``ignore_index``;
    - negative classes: when ``labels`` are given and ``negative_background`` is on, an image whose label is
      in ``negative_classes`` contains no region of interest: it gets no foreground seed and its ``n_bg``
      background seeds are drawn uniformly from the whole image rather than from its lowest-CAM pixels.
      Without ``labels`` every image is seeded from its CAM.

    Args:
        n_fg: foreground seeds per image (>= 0).
        n_bg: background seeds per image (>= 0).
        bg_fraction: fraction ``p`` in (0, 1] of the lowest CAM values that forms the background pool.
        negative_classes: label ints whose images contain no region of interest (e.g. ``[0]`` = normal).
        negative_background: give negative-class images background-only seeds from the whole image.
        disjoint_pools: remove the background pool from the foreground candidates.
        fallback_size: size of the top-CAM foreground pool used when the regular one is empty
            (default ``max(n_fg, 1)``).
        ignore_index: value of unseeded pixels (PyTorch's cross-entropy default, -100).

    Call: ``seeder(cam, labels=None, generator=None)``

    - ``cam``: B x 1 x h x w or B x h x w float in [0, 1], any resolution;
    - ``labels``: B (or B x 1) integer class labels, used only for ``negative_classes``;
    - ``generator``: optional ``torch.Generator`` on ``cam``'s device; the same generator state gives the
      same seeds.

    Returns a B x h x w long tensor on ``cam``'s device: 1 = foreground, 0 = background, ``ignore_index``
    elsewhere.
    """

    def __init__(
        self,
        n_fg: int = 1,
        n_bg: int = 1,
        bg_fraction: float = 0.4,
        negative_classes: Sequence[int] = (),
        negative_background: bool = True,
        disjoint_pools: bool = False,
        fallback_size: int | None = None,
        ignore_index: int = -100,
    ) -> None:
        if int(n_fg) < 0 or int(n_bg) < 0:
            raise ValueError(f"n_fg and n_bg must be >= 0, got n_fg={n_fg}, n_bg={n_bg}")
        if not 0.0 < float(bg_fraction) <= 1.0:
            raise ValueError(f"bg_fraction must be in (0, 1], got {bg_fraction}")
        if ignore_index in (0, 1):
            raise ValueError(f"ignore_index must differ from the seed values 0 and 1, got {ignore_index}")
        if fallback_size is not None and int(fallback_size) < 1:
            raise ValueError(f"fallback_size must be >= 1, got {fallback_size}")
        self.n_fg = int(n_fg)
        self.n_bg = int(n_bg)
        self.bg_fraction = float(bg_fraction)
        self.negative_classes = [int(c) for c in negative_classes]
        self.negative_background = bool(negative_background)
        self.disjoint_pools = bool(disjoint_pools)
        self.fallback_size = max(self.n_fg, 1) if fallback_size is None else int(fallback_size)
        self.ignore_index = int(ignore_index)

    @abstractmethod
    def foreground_weights(self, cam: torch.Tensor) -> torch.Tensor:
        """Foreground sampling weights: B x h x w float >= 0 (0 = not a candidate) for CAMs B x h x w."""

    def background_size(self, num_pixels: int) -> int:
        """Size of the background pool of an image of ``num_pixels`` pixels: ``ceil(bg_fraction * N)``."""
        # round first so that e.g. 0.07 * 100 = 7.000000000000001 gives 7, not 8
        return min(num_pixels, math.ceil(round(self.bg_fraction * num_pixels, 6)))

    def pools(
        self, cam: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground weights and background pool of every image, before drawing.

        Args:
            cam: B x 1 x h x w or B x h x w float in [0, 1].
            labels: optional B integer labels (for ``negative_classes``).
            generator: optional ``torch.Generator`` on ``cam``'s device (breaks ties).

        Returns:
            ``(fg_weights, bg_pool)``: B x h x w float >= 0 and B x h x w bool.
        """
        cam = self._check_cam(cam)
        if generator is not None and generator.device.type != cam.device.type:
            raise ValueError(
                f"generator is on {generator.device} but cam is on {cam.device}: seeds are drawn on the CAM's "
                "device, create the generator there (torch.Generator(device=cam.device))"
            )
        b, h, w = cam.shape
        n = h * w
        flat = cam.reshape(b, n).float()
        ranks = random_ranks(flat, generator)
        bg_pool = ranks < self.background_size(n)

        fg_weights = self.foreground_weights(flat.view(b, h, w)).reshape(b, n).float()
        if fg_weights.shape != flat.shape:
            raise ValueError(
                f"{type(self).__name__}.foreground_weights returned shape {tuple(fg_weights.shape)}, "
                f"expected {(b, h, w)}"
            )
        if self.disjoint_pools:
            fg_weights = fg_weights.masked_fill(bg_pool, 0.0)
        empty = (fg_weights > 0).sum(1, keepdim=True) == 0
        top = (ranks >= n - min(self.fallback_size, n)).float()
        fg_weights = torch.where(empty, top, fg_weights)

        negative = self._negative(labels, b, cam.device)
        if negative is not None:
            fg_weights = fg_weights.masked_fill(negative, 0.0)
            bg_pool = bg_pool | negative
        return fg_weights.view(b, h, w), bg_pool.view(b, h, w)

    def __call__(
        self, cam: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        fg_weights, bg_pool = self.pools(cam, labels, generator)
        b, h, w = fg_weights.shape
        fg = sample_without_replacement(fg_weights.reshape(b, -1), self.n_fg, generator)
        bg = sample_without_replacement(bg_pool.reshape(b, -1).float(), self.n_bg, generator)
        seeds = torch.full((b, h * w), self.ignore_index, dtype=torch.long, device=fg.device)
        seeds.masked_fill_(fg & ~bg, 1)
        seeds.masked_fill_(bg & ~fg, 0)
        return seeds.view(b, h, w)

    def _check_cam(self, cam: torch.Tensor) -> torch.Tensor:
        if not isinstance(cam, torch.Tensor):
            raise TypeError(f"cam must be a torch.Tensor, got {type(cam).__name__}")
        if cam.ndim == 4 and cam.shape[1] == 1:
            cam = cam[:, 0]
        if cam.ndim != 3:
            raise ValueError(f"cam must be B x 1 x h x w or B x h x w, got shape {tuple(cam.shape)}")
        if not cam.is_floating_point():
            raise TypeError(f"cam must be a float tensor in [0, 1], got dtype {cam.dtype}")
        return cam.detach()

    def _negative(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """B x 1 bool mask of negative-class images, or None when the rule does not apply."""
        if labels is None or not self.negative_classes or not self.negative_background:
            return None
        labels = torch.as_tensor(labels, device=device).reshape(-1)
        if labels.numel() != batch:
            raise ValueError(f"labels must hold one label per image ({batch}), got shape {tuple(labels.shape)}")
        negative_ids = torch.tensor(self.negative_classes, device=device, dtype=labels.dtype)
        return torch.isin(labels, negative_ids).unsqueeze(1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_fg={self.n_fg}, n_bg={self.n_bg}, bg_fraction={self.bg_fraction}, "
            f"negative_classes={self.negative_classes}, negative_background={self.negative_background}, "
            f"disjoint_pools={self.disjoint_pools}, fallback_size={self.fallback_size}, "
            f"ignore_index={self.ignore_index}{self._extra_repr()})"
        )

    def _extra_repr(self) -> str:
        return ""


class ThresholdSeeder(PixelSeeder):
    """Foreground pool = CAM at or above its per-image Otsu threshold, optionally eroded; uniform draw.

    Args:
        erosion: erosion radius in pixels applied to the Otsu region (0 = none; the reference's 11 x 11 kernel
            is radius 5). Choose it for the seeding resolution: a radius that is harmless at 224 x 224 can
            erase every region at 28 x 28, in which case the top-CAM fallback of :class:`PixelSeeder` applies.
        bins: histogram bins of the Otsu threshold.
        other arguments: see :class:`PixelSeeder`.
    """

    def __init__(
        self,
        n_fg: int = 1,
        n_bg: int = 1,
        bg_fraction: float = 0.4,
        erosion: int = 0,
        bins: int = 256,
        negative_classes: Sequence[int] = (),
        negative_background: bool = True,
        disjoint_pools: bool = False,
        fallback_size: int | None = None,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(
            n_fg=n_fg,
            n_bg=n_bg,
            bg_fraction=bg_fraction,
            negative_classes=negative_classes,
            negative_background=negative_background,
            disjoint_pools=disjoint_pools,
            fallback_size=fallback_size,
            ignore_index=ignore_index,
        )
        if int(erosion) < 0:
            raise ValueError(f"erosion must be >= 0, got {erosion}")
        if int(bins) < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.erosion = int(erosion)
        self.bins = int(bins)

    def foreground_weights(self, cam: torch.Tensor) -> torch.Tensor:
        region = cam >= otsu_threshold(cam, self.bins).view(-1, 1, 1)
        return binary_erosion(region, self.erosion).float()

    def _extra_repr(self) -> str:
        return f", erosion={self.erosion}, bins={self.bins}"


class ProbabilitySeeder(PixelSeeder):
    """Foreground seeds drawn with probability proportional to the CAM value (without replacement).

    Pixels with CAM 0 are never drawn as foreground; an image whose CAM is 0 everywhere (or 0 outside the
    background pool, with ``disjoint_pools``) uses the top-CAM fallback of :class:`PixelSeeder`.
    """

    def foreground_weights(self, cam: torch.Tensor) -> torch.Tensor:
        return cam.float().clamp(min=0.0)
