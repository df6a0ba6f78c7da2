"""Stain estimation: Macenko stain vectors in torch, stain bases, and the hematoxylin-first order that
MONAI's ``ExtractHEStains`` gets wrong in MONAI 1.6 (see :func:`monai_extracts_eosin_first`)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from monai.apps.pathology.transforms import ExtractHEStains

from .colour import RGB_FROM_HED, check_rgb

__all__ = [
    "hematoxylin_first",
    "macenko_stain_matrix",
    "complete_basis",
    "ruifrok_basis",
    "monai_extracts_eosin_first",
    "OrderedExtractHEStains",
]


def hematoxylin_first(he):
    """Order two OD stain vectors (columns of a ``3 x 2`` numpy array or tensor) hematoxylin, eosin.

    In optical density hematoxylin absorbs red relatively more than eosin does (Ruifrok: H (0.65, 0.70,
    0.29), E (0.07, 0.99, 0.11); MONAI's reference: H (0.56, 0.72, 0.41), E (0.22, 0.80, 0.56)), so H
    is the column with the larger red/blue OD ratio. MONAI 1.6's ``ExtractHEStains`` puts the *smaller*
    ratio first (a colour-space intuition applied to OD), which returns eosin first on such images.
    """
    ratio = he[0] / (abs(he[2]) + 1e-6)
    return he[:, [1, 0]] if ratio[0] < ratio[1] else he


def macenko_stain_matrix(
    od: torch.Tensor,
    od_threshold: float = 0.15,
    percentile: float = 1.0,
    min_tissue_fraction: float = 0.01,
    min_stain_angle: float = 0.05,
    max_pixels: int = 1_000_000,
) -> torch.Tensor | None:
    """Macenko et al. (2009) H and E stain vectors of one image.

    Tissue pixels (every channel's OD above ``od_threshold``) are projected on the plane of their two
    main principal axes; the directions at the ``percentile`` and ``100 - percentile`` percentiles of
    the angle in that plane are the two stains; the one with the larger red/blue OD ratio is
    hematoxylin (as in Macenko's reference code; MONAI 1.6's ``ExtractHEStains`` orders them the other
    way round, see :func:`hematoxylin_first`).

    Args:
        od: natural optical density ``3 x H x W`` (:func:`optical_density`).
        od_threshold: OD above which a channel counts as stained (0.15 as in MONAI).
        percentile: robust extreme angles, in percent.
        min_tissue_fraction: fewer tissue pixels than this fraction of the image -> no estimate.
        min_stain_angle: stain vectors closer than this angle (radians) -> no estimate (one stain only,
            grey or uniform image).
        max_pixels: tissue pixels beyond this number are subsampled with a fixed stride (deterministic;
            also keeps ``torch.quantile`` under its input size limit).

    Returns:
        ``3 x 2`` float tensor, columns the unit OD vectors of H and E, or None when the image holds
        too little tissue or no two distinct stains.
    """
    check_rgb(od, "od")
    pixels = od.reshape(3, -1).T  # N x 3
    tissue = pixels[(pixels > od_threshold).all(dim=1)]
    # three points at least: a plane needs them
    if tissue.shape[0] < max(3, math.ceil(min_tissue_fraction * pixels.shape[0])):
        return None
    if tissue.shape[0] > max_pixels:
        tissue = tissue[:: math.ceil(tissue.shape[0] / max_pixels)]
    tissue = tissue.to(torch.float64)  # 3 x 3 eigen-decomposition of nearly degenerate covariances
    _, eigvecs = torch.linalg.eigh(torch.cov(tissue.T))
    plane = eigvecs[:, 1:3]
    t = tissue @ plane
    # measure angles from the mean direction so that the data never straddles the -pi/pi cut of atan2
    mean_angle = torch.atan2(t[:, 1].mean(), t[:, 0].mean())
    phi = torch.remainder(torch.atan2(t[:, 1], t[:, 0]) - mean_angle + math.pi, 2 * math.pi) - math.pi
    q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=phi.dtype)
    extremes = torch.quantile(phi, q) + mean_angle
    vectors = plane @ torch.stack((torch.cos(extremes), torch.sin(extremes)))  # 3 x 2
    vectors = vectors * torch.where(vectors.sum(dim=0) < 0, -1.0, 1.0)
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    if not torch.isfinite(vectors).all():
        return None
    if torch.linalg.cross(vectors[:, 0], vectors[:, 1]).norm() < math.sin(min_stain_angle):
        return None
    return hematoxylin_first(vectors).to(od.dtype)


def complete_basis(he: torch.Tensor) -> torch.Tensor:
    """``3 x 2`` stain vectors -> invertible ``3 x 3`` basis; the third column (their normalised cross
    product) carries whatever the two stains do not explain, so unmixing and remixing is lossless."""
    residual = torch.linalg.cross(he[:, 0], he[:, 1])
    return torch.cat((he, (residual / residual.norm())[:, None]), dim=1)


def ruifrok_basis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    m = torch.as_tensor(RGB_FROM_HED.T, dtype=dtype, device=device)  # columns H, E, DAB
    return m / m.norm(dim=0, keepdim=True)



# MONAI's reference H&E stain matrix (NormalizeHEStains' ``target_he``), columns hematoxylin, eosin
_MONAI_TARGET_HE = np.array(((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)))


@lru_cache(maxsize=1)
def monai_extracts_eosin_first() -> bool:
    """Whether the installed MONAI's ``ExtractHEStains`` returns the eosin vector first (the defect of MONAI 1.6).

    Checked on the defect itself rather than on a version number: a ``64 x 64`` image stained with MONAI's own
    reference matrix (gamma-distributed concentrations, fixed seed) goes through MONAI's extractor, and the
    first column is compared with both reference stains. MONAI 1.6 orders the two Macenko vectors by a *smaller*
    red/blue ratio first, which in optical density is eosin.
    """
    rng = np.random.default_rng(0)
    conc = rng.gamma(2.0, 0.35, size=(2, 64 * 64))
    rgb = np.clip(np.round(240 * np.exp(-(_MONAI_TARGET_HE @ conc)) - 1), 0, 255).T.reshape(64, 64, 3)
    first = ExtractHEStains()(rgb.astype(np.uint8))[:, 0]
    ref = _MONAI_TARGET_HE / np.linalg.norm(_MONAI_TARGET_HE, axis=0)
    return bool(first @ ref[:, 1] > first @ ref[:, 0])


class OrderedExtractHEStains(ExtractHEStains):
    """MONAI's Macenko stain extraction with hematoxylin reliably first (see :func:`hematoxylin_first`).

    Only its public ``__call__`` is wrapped; :class:`~monai_pixelcam.transforms.MacenkoNormalize` installs it
    only where :func:`monai_extracts_eosin_first` finds the defect, so a fixed MONAI is used as it is.
    """

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(hematoxylin_first(super().__call__(image)))
